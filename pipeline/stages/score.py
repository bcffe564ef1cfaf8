"""Stage `score`: (`lq_pairs`, `sr_candidates`, `instances`) -> `instance_scores`
(schema: pipeline.schemas.INSTANCE_SCORES). Every instance of a sample is scored on all
N candidates against the HR crop, normalised within the instance, and combined into the reward."""
from __future__ import annotations

import math
from contextlib import AbstractContextManager

import numpy as np
import pyarrow as pa

from dspo_core.iqa import IQAScorer, normalise, reward
from dspo_core.segment import rle
from pipeline.config import PipelineConfig, ScoreConfig
from pipeline.datasets import rgb_array, rows_by_sample
from pipeline.schemas import INSTANCE_SCORES
from pipeline.stage import Shard, ShardOutput, Stage, make_shards
from storage import DatasetStore

NORMALISATION = "min-max over the instance's candidates, flipped for lower_better (1 = best; all equal -> 0.5)"


class ScoreStage(Stage):
    def section(self, config: PipelineConfig) -> ScoreConfig:
        return config.score

    def schemas(self, section: ScoreConfig) -> dict[str, pa.Schema]:
        return {"instance_scores": INSTANCE_SCORES}

    def _scorer(self, section: ScoreConfig) -> AbstractContextManager[IQAScorer]:
        return self.model("scorer", section.iqa, lambda: IQAScorer(section.iqa))

    def metadata(self, section: ScoreConfig) -> dict:
        with self._scorer(section) as scorer:
            iqa = scorer.describe()
        return {"iqa": iqa, "normalisation": NORMALISATION,
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
        pyiqa_version = scorer.describe()["pyiqa_version"]
        hr_rows = rows_by_sample(store, inputs["lq_pairs"], ["sample_id", "hr"], shard.items)
        candidate_rows = rows_by_sample(store, inputs["sr_candidates"],
                                        ["sample_id", "candidate_id", "candidate_index", "image"], shard.items)
        instance_rows = rows_by_sample(store, inputs["instances"], ["sample_id", "instance_id", "index", "mask"],
                                       shard.items)
        rows, quarantine, skipped = [], [], {}
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
            # Min-max needs every candidate's value: a metric undefined on one candidate of an
            # instance (e.g. VIF on a flat region) is left out for that instance, and counted.
            undefined = {(r.instance, r.metric) for r in raw if not math.isfinite(r.value)}
            for instance, metric in sorted(undefined):
                skipped[metric] = skipped.get(metric, 0) + 1
            records = normalise([r for r in raw if (r.instance, r.metric) not in undefined])
            for record in records:
                rows.append({
                    "instance_id": instances[record.instance]["instance_id"], "sample_id": sample_id,
                    "candidate_id": candidates[record.candidate]["candidate_id"], "metric": record.metric,
                    "kind": record.kind, "value": record.value, "lower_better": record.lower_better,
                    "normalised": record.normalised, "method": record.method, "normalisation": NORMALISATION,
                    "pyiqa_version": pyiqa_version,
                })
            for combined in reward(records, fr_weight=section.fr_weight, nr_weight=section.nr_weight):
                for metric, value in (("reward", combined.reward), ("fr_mean", combined.fr), ("nr_mean", combined.nr)):
                    if value is None:
                        continue
                    rows.append({
                        "instance_id": instances[combined.instance]["instance_id"], "sample_id": sample_id,
                        "candidate_id": candidates[combined.candidate]["candidate_id"], "metric": metric,
                        "kind": metric, "value": value, "lower_better": False, "normalised": value,
                        "method": "aggregate", "normalisation": NORMALISATION, "pyiqa_version": pyiqa_version,
                    })
        return ShardOutput(pa.Table.from_pylist(rows, schema=INSTANCE_SCORES), quarantine,
                           stats={"undefined_metric_instances": skipped})

    def summarize(self, stats: list[dict]) -> dict:
        """How many instances each metric was undefined on (left out of their reward)."""
        totals: dict[str, int] = {}
        for item in stats:
            for metric, count in item["undefined_metric_instances"].items():
                totals[metric] = totals.get(metric, 0) + count
        return {"undefined_metric_instances": totals}
