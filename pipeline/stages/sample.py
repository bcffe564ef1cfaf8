"""Stage `sample`: `lq_pairs` -> `sr_candidates` (schema: pipeline.schemas.SR_CANDIDATES).

N candidates per LQ image from the configured sources (backbone + settings each), batched
per source over a shard; every resolved setting and seed is recorded in the row.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

from dspo_core.sr import SRBackbone, build_backbone
from pipeline.schemas import stable_id, SR_CANDIDATES
from pipeline.config import CandidateSource, PipelineConfig, SampleConfig
from pipeline.fetch import fetch_weights
from pipeline.stage import Shard, ShardOutput, Stage, ids_in_splits, make_shards
from storage import DatasetStore, decode_image, image_cell


# Backbone config keys that name weights: an s3:// value is fetched into the local model cache.
WEIGHT_KEYS = ("path", "lora_path")


def candidate_seed(base_seed: int, sample_id: str, index: int, offset: int) -> int:
    digest = hashlib.sha256(f"{base_seed}:{sample_id}:{index}:{offset}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class SampleStage(Stage):
    name = "sample"
    output = "sr_candidates"
    inputs = ("lq_pairs",)

    def __init__(self):
        self._backbones: dict[str, SRBackbone] = {}

    def section(self, config: PipelineConfig) -> SampleConfig:
        return config.sample

    def schema(self, section: SampleConfig) -> pa.Schema:
        return SR_CANDIDATES

    def _backbone(self, source: CandidateSource) -> SRBackbone:
        key = source.model_dump_json(include={"backbone", "config"})
        if key not in self._backbones:
            config = {name: fetch_weights(value) if name in WEIGHT_KEYS else value
                      for name, value in source.config.items()}
            self._backbones[key] = build_backbone(source.backbone, config)
        return self._backbones[key]

    def metadata(self, section: SampleConfig) -> dict:
        return {"candidates_per_sample": sum(len(source.candidate_settings()) for source in section.sources),
                "backbones": [self._backbone(source).describe() for source in section.sources]}

    def plan(self, store: DatasetStore, inputs: dict[str, str], section: SampleConfig) -> list[Shard]:
        return make_shards(ids_in_splits(store, inputs["lq_pairs"], "sample_id", section.splits), section.shard_size)

    def run_shard(self, store: DatasetStore, inputs: dict[str, str], section: SampleConfig,
                  shard: Shard) -> ShardOutput:
        samples = store.read_where_in(inputs["lq_pairs"], "sample_id", shard.items,
                                      columns=["sample_id", "lq"]).to_pylist()
        lq_images = {row["sample_id"]: np.asarray(decode_image(row["lq"]).convert("RGB")) for row in samples}
        order = [row["sample_id"] for row in samples]
        rows = []
        index = 0
        for source in section.sources:
            backbone = self._backbone(source)
            for settings in source.candidate_settings():
                resolved = [
                    backbone.resolve_settings(settings.model_copy(
                        update={"seed": candidate_seed(section.seed, sample_id, index, settings.seed)}))
                    for sample_id in order
                ]
                outputs = backbone.sample([lq_images[sample_id] for sample_id in order], resolved)
                for sample_id, candidate_settings, image in zip(order, resolved, outputs):
                    rows.append({
                        "candidate_id": stable_id("candidate", sample_id, index),
                        "sample_id": sample_id, "candidate_index": index, "backbone": backbone.name,
                        "weights_id": backbone.weights_id, "seed": candidate_settings.seed,
                        "settings": candidate_settings.model_dump_json(), "image": image_cell(image),
                    })
                index += 1
        rows.sort(key=lambda row: (order.index(row["sample_id"]), row["candidate_index"]))
        return ShardOutput(pa.Table.from_pylist(rows, schema=SR_CANDIDATES))
