"""Colour correction of an SR output against its LQ input, as OSEDiff's test applies it (--align_method).

Both operate on ``(B, 3, H, W)`` float images in [0, 1] of the same size (the output and the
bicubic-upscaled LQ) and return the corrected output clamped to [0, 1]:

- ``adain``: each channel of the output gets the LQ's mean and standard deviation
  (unbiased variance + 1e-5, as OSEDiff/StableSR's ``calc_mean_std``);
- ``wavelet``: the output's high frequencies plus the LQ's low frequencies, from a five-level
  dilated 3x3 binomial blur with replicate padding (StableSR's wavelet reconstruction).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

_VARIANCE_EPS = 1e-5
_WAVELET_LEVELS = 5


def _mean_std(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = images.flatten(2)
    return flat.mean(dim=2)[..., None, None], (flat.var(dim=2) + _VARIANCE_EPS).sqrt()[..., None, None]


def adain_color_fix(output: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
    """`output` with the per-channel mean and std of `lq`."""
    out_mean, out_std = _mean_std(output)
    lq_mean, lq_std = _mean_std(lq)
    return ((output - out_mean) / out_std * lq_std + lq_mean).clamp(0, 1)


def _blur(images: torch.Tensor, radius: int) -> torch.Tensor:
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], dtype=images.dtype) / 16
    kernel = kernel.to(images.device)[None, None].repeat(images.shape[1], 1, 1, 1)
    padded = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    return F.conv2d(padded, kernel, groups=images.shape[1], dilation=radius)


def _split_frequencies(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    high = torch.zeros_like(images)
    for level in range(_WAVELET_LEVELS):
        low = _blur(images, 2**level)
        high = high + images - low
        images = low
    return high, images


def wavelet_color_fix(output: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
    """`output`'s high frequencies on `lq`'s low frequencies."""
    high, _ = _split_frequencies(output)
    _, low = _split_frequencies(lq)
    return (high + low).clamp(0, 1)


COLOR_FIXES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "adain": adain_color_fix,
    "wavelet": wavelet_color_fix,
}
