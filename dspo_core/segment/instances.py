"""Instance records and the post-filter that turns raw mask proposals into them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import rle
from .config import PostFilterConfig

__all__ = [
    "InstanceRecord",
    "InvalidImageError",
    "Proposal",
    "check_image",
    "min_pixels",
    "postfilter",
    "to_records",
]


class InvalidImageError(ValueError):
    """The image handed to a segmenter is not an (H, W, 3) uint8 RGB array."""


def check_image(image: Any) -> np.ndarray:
    """Return ``image`` if it is an (H, W, 3) uint8 RGB numpy array, else raise InvalidImageError."""
    if not isinstance(image, np.ndarray):
        raise InvalidImageError(
            f"expected an RGB image as a numpy array of shape (H, W, 3) and dtype uint8, got {type(image).__name__}"
            " (for a PIL image use np.asarray(img.convert('RGB')))"
        )
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        raise InvalidImageError(
            f"expected an RGB image of shape (H, W, 3), got a grayscale image of shape {image.shape} "
            "(convert it to RGB first, e.g. np.repeat(gray[..., None], 3, axis=2))"
        )
    if image.ndim != 3 or image.shape[2] != 3:
        extra = " (RGBA: drop or composite the alpha channel first)" if image.ndim == 3 and image.shape[2] == 4 else ""
        raise InvalidImageError(f"expected an RGB image of shape (H, W, 3), got shape {image.shape}{extra}")
    if image.dtype != np.uint8:
        raise InvalidImageError(
            f"expected an RGB image of dtype uint8 (values 0..255), got dtype {image.dtype} "
            "(for floats in [0, 1] use (img * 255).round().clip(0, 255).astype(np.uint8))"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InvalidImageError(f"image is empty: shape {image.shape}")
    return image


@dataclass(frozen=True)
class Proposal:
    """A raw mask from a segmenter, before the post-filter.

    ``mask`` is an (H, W) bool array; the scores are None when the segmenter has none.
    """

    mask: np.ndarray
    source: str
    predicted_iou: float | None = None
    stability_score: float | None = None


@dataclass(frozen=True)
class InstanceRecord:
    """One semantic instance of an image, as stored in the ``instances`` dataset.

    Fields:
        mask: COCO RLE ``{"size": [h, w], "counts": str}`` (pycocotools' compressed
            string, column-major); decode with ``decode_mask()`` or ``rle.decode``.
        bbox: tight box ``[x, y, w, h]`` of the mask in integer pixels (x = column).
        area: number of pixels in the mask, |s_m|.
        weight: DSPO instance weight w_m = area / sum of the areas of all instances
            of the image (they sum to 1 over an image's records).
        predicted_iou: SAM's own mask-quality estimate; None for felzenszwalb and remainder.
        stability_score: SAM's IoU between the mask thresholded at +/- offset; None
            for felzenszwalb and remainder.
        source: who produced the mask: "sam", "felzenszwalb" or "remainder" (the
            pixels no other instance covers).
    """

    mask: dict[str, Any]
    bbox: list[int]
    area: int
    weight: float
    predicted_iou: float | None
    stability_score: float | None
    source: str

    def decode_mask(self) -> np.ndarray:
        """The mask as an (h, w) bool array."""
        return rle.decode(self.mask)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the fields."""
        return dataclasses.asdict(self)


def min_pixels(min_area_share: float, n_pixels: int) -> int:
    """Smallest mask area (>= 1 pixel) that passes ``min_area_share`` in an image of ``n_pixels``."""
    return max(1, int(np.ceil(min_area_share * n_pixels - 1e-9)))


def _rank(proposals: list[Proposal], areas: np.ndarray, priority: str) -> list[int]:
    """Indices of ``proposals`` in priority order (stable: ties keep the input order)."""
    order = list(range(len(proposals)))
    if priority == "score":

        def key(i: int) -> tuple[float, float, int]:
            p = proposals[i]
            iou = p.predicted_iou if p.predicted_iou is not None else -np.inf
            stab = p.stability_score if p.stability_score is not None else -np.inf
            return (-iou, -stab, -int(areas[i]))

        return sorted(order, key=key)
    if priority == "area":
        return sorted(order, key=lambda i: -int(areas[i]))
    raise ValueError(f"unknown priority {priority!r}")


def postfilter(proposals: list[Proposal], height: int, width: int, config: PostFilterConfig) -> list[Proposal]:
    """Apply the post-filter (see ``PostFilterConfig``) and return the kept masks, ranked, remainder last.

    With ``config.disjoint`` the returned masks are disjoint and already trimmed.
    """
    threshold = min_pixels(config.min_area_share, height * width)
    for p in proposals:
        if p.mask.shape != (height, width) or p.mask.dtype != bool:
            raise ValueError(
                f"proposal mask must be a ({height}, {width}) bool array, got {p.mask.shape} {p.mask.dtype}"
            )
    areas = np.array([int(p.mask.sum()) for p in proposals], dtype=np.int64)
    ranked = [i for i in _rank(proposals, areas, config.priority) if areas[i] >= threshold]

    kept: list[Proposal] = []
    covered = np.zeros((height, width), dtype=bool)
    for i in ranked:
        if config.max_instances is not None and len(kept) >= config.max_instances:
            break
        p = proposals[i]
        if config.disjoint:
            part = p.mask & ~covered
            if int(part.sum()) < threshold:
                continue
            p = dataclasses.replace(p, mask=part)
        covered |= p.mask
        kept.append(p)

    if config.remainder:
        rest = ~covered
        if int(rest.sum()) >= threshold:
            kept.append(Proposal(mask=rest, source="remainder"))
    return kept


def to_records(kept: list[Proposal]) -> list[InstanceRecord]:
    """Encode kept masks as InstanceRecords with weights w_m = area / sum of areas."""
    encoded = [rle.encode(p.mask) for p in kept]
    areas = [rle.area(e) for e in encoded]
    total = float(sum(areas))
    records = []
    for p, e, a in zip(kept, encoded, areas):
        records.append(
            InstanceRecord(
                mask=e,
                bbox=rle.to_bbox(e),
                area=int(a),
                weight=a / total,
                predicted_iou=None if p.predicted_iou is None else float(p.predicted_iou),
                stability_score=None if p.stability_score is None else float(p.stability_score),
                source=p.source,
            )
        )
    return records
