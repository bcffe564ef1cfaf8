"""Measured attributes of one instance region: how the loser candidate differs from the HR.

``measure(candidate_crop, hr_crop, mask)`` compares the two pixel-aligned crops inside
the mask, in numpy only, and returns an ``Attributes`` record that the template writer
turns into words:

- sharpness: variance of the 3x3 Laplacian of luminance, candidate / HR;
- colour: mean CIELAB difference, split into lightness (brighter/darker), the
  orange-blue axis of the a*b* plane (warmer/cooler, like white-balance temperature),
  the axis at 90 degrees to it (more magenta/greener, like white-balance tint) and
  chroma (more saturated/desaturated);
- invented texture: high-pass energy of the candidate where the HR is flat;
- ringing: high-pass energy in a band next to HR edges (overshoot halos), optional;
- contrast: standard deviation of L*, candidate / HR.

Pixels outside the mask still feed the filters' neighbourhoods (the crops are real image
content), but only pixels inside the mask are pooled.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .config import MeasureConfig

_EPS = 1e-12


class Attributes(BaseModel):
    """What was measured on one instance region (candidate vs HR, pooled inside the mask).

    The float fields are the measurements; the str/bool/list fields are the flags that
    ``MeasureConfig`` thresholds make of them, which is what the template writer reads.
    """

    model_config = ConfigDict(frozen=True)

    area: int = Field(description="pixels inside the mask")
    sharpness_ratio: float = Field(description="Laplacian variance of luminance, candidate / HR (clipped to [1/cap, cap]); > 1 = sharper than HR")
    sharpness: Literal["over_sharpened", "over_smoothed", "matched"] = Field(description="ratio > factor, < 1/factor, or in between")
    delta_l: float = Field(description="mean L* difference, candidate - HR (> 0 brighter)")
    delta_a: float = Field(description="mean a* difference (> 0 redder / more magenta)")
    delta_b: float = Field(description="mean b* difference (> 0 yellower)")
    warmth: float = Field(description="(delta_a, delta_b) projected on the warm axis at hue warm_hue_deg (> 0 warmer, < 0 cooler)")
    tint: float = Field(description="(delta_a, delta_b) projected on the axis 90 degrees clockwise from it (> 0 more magenta, < 0 greener)")
    delta_chroma: float = Field(description="mean chroma sqrt(a*^2 + b*^2) difference (> 0 more saturated)")
    delta_e: float = Field(description="CIE76 distance between the mean Lab colours")
    colour_shift: list[str] = Field(description="direction words, in this order when present: warmer|cooler, more magenta|greener, brighter|darker, more saturated|desaturated; empty when matched")
    flat_fraction: float = Field(description="share of mask pixels that are flat in the HR")
    invented_texture: float = Field(description="high-pass RMS on HR-flat pixels, candidate minus HR (0 when too few flat pixels); > 0 = texture the HR does not have")
    has_invented_texture: bool = Field(description="flat_fraction >= min_flat_fraction and invented_texture >= invented_texture_min")
    edge_ringing: float | None = Field(description="high-pass RMS ratio candidate/HR in the band next to HR edges; None when not measured or too few band pixels")
    has_ringing: bool = Field(description="edge_ringing > ringing_factor and the RMS excess >= ringing_min")
    contrast_ratio: float = Field(description="standard deviation of L*, candidate / HR (clipped to [1/cap, cap])")
    contrast: Literal["higher", "lower", "matched"] = Field(description="ratio > factor, < 1/factor, or in between")

    def flags(self) -> list[str]:
        """The flagged attributes as template-vocabulary keys, in vocabulary order."""
        out = []
        if self.sharpness != "matched":
            out.append(self.sharpness)
        if self.has_invented_texture:
            out.append("invented_texture")
        if self.has_ringing:
            out.append("ringing")
        if self.colour_shift:
            out.append("colour")
        if self.contrast != "matched":
            out.append(f"{self.contrast}_contrast")
        return out


def to_float_rgb(image: object) -> np.ndarray:
    """(H, W, 3) float64 in [0, 1] from uint8 / float [0, 1] arrays or PIL images;
    grey (H, W) is repeated to 3 channels, an alpha channel dropped."""
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) image, got shape {array.shape}")
    array = array[..., :3]
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"unsupported image dtype {array.dtype}")
    return np.clip(array.astype(np.float64), 0.0, 1.0)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] -> CIELAB (D65), (..., 3)."""
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    matrix = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]])
    xyz = linear @ matrix.T / np.array([0.95047, 1.0, 1.08883])
    delta = 6.0 / 29.0
    f = np.where(xyz > delta**3, np.cbrt(xyz), xyz / (3 * delta**2) + 4.0 / 29.0)
    return np.stack([116.0 * f[..., 1] - 16.0, 500.0 * (f[..., 0] - f[..., 1]), 200.0 * (f[..., 1] - f[..., 2])], axis=-1)


def box_filter(image: np.ndarray, size: int) -> np.ndarray:
    """Mean over a size x size window (odd size, reflect padding), via an integral image."""
    r = size // 2
    padded = np.pad(image, r, mode="reflect") if min(image.shape) > r else np.pad(image, r, mode="edge")
    integral = np.pad(padded.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    h, w = image.shape
    total = integral[size : size + h, size : size + w] - integral[:h, size : size + w] - integral[size : size + h, :w] + integral[:h, :w]
    return total / (size * size)


def laplacian(image: np.ndarray) -> np.ndarray:
    """4-neighbour Laplacian with edge padding."""
    p = np.pad(image, 1, mode="edge")
    return p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4.0 * image


def high_pass(image: np.ndarray) -> np.ndarray:
    """Image minus its 3x3 box blur."""
    return image - box_filter(image, 3)


def _ratio(num: float, den: float, floor: float, cap: float) -> float:
    return float(np.clip(max(num, floor) / max(den, floor), 1.0 / cap, cap))


def _rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(values**2))) if values.size else 0.0


def _colour_words(warmth: float, tint: float, dl: float, dchroma: float, c: MeasureConfig) -> list[str]:
    words = []
    if abs(warmth) >= c.warmth_min:
        words.append("warmer" if warmth > 0 else "cooler")
    if abs(tint) >= c.tint_min:
        words.append("more magenta" if tint > 0 else "greener")
    if abs(dl) >= c.lightness_min:
        words.append("brighter" if dl > 0 else "darker")
    if abs(dchroma) >= c.saturation_min:
        words.append("more saturated" if dchroma > 0 else "desaturated")
    return words


def measure(candidate_crop: object, hr_crop: object, mask: object, config: MeasureConfig | None = None) -> Attributes:
    """Measure how `candidate_crop` differs from `hr_crop` inside `mask`.

    Args:
        candidate_crop: the loser's region, (H, W, 3) uint8 or float in [0, 1] (or PIL).
        hr_crop: the HR ground truth of the same region, same shape, pixel-aligned.
        mask: (H, W) bool (or 0/1) instance mask within the crops.
        config: thresholds (default ``MeasureConfig()``).

    Returns:
        An ``Attributes`` record (see its field docs).

    Raises:
        ValueError: shapes differ or the mask is empty.
    """
    c = config or MeasureConfig()
    cand, hr = to_float_rgb(candidate_crop), to_float_rgb(hr_crop)
    region = np.asarray(mask).astype(bool)
    if cand.shape != hr.shape or region.shape != cand.shape[:2]:
        raise ValueError(f"shape mismatch: candidate {cand.shape}, HR {hr.shape}, mask {region.shape}")
    area = int(region.sum())
    if area == 0:
        raise ValueError("empty mask: nothing to measure")
    lab_c, lab_h = rgb_to_lab(cand), rgb_to_lab(hr)
    y_c, y_h = lab_c[..., 0] / 100.0, lab_h[..., 0] / 100.0  # luminance in [0, 1]

    lap_floor = 1e-7
    sharp = _ratio(float(laplacian(y_c)[region].var()), float(laplacian(y_h)[region].var()), lap_floor, c.ratio_cap)
    sharpness = "over_sharpened" if sharp > c.sharpness_factor else "over_smoothed" if sharp < 1.0 / c.sharpness_factor else "matched"

    dl, da, db = (lab_c[region] - lab_h[region]).mean(axis=0).tolist()
    hue = np.deg2rad(c.warm_hue_deg)
    warmth, tint = da * np.cos(hue) + db * np.sin(hue), da * np.sin(hue) - db * np.cos(hue)
    chroma = lambda lab: np.hypot(lab[..., 1], lab[..., 2])[region].mean()  # noqa: E731
    dchroma = float(chroma(lab_c) - chroma(lab_h))

    hp_c, hp_h = high_pass(y_c), high_pass(y_h)
    # Rounding in the box filter can leave tiny negative energies.
    flat = region & (np.sqrt(np.maximum(box_filter(hp_h**2, 5), 0)) < c.flat_max)
    n_flat = int(flat.sum())
    invented = _rms(hp_c[flat]) - _rms(hp_h[flat]) if n_flat >= c.min_pixels else 0.0
    flat_fraction = n_flat / area

    ringing, has_ringing = None, False
    if c.measure_ringing:
        gy, gx = np.gradient(y_h)
        edges = np.hypot(gx, gy) > c.edge_min
        near = box_filter(edges.astype(np.float64), 2 * c.ringing_band + 1) > _EPS
        touching = box_filter(edges.astype(np.float64), 3) > _EPS
        band = region & near & ~touching
        if band.sum() >= c.min_pixels:
            rms_c, rms_h = _rms(hp_c[band]), _rms(hp_h[band])
            ringing = _ratio(rms_c, rms_h, 1e-3, c.ratio_cap)
            has_ringing = ringing > c.ringing_factor and rms_c - rms_h >= c.ringing_min

    contrast = _ratio(float(lab_c[..., 0][region].std()), float(lab_h[..., 0][region].std()), 0.5, c.ratio_cap)
    contrast_word = "higher" if contrast > c.contrast_factor else "lower" if contrast < 1.0 / c.contrast_factor else "matched"

    return Attributes(
        area=area,
        sharpness_ratio=sharp,
        sharpness=sharpness,
        delta_l=dl,
        delta_a=da,
        delta_b=db,
        warmth=float(warmth),
        tint=float(tint),
        delta_chroma=dchroma,
        delta_e=float(np.sqrt(dl * dl + da * da + db * db)),
        colour_shift=_colour_words(float(warmth), float(tint), dl, dchroma, c),
        flat_fraction=flat_fraction,
        invented_texture=float(invented),
        has_invented_texture=bool(flat_fraction >= c.min_flat_fraction and invented >= c.invented_texture_min),
        edge_ringing=ringing,
        has_ringing=bool(has_ringing),
        contrast_ratio=contrast,
        contrast=contrast_word,
    )
