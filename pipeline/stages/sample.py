"""Stage `sample`: `lq_pairs` -> `sr_candidates` (schema: pipeline.schemas.SR_CANDIDATES).

N candidates per LQ image from the configured sources (backbone + settings each), batched
per source over a shard; every resolved setting and seed is recorded in the row.
"""
from __future__ import annotations

import hashlib
from contextlib import AbstractContextManager

import pyarrow as pa

from dspo_core.sr import SRBackbone
from pipeline.config import CandidateSource, PipelineConfig, SampleConfig
from pipeline.datasets import ids_in_splits, rgb_array
from pipeline.schemas import SR_CANDIDATES, stable_id
from pipeline.stage import Shard, ShardOutput, Stage, make_shards
from pipeline.weights import build_backbone_with_weights
from pipeline.weights.catalog import resolve_backbone_files
from storage import DatasetStore, image_cell


def candidate_seed(base_seed: int, sample_id: str, index: int, offset: int) -> int:
    digest = hashlib.sha256(f"{base_seed}:{sample_id}:{index}:{offset}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class SampleStage(Stage):
    def section(self, config: PipelineConfig) -> SampleConfig:
        return config.sample

    def schemas(self, section: SampleConfig) -> dict[str, pa.Schema]:
        return {"sr_candidates": SR_CANDIDATES}

    def _backbone(self, source: CandidateSource) -> AbstractContextManager[SRBackbone]:
        return self.model("backbone", source.model_dump_json(include={"backbone", "config"}),
                          lambda: build_backbone_with_weights(source.backbone, resolve_backbone_files(source.config)))

    def metadata(self, section: SampleConfig) -> dict:
        backbones = []
        for source in section.sources:
            with self._backbone(source) as backbone:
                backbones.append(backbone.describe())
        return {"candidates_per_sample": sum(len(source.candidate_settings()) for source in section.sources),
                "backbones": backbones}

    def plan(self, store: DatasetStore, inputs: dict[str, str], section: SampleConfig) -> list[Shard]:
        return make_shards(ids_in_splits(store, inputs["lq_pairs"], "sample_id", section.splits), section.shard_size)

    def run_shard(self, store: DatasetStore, inputs: dict[str, str], section: SampleConfig,
                  shard: Shard) -> ShardOutput:
        samples = store.read_where_in(inputs["lq_pairs"], "sample_id", shard.items,
                                      columns=["sample_id", "lq"]).to_pylist()
        lq_images = {row["sample_id"]: rgb_array(row["lq"]) for row in samples}
        order = [row["sample_id"] for row in samples]
        rows = []
        index = 0
        for source in section.sources:
            with self._backbone(source) as backbone:
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
