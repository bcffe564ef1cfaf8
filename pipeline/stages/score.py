"""Stage `score`: (`lq_pairs`, `sr_candidates`, `instances`) -> `instance_scores`
(schema: pipeline.schemas.INSTANCE_SCORES). Every instance of a sample is scored on all
N candidates against the HR crop; the raw values are kept.

Normalisation (dspo_core.iqa.rewards, "zscore-logistic"): each metric's z-score over the whole
dataset, so a shard cannot do it alone. A shard writes the raw rows and its per-metric moments
(stats); `finalize`, which sees every shard in order, merges the moments into the dataset-wide
scales, fills `normalised` and appends the `reward`, `fr_mean` and `nr_mean` rows. `summarize`
merges the same moments in the same order, so the manifest's `normalisation.scales` are exactly
the scales used. finalize holds the raw rows of the whole dataset (numbers and ids, ~0.13 kB a row)
until the scales are known."""
from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from contextlib import AbstractContextManager

import numpy as np
import pyarrow as pa

from dspo_core.iqa import (
    NORMALISATION,
    NORMALISATION_RULE,
    WEIGHT_FREE_METRICS,
    IQAScorer,
    MetricScale,
    Moments,
    ScoreRecord,
    merge_moments,
    metric_moments,
    normalise,
    reward,
)
from dspo_core.segment import rle
from pipeline.config import PipelineConfig, ScoreConfig
from pipeline.datasets import rgb_array, rows_by_sample
from pipeline.schemas import INSTANCE_SCORES
from pipeline.stage import STATS_KEY, Shard, ShardOutput, Stage, make_shards
from storage import DatasetStore

log = logging.getLogger("dspo.score")

#: How the aggregate rows' `normalised` (= their value) comes about.
AGGREGATE_NORMALISATION = f"mean of {NORMALISATION} scores (reward = fr_weight * fr_mean + nr_weight * nr_mean)"


def _moments_of(stats: dict) -> dict[str, Moments]:
    return {metric: Moments(**moments) for metric, moments in stats.get("moments", {}).items()}


def _scales(stats: list[dict]) -> dict[str, MetricScale]:
    """The dataset-wide scale of every metric, from the shards' stats in shard order."""
    lower_better = {metric: flag for item in stats for metric, flag in item.get("lower_better", {}).items()}
    return merge_moments([_moments_of(item) for item in stats], lower_better)


class ScoreStage(Stage):
    version = 2  # 2: dataset-wide z-score normalisation (was min-max per instance)

    def section(self, config: PipelineConfig) -> ScoreConfig:
        return config.score

    def schemas(self, section: ScoreConfig) -> dict[str, pa.Schema]:
        return {"instance_scores": INSTANCE_SCORES}

    def _scorer(self, section: ScoreConfig) -> AbstractContextManager[IQAScorer]:
        return self.model("scorer", section.iqa, lambda: IQAScorer(section.iqa))

    def metadata(self, section: ScoreConfig) -> dict:
        """The metrics (pyiqa's description), which of them need learned weights, the reward weights."""
        with self._scorer(section) as scorer:
            iqa = scorer.describe()
        learned = [name for name in section.iqa.metrics if name not in WEIGHT_FREE_METRICS]
        weights = {"weight_free": [name for name in section.iqa.metrics if name in WEIGHT_FREE_METRICS],
                   "learned": learned,
                   "note": "learned metrics ran from locally cached weights" if learned else
                   "weight-free metrics only (no learned weights): not DP2O-SR's learned lpips/dists/musiq/"
                   "maniqa/clipiqa, which the full profile uses"}
        if "entropy" in section.iqa.metrics:
            weights["entropy"] = "entropy is higher-better and rises with noise: as realism it rewards noise"
        return {"iqa": iqa, "metric_weights": weights,
                "reward": {"fr_weight": section.fr_weight, "nr_weight": section.nr_weight}}

    def plan(self, store: DatasetStore, inputs: dict[str, str], section: ScoreConfig) -> list[Shard]:
        scored = set(store.read_arrow(inputs["instances"], columns=["sample_id"]).column(0).to_pylist())
        ids = [sample_id for sample_id in store.read_arrow(inputs["lq_pairs"], columns=["sample_id"]).column(0)
               .to_pylist() if sample_id in scored]
        return make_shards(ids, section.shard_size)

    def run_shard(self, store: DatasetStore, inputs: dict[str, str], section: ScoreConfig,
                  shard: Shard) -> ShardOutput:
        with self._scorer(section) as scorer:
            return self._score(scorer, store, inputs, section, shard)

    @staticmethod
    def _score(scorer: IQAScorer, store: DatasetStore, inputs: dict[str, str], section: ScoreConfig,
               shard: Shard) -> ShardOutput:
        """Raw rows (`normalised` null until finalize) and stats: per-metric moments and directions."""
        pyiqa_version = scorer.describe()["pyiqa_version"]
        hr_rows = rows_by_sample(store, inputs["lq_pairs"], ["sample_id", "hr"], shard.items)
        candidate_rows = rows_by_sample(store, inputs["sr_candidates"],
                                        ["sample_id", "candidate_id", "candidate_index", "image"], shard.items)
        instance_rows = rows_by_sample(store, inputs["instances"], ["sample_id", "instance_id", "index", "mask"],
                                       shard.items)
        rows, kept, quarantine, skipped = [], [], [], {}
        for sample_id in shard.items:
            candidates = sorted(candidate_rows.get(sample_id, []), key=lambda row: row["candidate_index"])
            instances = sorted(instance_rows.get(sample_id, []), key=lambda row: row["index"])
            if len(candidates) < 2:
                quarantine.append({"item": sample_id, "reason": f"{len(candidates)} candidates; ranking needs >= 2"})
                continue
            hr = rgb_array(hr_rows[sample_id][0]["hr"])
            images = np.stack([rgb_array(row["image"]) for row in candidates])
            if images.shape[1:] != hr.shape:
                quarantine.append({"item": sample_id,
                                   "reason": f"candidates are {images.shape[1:3]}, HR {hr.shape[:2]}"})
                continue
            raw = scorer.score_instances(images, hr, [rle.decode(row["mask"]) for row in instances])
            # The reward compares an instance's candidates: a metric undefined on one of them (e.g.
            # VIF on a flat region) is left out for that instance, and counted.
            undefined = {(r.instance, r.metric) for r in raw if not math.isfinite(r.value)}
            for instance, metric in sorted(undefined):
                skipped[metric] = skipped.get(metric, 0) + 1
            for record in raw:
                if (record.instance, record.metric) in undefined:
                    continue
                kept.append(record)
                rows.append({
                    "instance_id": instances[record.instance]["instance_id"], "sample_id": sample_id,
                    "candidate_id": candidates[record.candidate]["candidate_id"], "metric": record.metric,
                    "kind": record.kind, "value": record.value, "lower_better": record.lower_better,
                    "normalised": None, "method": record.method, "normalisation": None,
                    "pyiqa_version": pyiqa_version,
                })
        stats = {"undefined_metric_instances": skipped, "reward_weights": [section.fr_weight, section.nr_weight],
                 "moments": {metric: vars(m) for metric, m in metric_moments(kept).items()},
                 "lower_better": {record.metric: record.lower_better for record in kept}}
        return ShardOutput(pa.Table.from_pylist(rows, schema=INSTANCE_SCORES), quarantine, stats=stats)

    def finalize(self, tables: Iterator[pa.Table], side_outputs: dict[str, str]) -> Iterator[pa.Table]:
        """Every shard's rows normalised on the dataset-wide scales, plus the reward rows."""
        tables = list(tables)  # the scales need every shard's moments before the first row is normalised
        stats = [json.loads((table.schema.metadata or {}).get(STATS_KEY, b"{}")) for table in tables]
        scales = _scales(stats)
        for metric, scale in scales.items():
            if scale.std == 0:
                log.warning("score: %s has the same value (%g) on all %d scored candidates: it prefers none "
                            "(normalised 0.5)", metric, scale.mean, scale.n)
        fr_weight, nr_weight = stats[0]["reward_weights"] if stats else (0.5, 0.5)  # finalize gets no section
        for table in tables:
            yield _normalised_table(table, scales, fr_weight, nr_weight)

    def summarize(self, stats: list[dict]) -> dict:
        """`normalisation`: the rule and each metric's dataset-wide scale (n, mean, std, direction);
        `undefined_metric_instances`: how many instances each metric was undefined on (left out)."""
        totals: dict[str, int] = {}
        for item in stats:
            for metric, count in item["undefined_metric_instances"].items():
                totals[metric] = totals.get(metric, 0) + count
        return {"normalisation": {"name": NORMALISATION, "rule": NORMALISATION_RULE,
                                  "scales": {metric: scale.to_dict() for metric, scale in _scales(stats).items()}},
                "undefined_metric_instances": totals}


def _normalised_table(table: pa.Table, scales: dict[str, MetricScale], fr_weight: float,
                      nr_weight: float) -> pa.Table:
    """`table`'s raw rows with `normalised` and `normalisation` set, then one reward, fr_mean and
    nr_mean row per (instance, candidate)."""
    rows = table.to_pylist()
    # ScoreRecord indices: an instance number, and a number per (instance, candidate) unique in the table.
    keys: dict[tuple[str, str, str], tuple[int, int]] = {}
    instance_index: dict[tuple[str, str], int] = {}
    records = []
    for row in rows:
        instance = instance_index.setdefault((row["sample_id"], row["instance_id"]), len(instance_index))
        key = keys.setdefault((row["sample_id"], row["instance_id"], row["candidate_id"]), (instance, len(keys)))
        records.append(ScoreRecord(key[0], key[1], row["metric"], row["kind"], row["value"], row["lower_better"],
                                   row["method"]))
    by_index = {indices: key for key, indices in keys.items()}
    normalised = normalise(records, scales)
    out = []
    for row, record in zip(rows, normalised):
        scale = scales[record.metric]
        out.append({**row, "normalised": record.normalised,
                    "normalisation": f"{NORMALISATION}: mean {scale.mean:.6g}, std {scale.std:.6g} over {scale.n}"})
    pyiqa_version = rows[0]["pyiqa_version"] if rows else None
    for combined in reward(normalised, fr_weight=fr_weight, nr_weight=nr_weight):
        sample_id, instance_id, candidate_id = by_index[(combined.instance, combined.candidate)]
        for metric, value in (("reward", combined.reward), ("fr_mean", combined.fr), ("nr_mean", combined.nr)):
            if value is not None:
                out.append({"instance_id": instance_id, "sample_id": sample_id, "candidate_id": candidate_id,
                            "metric": metric, "kind": metric, "value": value, "lower_better": False,
                            "normalised": value, "method": "aggregate", "normalisation": AGGREGATE_NORMALISATION,
                            "pyiqa_version": pyiqa_version})
    return pa.Table.from_pylist(out, schema=INSTANCE_SCORES)
