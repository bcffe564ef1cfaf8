"""Stage `degrade`: `hr_images` -> `lq_pairs` (schema: pipeline.schemas.LQ_PAIRS) with the
Real-ESRGAN second-order degradation; every sampled value and the seed go into the row."""
from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

from dspo_core.degradation import degrade
from pipeline.config import DegradeConfig, PipelineConfig
from pipeline.datasets import rgb_array
from pipeline.schemas import LQ_PAIRS, stable_id
from pipeline.stage import Shard, ShardOutput, Stage, ids_in_splits, make_shards
from storage import DatasetStore, image_cell


def crop_seed(base_seed: int, image_id: str, crop_index: int) -> int:
    digest = hashlib.sha256(f"{base_seed}:{image_id}:{crop_index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # non-negative int64


class DegradeStage(Stage):
    def section(self, config: PipelineConfig) -> DegradeConfig:
        return config.degrade

    def schemas(self, section: DegradeConfig) -> dict[str, pa.Schema]:
        return {"lq_pairs": LQ_PAIRS}

    def plan(self, store: DatasetStore, inputs: dict[str, str], section: DegradeConfig) -> list[Shard]:
        return make_shards(ids_in_splits(store, inputs["hr_images"], "image_id", section.splits), section.shard_size)

    def run_shard(self, store: DatasetStore, inputs: dict[str, str], section: DegradeConfig,
                  shard: Shard) -> ShardOutput:
        source = store.read_where_in(inputs["hr_images"], "image_id", shard.items,
                                     columns=["image_id", "split", "image"])
        rows, quarantine = [], []
        for record in source.to_pylist():
            hr = rgb_array(record["image"])
            for crop_index in range(section.crops_per_image):
                seed = crop_seed(section.seed, record["image_id"], crop_index)
                try:
                    hr_crop, lq, params = degrade(hr, section.degradation, seed)
                except ValueError as exc:
                    quarantine.append({"item": record["image_id"], "reason": str(exc)})
                    break
                rows.append({
                    "sample_id": stable_id("sample", record["image_id"], seed),
                    "image_id": record["image_id"], "split": record["split"],
                    "crop_top": params.crop.top, "crop_left": params.crop.left,
                    "crop_height": params.crop.height, "crop_width": params.crop.width,
                    "scale": params.scale, "hr": image_cell(hr_crop), "lq": image_cell(lq), "seed": seed,
                    "degradation_params": params.to_json(),
                })
        return ShardOutput(pa.Table.from_pylist(rows, schema=LQ_PAIRS), quarantine)
