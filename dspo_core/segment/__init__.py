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

import importlib

# Public name -> submodule. Resolved on first use (PEP 562), so importing a light
# name (a config class) does not import torch.
_EXPORTS = {
    "RECORD_VERSION": ".base",
    "Segmenter": ".base",
    "SAM_CHECKPOINT_FILES": ".config",
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


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*_EXPORTS, *_SUBMODULES])


__all__ = sorted([*_EXPORTS, *_SUBMODULES])
