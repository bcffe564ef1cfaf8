"""Stage `rank`: (`instance_scores`, `instances`, `human_labels` when present) -> `pairs`
(schema: pipeline.schemas.PAIRS). Separate from `score` so new human labels re-rank without
re-scoring: the labels' version is part of this stage's fingerprint, not of score's."""
from __future__ import annotations

from collections import defaultdict

import pyarrow as pa

from dspo_core.pairs import HumanLabel, InstanceRewards, make_pairs
from pipeline.config import PipelineConfig, RankConfig
from pipeline.datasets import rows_by_sample
from pipeline.schemas import PAIRS
from pipeline.stage import Shard, ShardOutput, Stage, make_shards
from storage import DatasetStore

COUNT_KEYS = ("instances", "labelled_instances", "pairs", "dropped_small_gap", "dropped_contested", "human_pairs",
              "human_overrides", "human_agreed", "contested")


class RankStage(Stage):
    def section(self, config: PipelineConfig) -> RankConfig:
        return config.rank

    def schemas(self, section: RankConfig) -> dict[str, pa.Schema]:
        return {"pairs": PAIRS}

    def plan(self, store: DatasetStore, inputs: dict[str, str], section: RankConfig) -> list[Shard]:
        ids = store.read_arrow(inputs["instances"], columns=["sample_id"]).column(0).unique().to_pylist()
        return make_shards(ids, 64)

    def run_shard(self, store: DatasetStore, inputs: dict[str, str], section: RankConfig,
                  shard: Shard) -> ShardOutput:
        weights = {row["instance_id"]: row["weight"] for rows in rows_by_sample(
            store, inputs["instances"], ["sample_id", "instance_id", "weight"], shard.items).values() for row in rows}
        scores: dict[tuple, dict] = defaultdict(lambda: defaultdict(dict))
        for rows in rows_by_sample(store, inputs["instance_scores"],
                                   ["sample_id", "instance_id", "candidate_id", "metric", "kind", "normalised"],
                                   shard.items).values():
            for row in rows:
                scores[(row["sample_id"], row["instance_id"])][row["metric"]][row["candidate_id"]] = row["normalised"]
        instances = [
            InstanceRewards(sample_id=sample_id, instance_id=instance_id, weight=weights[instance_id],
                            rewards=by_metric["reward"], fr_scores=by_metric.get("fr_mean"),
                            nr_scores=by_metric.get("nr_mean"),
                            metric_scores={metric: values for metric, values in by_metric.items()
                                           if metric not in ("reward", "fr_mean", "nr_mean")})
            for (sample_id, instance_id), by_metric in scores.items()
        ]
        labels = []
        if "human_labels" in inputs:
            for rows in rows_by_sample(store, inputs["human_labels"],
                                       ["sample_id", "instance_id", "best", "worst", "hallucination", "description",
                                        "annotator", "source"], shard.items).values():
                labels += [HumanLabel(**row) for row in rows if row["instance_id"] is not None]
        pairs, report = make_pairs(instances, labels, section.preferences)
        normalisation = store.manifest(inputs["instance_scores"])["metadata"].get("normalisation")
        quarantine = [{"item": f"label by {error.annotator} on {error.sample_id}/{error.instance_id}",
                       "reason": f"{error.code}: {error.reason} ({error.offending_id})"}
                      for error in report.label_errors]
        stats = {"normalisation": normalisation, "counts": {key: getattr(report, key) for key in COUNT_KEYS},
                 "agreement": report.agreement_table(),
                 "dropped": [dropped.model_dump() for dropped in report.dropped],
                 "contested": [item.model_dump() for item in report.contested_instances]}
        rows = [pair.model_dump() for pair in pairs]
        return ShardOutput(pa.Table.from_pylist(rows, schema=PAIRS), quarantine, stats=stats)

    def summarize(self, stats: list[dict]) -> dict:
        """Counts summed; agreement accuracy re-weighted by each shard's n (it is a mean over instances);
        `normalisation`: the reward scale of instance_scores (margins and min_reward_gap are in its units)."""
        counts = {key: sum(item["counts"][key] for item in stats) for key in COUNT_KEYS}
        totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
        for item in stats:
            for row in item["agreement"]:
                totals[row["score"]][0] += row["accuracy"] * row["n"]
                totals[row["score"]][1] += row["n"]
        agreement = [{"score": score, "accuracy": total / n if n else None, "n": n}
                     for score, (total, n) in sorted(totals.items())]
        return {"normalisation": stats[0]["normalisation"] if stats else None, "counts": counts,
                "agreement": agreement,
                "dropped": [row for item in stats for row in item["dropped"]],
                "contested": [row for item in stats for row in item["contested"]]}
