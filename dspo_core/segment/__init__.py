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

from dspo_core.lazy import lazy_exports

# Public name -> submodule, imported on first use (dspo_core.lazy).
_EXPORTS = {
    "RECORD_VERSION": ".base",
    "Segmenter": ".base",
    "FelzenszwalbConfig": ".config",
    "PostFilterConfig": ".config",
    "SamConfig": ".config",
    "SegmenterConfig": ".config",
    "FelzenszwalbSegmenter": ".felzenszwalb",
    "InstanceRecord": ".instances",
    "InvalidImageError": ".instances",
    "Proposal": ".instances",
    "check_image": ".instances",
    "postfilter": ".instances",
    "to_records": ".instances",
    "SEGMENTERS": ".registry",
    "build_segmenter": ".registry",
    "SAM_MODEL_BUILDERS": ".sam",
    "TINY_SAM_ARCH": ".sam",
    "MissingCheckpointError": ".sam",
    "SamSegmenter": ".sam",
    "build_sam_tiny": ".sam",
    "load_sam": ".sam",
    "save_tiny_sam_checkpoint": ".sam",
}
_SUBMODULES = ('rle',)

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS, _SUBMODULES)
