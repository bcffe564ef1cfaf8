"""The explicit registry of segmenters (no auto-import, no plugins)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import Segmenter
from .config import SegmenterConfig
from .felzenszwalb import FelzenszwalbSegmenter
from .sam import SamSegmenter

#: SegmenterConfig.name -> segmenter class.
SEGMENTERS: dict[str, type[Segmenter]] = {
    "sam": SamSegmenter,
    "felzenszwalb": FelzenszwalbSegmenter,
}


def build_segmenter(config: SegmenterConfig | Mapping[str, Any]) -> Segmenter:
    """Build the segmenter ``config.name`` names (a mapping is validated into a SegmenterConfig first).

    SAM loads its model here, so a missing checkpoint fails now with
    MissingCheckpointError, not at the first image.
    """
    if not isinstance(config, SegmenterConfig):
        config = SegmenterConfig.model_validate(config)
    try:
        cls = SEGMENTERS[config.name]
    except KeyError:
        raise ValueError(f"unknown segmenter {config.name!r}; known: {sorted(SEGMENTERS)}") from None
    return cls(config)
