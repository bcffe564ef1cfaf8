"""Stage `segment`: `lq_pairs` -> `instances` (schema: pipeline.schemas.INSTANCES).

SAM runs once per sample on the anchor image and its masks serve all N candidates,
which are pixel-aligned with the HR crop. Without a SAM checkpoint the configured
fallback (felzenszwalb superpixels) is used and named in the log and the manifest.
"""
from __future__ import annotations

from contextlib import AbstractContextManager

import numpy as np
import pyarrow as pa
from PIL import Image

from dspo_core.segment import Segmenter, SegmenterConfig, build_segmenter
from pipeline.config import PipelineConfig, SegmentConfig
from pipeline.schemas import INSTANCES, stable_id
from pipeline.stage import Shard, ShardOutput, Stage, make_shards
from pipeline.weights import resolve_segmenter
from storage import DatasetStore, decode_image


def anchor_image(sample: dict, column: str, anchor: str) -> np.ndarray:
    """The RGB image SAM segments: the HR crop, the LQ, or the LQ bicubic-upscaled to the crop."""
    image = decode_image(sample[column]).convert("RGB")
    if anchor == "lq_bicubic":
        image = image.resize((sample["crop_width"], sample["crop_height"]), Image.BICUBIC)
    return np.asarray(image)


class SegmentStage(Stage):
    def section(self, config: PipelineConfig) -> SegmentConfig:
        return config.segment

    def schemas(self, section: SegmentConfig) -> dict[str, pa.Schema]:
        return {"instances": INSTANCES}

    def identity(self, section: SegmentConfig):
        # The segmenter actually used, not local paths: the cache must work across machines.
        resolved, note = resolve_segmenter(section)
        return {"segmenter": resolved.name, "fallback": note}

    def _segmenter(self, resolved: SegmenterConfig) -> AbstractContextManager[Segmenter]:
        return self.model("segmenter", resolved, lambda: build_segmenter(resolved))

    def metadata(self, section: SegmentConfig) -> dict:
        resolved, note = resolve_segmenter(section)
        with self._segmenter(resolved) as segmenter:
            return {"segmenter": segmenter.describe(), "fallback": note}

    def plan(self, store: DatasetStore, inputs: dict[str, str], section: SegmentConfig) -> list[Shard]:
        ids = store.read_arrow(inputs["lq_pairs"], columns=["sample_id"]).column("sample_id").to_pylist()
        return make_shards(ids, section.shard_size)

    def run_shard(self, store: DatasetStore, inputs: dict[str, str], section: SegmentConfig,
                  shard: Shard) -> ShardOutput:
        resolved, note = resolve_segmenter(section)
        column = "hr" if section.anchor == "hr" else "lq"
        samples = store.read_where_in(inputs["lq_pairs"], "sample_id", shard.items,
                                      columns=["sample_id", column, "crop_height", "crop_width"])
        rows, quarantine = [], []
        with self._segmenter(resolved) as segmenter:
            segmented = [(sample, segmenter.segment(anchor_image(sample, column, section.anchor)))
                         for sample in samples.to_pylist()]
        for sample, records in segmented:
            if not records:
                quarantine.append({"item": sample["sample_id"], "reason": "no instance survived the post-filter"})
                continue
            for index, record in enumerate(records):
                rows.append({
                    "instance_id": stable_id("instance", sample["sample_id"], index),
                    "sample_id": sample["sample_id"], "index": index, "mask": record.mask, "bbox": record.bbox,
                    "area": record.area, "weight": record.weight, "predicted_iou": record.predicted_iou,
                    "stability_score": record.stability_score, "source": record.source, "anchor": section.anchor,
                })
        return ShardOutput(pa.Table.from_pylist(rows, schema=INSTANCES), quarantine, [note] if note else [])
