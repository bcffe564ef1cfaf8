"""Semantic instances for DSPO (pipeline steps 3-4): masks, COCO RLE, instance weights.

Typical use::

    segmenter = build_segmenter(SegmenterConfig(name="felzenszwalb"))   # or name="sam" + sam.checkpoint
    records = segmenter.segment(image)          # image: (H, W, 3) uint8 RGB
    manifest_params = segmenter.describe()      # JSON: segmenter, all parameters, checkpoint name + sha256 prefix
    mask = rle.decode(records[0].mask)          # (H, W) bool; records[i].weight sums to 1

Every segmenter goes through the same post-filter (``PostFilterConfig``: minimum
area share, top K, disjointness, optional remainder instance) and emits
``InstanceRecord``s whose masks are pycocotools-compatible COCO RLE.
"""

from . import rle
from .base import RECORD_VERSION, Segmenter
from .config import (
    SAM_CHECKPOINT_FILES,
    FelzenszwalbConfig,
    PostFilterConfig,
    SamConfig,
    SegmenterConfig,
)
from .felzenszwalb import FelzenszwalbSegmenter
from .instances import InstanceRecord, InvalidImageError, Proposal, check_image, postfilter, to_records
from .registry import SEGMENTERS, build_segmenter
from .sam import (
    SAM_MODEL_BUILDERS,
    TINY_SAM_ARCH,
    MissingCheckpointError,
    SamSegmenter,
    build_sam_tiny,
    load_sam,
    save_tiny_sam_checkpoint,
)

__all__ = [
    "RECORD_VERSION",
    "SAM_CHECKPOINT_FILES",
    "SAM_MODEL_BUILDERS",
    "SEGMENTERS",
    "TINY_SAM_ARCH",
    "FelzenszwalbConfig",
    "FelzenszwalbSegmenter",
    "InstanceRecord",
    "InvalidImageError",
    "MissingCheckpointError",
    "PostFilterConfig",
    "Proposal",
    "SamConfig",
    "SamSegmenter",
    "Segmenter",
    "SegmenterConfig",
    "build_sam_tiny",
    "build_segmenter",
    "check_image",
    "load_sam",
    "postfilter",
    "rle",
    "save_tiny_sam_checkpoint",
    "to_records",
]
