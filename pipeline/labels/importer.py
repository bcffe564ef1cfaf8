"""Check labels against the store and publish them as a new `human_labels` version.

Rules (a label breaking one is rejected with the offending id and the reason; the rest go in):

- it has an annotator (its own, else the default given to the import);
- its sample is in the candidates dataset (`sr_candidates@latest` unless given), its instance
  (if any) in the instances dataset and of that sample (`KnownIds`);
- best and worst are both given and are candidates of that sample (`KnownIds`), and differ;
- a mask, if any, has the sample's HR size (brush regions drawn on a crop are placed first);
- one judgement per (annotator, sample, instance), the rule make_pairs applies too
  (dspo_core.label_rules), with the labels already in `human_labels@latest` counting as
  earlier than the file's: a later label with the same best, worst, hallucination,
  description and mask is a duplicate — accepted once, so it adds no row, and reported in
  `ImportReport.duplicates`, not as a rejection (importing a file twice changes nothing); a
  later label saying anything else conflicts and is rejected, its reason naming the standing
  label and what differs.

A hallucination flag without a description is allowed and counted. Every import that accepts
at least one label publishes a version holding the previous version's rows plus the new ones.
If another import published meanwhile, the versions are merged (first published wins on
each (annotator, sample, instance), by the same rule) and published again, so the latest
version holds all.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from dspo_core.label_rules import Judgement, Repeat, StandingJudgements, choice_problem
from dspo_core.segment import rle
from pipeline.labels.readers import read_labels
from pipeline.labels.records import DrawnMask, Problem, RawLabel, from_mapping
from pipeline.schemas import HUMAN_LABELS
from storage import DatasetNotFoundError, DatasetStore

DATASET = "human_labels"
# The columns a duplicate must repeat, with the key (annotator, sample_id, instance_id).
JUDGED = ["annotator", "sample_id", "instance_id", "best", "worst", "hallucination", "description", "mask"]
# Rejections (and, separately, duplicates) listed in the manifest; the rest are counted.
MANIFEST_LISTED = 1000
# Longest id a note shows whole: an offending "id" may be any text of the file.
SHOWN_ID = 80


@dataclass(frozen=True)
class LabelNote:
    """A label of the file that did not become a new row, and why."""

    where: str    # "line 7", "row 3", "task 2 (id 14)", "(merge)"
    id: str       # the offending id (cut to SHOWN_ID characters, with its length)
    reason: str

    def __post_init__(self):
        if len(self.id) > SHOWN_ID:
            object.__setattr__(self, "id", f"{self.id[:SHOWN_ID - 20]}... ({len(self.id)} characters)")

    def __str__(self) -> str:
        return f"{self.where}: {self.id}: {self.reason}"

    def as_dict(self) -> dict:
        return {"where": self.where, "id": self.id, "reason": self.reason}


class Rejection(LabelNote):
    """The label broke a rule (module doc): not imported."""


class Duplicate(LabelNote):
    """The label repeats a standing one exactly: accepted once, so it adds nothing; not an error."""


class Revision(LabelNote):
    """The label edits a standing one (another judgement, a later stated time): it replaces it;
    the earlier one stays in the version it was published in, and `reason` says what changed."""


@dataclass
class ImportReport:
    """What an import read, kept, rejected, found already there (duplicates) and published."""

    source_file: str
    format: str
    ref: str | None = None                  # the new human_labels version; None if nothing was accepted
    previous: str | None = None             # the human_labels version it was checked against
    inputs: list[str] = field(default_factory=list)
    read: int = 0
    accepted: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)
    revisions: list[Revision] = field(default_factory=list)
    skipped: int = 0                        # Label Studio: cancelled annotations, tasks without any
    hallucination_without_description: int = 0
    total: int = 0                          # rows of the new version
    merged: list[str] = field(default_factory=list)  # versions published concurrently and merged in
    labels: pa.Table | None = None          # the accepted rows

    def counts(self) -> dict:
        return {"read": self.read, "accepted": self.accepted, "rejected": len(self.rejected),
                "duplicates": len(self.duplicates), "revisions": len(self.revisions), "skipped": self.skipped,
                "hallucination_without_description": self.hallucination_without_description, "total": self.total}


@dataclass
class KnownIds:
    """The candidate and instance ids labels may name (and each sample's frame size), from one
    candidates and one instances version."""

    candidates_ref: str
    instances_ref: str
    candidate_sample: dict[str, str]
    instance_sample: dict[str, str]
    frames: dict[str, tuple[int, int]]      # sample_id -> (height, width), from its instance masks
    samples: set[str] = field(init=False)

    def __post_init__(self):
        self.samples = set(self.candidate_sample.values())

    @classmethod
    def load(cls, store: DatasetStore, candidates: str = "sr_candidates@latest",
             instances: str = "instances@latest") -> KnownIds:
        candidates_ref, instances_ref = store.resolve(candidates), store.resolve(instances)
        table = store.read_arrow(candidates_ref, columns=["candidate_id", "sample_id"])
        candidate_sample = dict(zip(*(table.column(name).to_pylist() for name in ("candidate_id", "sample_id"))))
        table = store.read_arrow(instances_ref, columns=["instance_id", "sample_id", "mask"])
        samples = table.column("sample_id").to_pylist()
        instance_sample = dict(zip(table.column("instance_id").to_pylist(), samples))
        sizes = pc.struct_field(table.column("mask"), "size").to_pylist()
        frames = {sample: tuple(size) for sample, size in zip(samples, sizes) if size}
        return cls(candidates_ref, instances_ref, candidate_sample, instance_sample, frames)

    def problem(self, label: RawLabel) -> tuple[str, str] | None:
        """(offending id, reason) if the ids of `label` do not fit the store, else None."""
        sample = label.sample_id
        if not sample:
            return "-", "sample_id is empty"
        if sample not in self.samples:
            return sample, f"unknown sample: not in {self.candidates_ref}"
        if label.instance_id:
            owner = self.instance_sample.get(label.instance_id)
            if owner is None:
                return label.instance_id, f"unknown instance: not in {self.instances_ref}"
            if owner != sample:
                return label.instance_id, f"instance of sample {owner}, not of {sample}"
        for role in ("best", "worst"):
            candidate = getattr(label, role)
            if not candidate:
                return label.item, f"{role} is empty"
            owner = self.candidate_sample.get(candidate)
            if owner is None:
                return candidate, f"unknown {role} candidate: not in {self.candidates_ref}"
            if owner != sample:
                return candidate, f"{role} candidate belongs to sample {owner}, not {sample}"
        return None

    def place(self, label: RawLabel) -> None:
        """Turn a drawn region into a COCO RLE in the sample's frame and check a mask's size."""
        frame = self.frames.get(label.sample_id)
        if label.drawn is not None:
            label.mask = _placed(label.drawn, frame)
        if label.mask is not None and frame is not None and tuple(label.mask["size"]) != frame:
            raise Problem(f"mask is {label.mask['size'][0]}x{label.mask['size'][1]}, the sample is "
                          f"{frame[0]}x{frame[1]}")


def _placed(drawn: DrawnMask, frame: tuple[int, int] | None) -> dict:
    mask = drawn.mask
    if drawn.crop_box is None:
        return rle.encode(mask)
    if frame is None:
        raise Problem("the sample has no instances, so where its crop_box lies is unknown")
    x, y, w, h = drawn.crop_box
    if x + w > frame[1] or y + h > frame[0]:
        raise Problem(f"crop_box {drawn.crop_box} lies outside the {frame[0]}x{frame[1]} sample")
    if mask.shape != (h, w):
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 127
    full = np.zeros(frame, dtype=bool)
    full[y:y + h, x:x + w] = mask
    return rle.encode(full)


def label_id(annotator: str, sample_id: str, instance_id: str | None) -> str:
    """Hash of (annotator, sample_id, instance_id): the key of one judgement."""
    return hashlib.sha256(f"{annotator}:{sample_id}:{instance_id or ''}".encode()).hexdigest()[:20]


def _judgement(row: dict) -> Judgement:
    return Judgement.of(row["best"], row["worst"], row["hallucination"], row["description"], row["mask"])


def _key(row: dict) -> tuple:
    return row["annotator"], row["sample_id"], row["instance_id"] or None


def validate(labels: list[RawLabel], known: KnownIds, existing: pa.Table | None, existing_ref: str | None,
             source: str, now: datetime) -> tuple[list[dict], list[Duplicate], list[Rejection], list[Revision]]:
    """(accepted rows in the HUMAN_LABELS layout, duplicates, rejections, revisions), each in file
    order. A revision's row is among the accepted ones and replaces the row it revises (an earlier
    accepted one, or one of `existing` with the same label_id)."""
    standing = StandingJudgements()
    if existing is not None:
        for row in existing.select(["label_id", "labelled_at", *JUDGED]).to_pylist():
            standing.add(_key(row), _judgement(row), f"{existing_ref} (label {row['label_id']})", row["labelled_at"])
    accepted: dict[str, dict] = {}
    duplicates, rejected, revisions = [], [], []
    for label in labels:
        try:
            if label.problem is not None:
                raise label.problem
            if not label.annotator:
                raise Problem("no annotator: add an annotator column (or completed_by) or pass --annotator")
            found = known.problem(label)
            if found is not None:
                raise Problem(found[1], found[0])
            same = choice_problem(label.best, label.worst)
            if same is not None:
                raise Problem(same, label.best)
            known.place(label)
        except Problem as problem:
            rejected.append(Rejection(label.where, problem.item or label.item, problem.reason))
            continue
        row = {"label_id": label_id(label.annotator, label.sample_id, label.instance_id),
               "sample_id": label.sample_id, "instance_id": label.instance_id, "best": label.best,
               "worst": label.worst, "hallucination": label.hallucination, "description": label.description,
               "mask": label.mask, "annotator": label.annotator, "source": source,
               "labelled_at": label.labelled_at or now}
        # Only a time the label states can make it a revision: the import time says nothing of when it was made.
        repeat = standing.add(_key(row), _judgement(row), label.where, label.labelled_at)
        if repeat is None:
            accepted[row["label_id"]] = row
        elif repeat.duplicate:
            duplicates.append(Duplicate(label.where, label.item, repeat.reason))
        elif repeat.revision:
            revisions.append(Revision(label.where, label.item, repeat.reason))
            accepted.pop(row["label_id"], None)
            accepted[row["label_id"]] = row
        else:
            rejected.append(Rejection(label.where, label.item, repeat.reason))
    return list(accepted.values()), duplicates, rejected, revisions


def _version(ref: str) -> int:
    return int(ref.rsplit("@v", 1)[1])


def _latest(store: DatasetStore) -> tuple[str | None, pa.Table | None]:
    try:
        ref = store.resolve(f"{DATASET}@latest")
    except DatasetNotFoundError:
        return None, None
    return ref, _read(store, ref)


def _read(store: DatasetStore, ref: str) -> pa.Table:
    return store.read_arrow(ref).select(HUMAN_LABELS.names).cast(HUMAN_LABELS)


def import_labels_checked(store: DatasetStore, labels: list[RawLabel], report: ImportReport, *,
                          source: str, candidates: str, instances: str, dry_run: bool = False) -> ImportReport:
    """Check `labels`, fill `report`, and publish unless nothing was accepted or `dry_run`."""
    known = KnownIds.load(store, candidates, instances)
    previous, existing = _latest(store)
    report.previous = previous
    report.read = len(labels)
    accepted, duplicates, rejected, revisions = validate(labels, known, existing, previous, source,
                                                         datetime.now(timezone.utc))
    report.rejected.extend(rejected)
    report.duplicates.extend(duplicates)
    report.revisions.extend(revisions)
    new = pa.Table.from_pylist(accepted, schema=HUMAN_LABELS)
    base = existing if existing is not None else HUMAN_LABELS.empty_table()
    # A revised label leaves the new version; the earlier version keeps it.
    base = base.filter(pc.invert(pc.is_in(base.column("label_id"), new.column("label_id").combine_chunks())))
    report.inputs = [known.candidates_ref, known.instances_ref, *([previous] if previous else [])]

    def finish(table: pa.Table) -> None:
        report.labels = new
        report.accepted = new.num_rows
        report.hallucination_without_description = sum(
            1 for row in new.select(["hallucination", "description"]).to_pylist()
            if row["hallucination"] and not (row["description"] or "").strip())
        report.total = table.num_rows

    if not accepted or dry_run:
        finish(pa.concat_tables([base, new]))
        return report

    def publish(table: pa.Table, inputs: list[str]) -> str:
        finish(table)
        metadata = {"source_file": report.source_file, "format": report.format, "counts": report.counts(),
                    "rejected": [item.as_dict() for item in report.rejected[:MANIFEST_LISTED]],
                    "duplicates": [item.as_dict() for item in report.duplicates[:MANIFEST_LISTED]],
                    "revisions": [item.as_dict() for item in report.revisions[:MANIFEST_LISTED]],
                    "merged": report.merged}
        return store.publish(DATASET, table, inputs=inputs, metadata=metadata, schema=HUMAN_LABELS)

    table = pa.concat_tables([base, new])
    ref = publish(table, report.inputs)
    included, first = (_version(previous) if previous else 0), True
    while _version(ref) != included + 1:
        # Others published between what we read and our version: merge theirs in, first published wins.
        others = [f"{DATASET}@v{version}" for version in range(included + 1, _version(ref))]
        report.merged.extend(others)
        seen: set[str] = set()
        kept = []
        for part in [base if first else table, *(_read(store, other) for other in others)]:
            part = part.filter(pc.invert(pc.is_in(part.column("label_id"), pa.array(sorted(seen), pa.string()))))
            seen.update(part.column("label_id").to_pylist())
            kept.append(part)
        if first:
            new = _drop_lost(new, pa.concat_tables(kept), seen, report)
            kept.append(new)
        table = pa.concat_tables(kept)
        included, first = _version(ref), False
        ref = publish(table, [known.candidates_ref, known.instances_ref, ref, *others])
    report.ref = ref
    return report


def _drop_lost(new: pa.Table, earlier: pa.Table, seen: set[str], report: ImportReport) -> pa.Table:
    """`new` without the labels a concurrent import published first; by the module's rule those
    become duplicates (the same judgement) or rejections (another one)."""
    lost = [row for row in new.to_pylist() if row["label_id"] in seen]
    if not lost:
        return new
    winners = {row["label_id"]: row for row in earlier.to_pylist() if row["label_id"] in {r["label_id"] for r in lost}}
    for row in lost:
        repeat = Repeat(row["annotator"], f"a concurrently published version (label {row['label_id']})",
                        _judgement(winners[row["label_id"]]), _judgement(row))
        item = row["instance_id"] or row["sample_id"]
        if repeat.duplicate:
            report.duplicates.append(Duplicate("(merge)", item, repeat.reason))
        else:
            report.rejected.append(Rejection("(merge)", item, repeat.reason))
    return new.filter(pc.invert(pc.is_in(new.column("label_id"), pa.array(sorted(seen), pa.string()))))


def import_labels(store: DatasetStore, path, format: str = "auto", annotator: str | None = None, *,
                  candidates: str = "sr_candidates@latest", instances: str = "instances@latest",
                  dry_run: bool = False) -> ImportReport:
    """Import a CSV, Parquet or Label Studio JSON label file (see pipeline.labels.readers and
    pipeline.labels.label_studio); `annotator` names the labeller of rows that do not.

    Raises LabelFileError for a file that cannot be read as a whole, store errors for a
    missing candidates / instances dataset. Rows that break a rule are in `report.rejected`.
    """
    used, labels, skipped = read_labels(path, format, annotator)
    report = ImportReport(source_file=Path(path).name, format=used, skipped=skipped)
    return import_labels_checked(store, labels, report, source=used, candidates=candidates,
                                 instances=instances, dry_run=dry_run)


def import_rows(store: DatasetStore, rows, *, source: str = "app", source_file: str = "-",
                annotator: str | None = None, candidates: str = "sr_candidates@latest",
                instances: str = "instances@latest", dry_run: bool = False) -> ImportReport:
    """Import label dicts with the CSV columns (the labelling app's path): same rules."""
    labels = [from_mapping(f"row {index}", dict(row), annotator) for index, row in enumerate(rows, start=1)]
    report = ImportReport(source_file=source_file, format=source)
    return import_labels_checked(store, labels, report, source=source, candidates=candidates,
                                 instances=instances, dry_run=dry_run)
