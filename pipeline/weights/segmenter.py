"""Which segmenter the segment stage runs: SAM with a local checkpoint, or the named fallback."""
from __future__ import annotations

import os

from dspo_core.segment import SegmenterConfig
from pipeline.config import SegmentConfig
from pipeline.weights.catalog import SAM_MODEL_TYPE_IDS, locate, sam_checkpoint_name
from pipeline.weights.fetch import fetch_weights


def resolve_segmenter(section: SegmentConfig) -> tuple[SegmenterConfig, str | None]:
    """(the segmenter config to run, the fallback note or None).

    A SAM config without a checkpoint path takes the catalog's file in $DSPO_MODELS; an
    s3:// checkpoint is fetched first. Without a checkpoint, fallback 'felzenszwalb' swaps
    the segmenter and says so in the note; fallback 'none' raises FileNotFoundError.
    """
    config = section.segmenter
    if config.name != "sam":
        return config, None
    checkpoint = fetch_weights(config.sam.checkpoint)
    if checkpoint is None and config.sam.model_type in SAM_MODEL_TYPE_IDS:
        location = locate(SAM_MODEL_TYPE_IDS[config.sam.model_type])
        checkpoint = location.path if location.present else None
    if checkpoint and os.path.isfile(checkpoint):
        return config.model_copy(update={"sam": config.sam.model_copy(update={"checkpoint": checkpoint})}), None
    wanted = checkpoint or sam_checkpoint_name(config.sam.model_type)
    if section.fallback == "none":
        raise FileNotFoundError(f"segment: SAM checkpoint {wanted} not found and fallback is 'none'; "
                                "put it in $DSPO_MODELS (see `dspo doctor`) or set segment.segmenter.sam.checkpoint")
    note = f"felzenszwalb superpixels instead of SAM: checkpoint {os.path.basename(wanted)} not found"
    return config.model_copy(update={"name": "felzenszwalb"}), note
