"""The labelling tasks (one per instance) and the order they are served in.

Order: IQA uncertainty first. An instance's uncertainty is its reward gap, the best minus the
worst `reward` of its candidates in `instance_scores` — the margin of the Best/Worst pair the
rank stage would make from IQA alone; where it is small, a human label is most likely to
change the pair. Ties (and instances without rewards, which come last) go by larger instance
weight first, then sample and instance index, so every annotator sees the same order and their
labels overlap, which is what inter-annotator agreement needs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import pyarrow.compute as pc

from pipeline.labels.app.config import LabelAppConfig
from pipeline.labels.app.pinning import pin_inputs
from storage import DatasetStore

log = logging.getLogger("pipeline.labels.app")


@dataclass(frozen=True)
class Task:
    """One instance to label."""

    instance_id: str
    sample_id: str
    index: int                      # the instance's index within its sample
    candidates: tuple[str, ...]     # candidate ids, by candidate_index: shown as A, B, C, ...
    bbox: tuple[int, int, int, int]  # [x, y, w, h] in HR pixels
    mask: dict                      # COCO RLE at HR resolution
    weight: float                   # w_m
    gap: float | None               # IQA reward gap (best - worst); None: unscored


class TaskList:
    """Every task of one pinned (candidates, instances) pair, in serving order.

    Args:
        store: the dataset store.
        config: the app config; its candidates / instances / lq_pairs / scores refs are resolved
            once here, consistently through the candidates' lineage (pipeline.labels.app.pinning),
            so the whole session labels one fixed, matching set of images; StoreError naming a
            mismatch. Instances whose box is thinner than `config.min_instance_pixels` are left
            out (counted in `left_out`).
    """

    def __init__(self, store: DatasetStore, config: LabelAppConfig):
        pinned = pin_inputs(store, config.candidates, config.instances, config.lq_pairs, config.scores)
        self.candidates_ref, self.instances_ref, self.lq_ref = pinned.candidates, pinned.instances, pinned.lq_pairs
        table = store.read_arrow(self.candidates_ref, columns=["candidate_id", "sample_id", "candidate_index"])
        by_sample: dict[str, list[tuple[int, str]]] = {}
        for row in table.to_pylist():
            by_sample.setdefault(row["sample_id"], []).append((row["candidate_index"], row["candidate_id"]))
        self.sample_candidates = {sample: tuple(cid for _, cid in sorted(items)) for sample, items in by_sample.items()}
        self.candidate_position = {cid: position for ids in self.sample_candidates.values()
                                   for position, cid in enumerate(ids)}
        self.scores_ref, gaps = self._gaps(store, pinned.scores)
        table = store.read_arrow(self.instances_ref,
                                 columns=["instance_id", "sample_id", "index", "bbox", "mask", "weight"])
        tasks = []
        self.left_out = 0
        for row in table.to_pylist():
            candidates = self.sample_candidates.get(row["sample_id"], ())
            bbox = row["bbox"] or [0, 0, 0, 0]
            # Nothing to compare with fewer than two candidates, nothing to see without pixels.
            if len(candidates) < 2 or min(bbox[2:]) <= 0:
                continue
            if min(bbox[2:]) < config.min_instance_pixels:
                self.left_out += 1
                continue
            tasks.append(Task(row["instance_id"], row["sample_id"], row["index"], candidates, tuple(bbox),
                              row["mask"], row["weight"] or 0.0, gaps.get(row["instance_id"])))
        tasks.sort(key=lambda task: (task.gap is None, task.gap if task.gap is not None else 0.0, -task.weight,
                                     task.sample_id, task.index))
        if self.left_out:
            log.info("%d instance(s) thinner than %d px left out of the queue (min_instance_pixels)",
                     self.left_out, config.min_instance_pixels)
        self.tasks = tasks
        self.by_id = {task.instance_id: task for task in tasks}

    def _gaps(self, store: DatasetStore, ref: str | None) -> tuple[str | None, dict[str, float]]:
        """(scores ref used, {instance_id: reward gap}) over this list's candidates."""
        if not ref:
            return None, {}
        table = store.read_arrow(ref, columns=["instance_id", "candidate_id", "value"],
                                 filter=pc.field("metric") == "reward")
        rewards: dict[str, list[float]] = {}
        for row in table.to_pylist():
            if row["candidate_id"] in self.candidate_position and row["value"] is not None:
                rewards.setdefault(row["instance_id"], []).append(row["value"])
        return ref, {instance: max(values) - min(values) for instance, values in rewards.items() if len(values) >= 2}

    @property
    def inputs(self) -> list[str]:
        """The pinned refs the app reads."""
        return [ref for ref in (self.candidates_ref, self.instances_ref, self.lq_ref, self.scores_ref) if ref]

    def next_for(self, done: set[str], skipped: dict[str, None] | None = None) -> Task | None:
        """The first task neither in `done` (labelled) nor in `skipped`; once only skipped ones
        are left, the one skipped longest ago (`skipped` keeps skip order)."""
        skipped = skipped or {}
        for task in self.tasks:
            if task.instance_id not in done and task.instance_id not in skipped:
                return task
        for instance_id in skipped:
            if instance_id not in done and instance_id in self.by_id:
                return self.by_id[instance_id]
        return None

    def remaining(self, done: set[str]) -> int:
        """Tasks not yet labelled by the annotator whose labelled instances are `done`."""
        return sum(1 for task in self.tasks if task.instance_id not in done)
