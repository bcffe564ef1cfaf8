"""Bbox-fill: cut an instance out for metrics that have no poolable quality map.

For ms_ssim, vif, nlpd, piqe, cw_ssim, mad and the learned metrics, an instance is
scored on the bounding box of its mask; pixels of the box outside the mask are filled
identically in every candidate (and the reference), then the crop is mirror-padded up
to the metric's minimum size.

Fill choice (config ``fr_fill`` / ``nr_fill``), and why:

- full-reference, default ``reference``: outside the mask, candidate and reference
  both carry the reference's own pixels. The error there is exactly 0, so the score
  measures only the instance, and the context stays natural: no artificial edge along
  the mask boundary that multi-scale / pyramid filters (ms_ssim, vif, nlpd) would
  respond to. Its known cost: FR scores are inflated, since the fill is a perfect
  match. FIELD-NOTES measured PSNR +1.0-1.6 dB over the map averaged inside the
  mask; the inflation is the same for all N candidates of an instance and
  shrinks their spread rather than reordering them, and only the within-group
  min-max normalised value is used for ranking (see ``dspo_core.iqa.rewards``).
  ``constant`` (the reference's mean colour inside the mask, in both images) is the
  alternative: also zero error outside, but it draws a flat region and a hard
  boundary into both images.
- no-reference, default ``constant``: the mean colour inside the mask over all N
  candidates, identical for all candidates (and independent of the HR), so the only thing
  that differs between candidates is the instance. PIQE scores only "active" 16x16
  blocks (variance above a threshold), so flat fill blocks are skipped by design;
  reference pixels would instead mix HR content into a realism score.

The pixel-wise metrics (psnr, ssim, gmsd, fsim, vsi, entropy) avoid fill entirely:
``dspo_core.iqa.maps``.
"""

from __future__ import annotations

import numpy as np


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of a non-empty (H, W) bool mask, end-exclusive."""
    rows = np.flatnonzero(mask.any(1))
    cols = np.flatnonzero(mask.any(0))
    if rows.size == 0:
        raise ValueError("empty mask: an instance needs at least one pixel")
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def mean_colour(images: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Rounded mean RGB (uint8, shape (3,)) of `images` ((..., H, W, 3)) over the mask's pixels."""
    pixels = images[..., mask, :].reshape(-1, images.shape[-1]).astype(np.float64)
    return np.round(pixels.mean(0)).astype(np.uint8)


def pad_to(images: np.ndarray, min_size: int) -> np.ndarray:
    """Mirror-pad (numpy 'symmetric': edge pixel repeated, works for any size, repeats
    itself for pads wider than the image) (..., h, w, 3) crops up to min_size per side,
    split evenly before/after."""
    h, w = images.shape[-3], images.shape[-2]
    ph, pw = max(0, min_size - h), max(0, min_size - w)
    if ph == 0 and pw == 0:
        return images
    widths = [(0, 0)] * (images.ndim - 3) + [(ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)]
    return np.pad(images, widths, mode="symmetric")


def fill_crops(
    candidates: np.ndarray,
    reference: np.ndarray | None,
    mask: np.ndarray,
    fill: str,
    min_size: int,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Crop the mask's bbox from (N, H, W, 3) candidates and the (H, W, 3) reference, fill
    the box outside the mask per `fill` ('reference' or 'constant'), pad to `min_size`.

    Returns (N, h, w, 3) candidate crops and the (h, w, 3) reference crop (None when no
    reference is given). 'reference' fill needs the reference; 'constant' fill uses the
    mean colour inside the mask of the reference when given, else of all N candidates.
    """
    top, bottom, left, right = bbox(mask)
    inside = mask[top:bottom, left:right, None]
    cands = candidates[:, top:bottom, left:right]
    ref = None if reference is None else reference[top:bottom, left:right]
    if fill == "reference":
        if ref is None:
            raise ValueError("fill='reference' needs a reference image")
        outside = ref
    elif fill == "constant":
        source = reference if reference is not None else candidates
        outside = np.broadcast_to(mean_colour(source, mask), cands.shape[1:])
    else:
        raise ValueError(f"unknown fill {fill!r}")
    cands = np.where(inside[None], cands, outside[None])
    if ref is not None:
        ref = np.where(inside, ref, outside)
        ref = pad_to(ref, min_size)
    return pad_to(cands, min_size), ref
