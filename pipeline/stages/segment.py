"""Stage `segment`: `lq_pairs` -> `instances` (schema: pipeline.schemas.INSTANCES).

SAM runs once per sample on the anchor image and its masks serve all N candidates,
which are pixel-aligned with the HR crop. Without a SAM checkpoint the configured
fallback (felzenszwalb superpixels) is used and named in the log and the manifest.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import pyarrow as pa
from PIL import Image

from dspo_core.segment import SAM_CHECKPOINT_FILES, Segmenter, SegmenterConfig, build_segmenter
from pipeline import models
from pipeline.schemas import stable_id, INSTANCES
from pipeline.config import PipelineConfig, SegmentConfig
from pipeline.fetch import fetch_weights
from pipeline.stage import Shard, ShardOutput, Stage, make_shards
from storage import DatasetStore, decode_image

log = logging.getLogger("dspo.stage")
_SAM_CATALOG_IDS = {"vit_b": "sam-vit-b", "vit_l": "sam-vit-l", "vit_h": "sam-vit-h"}


def resolve_segmenter(section: SegmentConfig) -> tuple[SegmenterConfig, str | None]:
    """(the segmenter config to run, the fallback note or None).

    A SAM config without a checkpoint path takes the catalog's file in $DSPO_MODELS.
    """
    config = section.segmenter
    if config.name != "sam":
        return config, None
    checkpoint = fetch_weights(config.sam.checkpoint)
    if checkpoint is None and config.sam.model_type in _SAM_CATALOG_IDS:
        location = models.locate(_SAM_CATALOG_IDS[config.sam.model_type])
        checkpoint = location.path if location.present else None
    if checkpoint and os.path.isfile(checkpoint):
        return config.model_copy(update={"sam": config.sam.model_copy(update={"checkpoint": checkpoint})}), None
    wanted = checkpoint or SAM_CHECKPOINT_FILES[config.sam.model_type]
    if section.fallback == "none":
        raise FileNotFoundError(f"segment: SAM checkpoint {wanted} not found and fallback is 'none'; "
                                "put it in $DSPO_MODELS (see `dspo doctor`) or set segment.segmenter.sam.checkpoint")
    note = f"felzenszwalb superpixels instead of SAM: checkpoint {os.path.basename(wanted)} not found"
    return config.model_copy(update={"name": "felzenszwalb"}), note


class SegmentStage(Stage):
    name = "segment"
    output = "instances"
    inputs = ("lq_pairs",)

    def __init__(self):
        self._segmenters: dict[str, Segmenter] = {}

    def section(self, config: PipelineConfig) -> SegmentConfig:
        return config.segment

    def schema(self, section: SegmentConfig) -> pa.Schema:
        return INSTANCES

    def identity(self, section: SegmentConfig):
        # The segmenter actually used, not local paths: the cache must work across machines.
        resolved, note = resolve_segmenter(section)
        return {"segmenter": resolved.name, "fallback": note}

    def _segmenter(self, section: SegmentConfig) -> tuple[Segmenter, str | None]:
        resolved, note = resolve_segmenter(section)
        key = resolved.model_dump_json()
        if key not in self._segmenters:
            if note:
                log.warning("segment: using %s", note)
            self._segmenters[key] = build_segmenter(resolved)
        return self._segmenters[key], note

    def metadata(self, section: SegmentConfig) -> dict:
        segmenter, note = self._segmenter(section)
        return {"segmenter": segmenter.describe(), "fallback": note}

    def plan(self, store: DatasetStore, inputs: dict[str, str], section: SegmentConfig) -> list[Shard]:
        ids = store.read_arrow(inputs["lq_pairs"], columns=["sample_id"]).column("sample_id").to_pylist()
        return make_shards(ids, section.shard_size)

    def run_shard(self, store: DatasetStore, inputs: dict[str, str], section: SegmentConfig,
                  shard: Shard) -> ShardOutput:
        segmenter, note = self._segmenter(section)
        column = "hr" if section.anchor == "hr" else "lq"
        samples = store.read_where_in(inputs["lq_pairs"], "sample_id", shard.items,
                                      columns=["sample_id", column, "crop_height", "crop_width"])
        rows, quarantine = [], []
        for sample in samples.to_pylist():
            image = decode_image(sample[column]).convert("RGB")
            if section.anchor == "lq_bicubic":
                image = image.resize((sample["crop_width"], sample["crop_height"]), Image.BICUBIC)
            records = segmenter.segment(np.asarray(image))
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
