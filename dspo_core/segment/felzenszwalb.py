"""Felzenszwalb-Huttenlocher superpixels as instance proposals: the offline fallback for SAM."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Segmenter
from .instances import Proposal, min_pixels


class FelzenszwalbSegmenter(Segmenter):
    """``skimage.segmentation.felzenszwalb`` segments as instances (no scores: ``predicted_iou`` is None).

    The segments partition the image, so with ``priority="score"`` the
    post-filter ranks them by area (largest first).
    """

    name = "felzenszwalb"
    library = "scikit-image"

    def propose(self, image: np.ndarray) -> list[Proposal]:
        from skimage.segmentation import felzenszwalb

        opts = self.config.felzenszwalb
        labels = felzenszwalb(image, scale=opts.scale, sigma=opts.sigma, min_size=opts.min_size, channel_axis=-1)
        # Largest segment first (ties: lower label first), so the ranking does not depend on label numbering
        # beyond what felzenszwalb itself fixes.
        counts = np.bincount(labels.ravel())
        # Segments the post-filter would drop anyway are not materialised as masks.
        threshold = min_pixels(self.config.postfilter.min_area_share, labels.size)
        order = sorted(np.flatnonzero(counts >= threshold).tolist(), key=lambda lab: (-int(counts[lab]), lab))
        return [Proposal(mask=labels == lab, source="felzenszwalb") for lab in order]

    def describe_params(self) -> dict[str, Any]:
        return self.config.felzenszwalb.model_dump(mode="json")
