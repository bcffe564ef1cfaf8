"""Apply a sampled Real-ESRGAN second-order degradation to an HR image, and replay it.

Images in and out are ``(H, W, 3)`` uint8 RGB numpy arrays. Internally the math is
float32 in [0, 1] on CPU torch tensors; the LQ is clamped and rounded like
Real-ESRGAN (``torch.clamp((out * 255.0).round(), 0, 255)``).

The steps, as in ``RealESRGANModel.feed_data`` (the crop comes first here, so the
degradation runs on the ``gt_size`` crop):

1. crop ``gt_size`` from the HR, padded at the bottom / right (``BORDER_REFLECT_101``)
   where it is smaller, as BasicSR's ``RealESRGANDataset`` does; with ``gt_usm`` sharpen
   it (Real-ESRGAN's ``USMSharp``) and degrade the sharpened crop, as ``RealESRGANModel``
   does; the returned HR is the unsharpened crop, ``ops.usm_sharp(hr_crop)`` the sharpened
   one (Real-ESRGAN sharpens its whole 400 px dataset crop before cutting ``gt_size``, so
   its sharpening sees a few more pixels of context at the crop's border);
2. stage 1: blur, resize by a random factor, Gaussian or Poisson noise, JPEG;
3. stage 2: blur (with ``second_blur_prob``), resize to a random factor of the LQ
   size, noise;
4. final: with p 0.5 either [resize to the LQ size + final sinc, then JPEG] or
   [JPEG, then resize + final sinc];
5. clamp and round to uint8.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from . import ops
from .config import DegradationConfig
from .kernels import build_kernel
from .params import CropParams, DegradationParams, FinalParams, NoiseParams, StageParams
from .sampling import sample_params

PARAMS_KEY = "degradation_params"
"""Key under which :func:`replay` looks for the record in a dataset row."""


def _check_image(hr: np.ndarray) -> None:
    if not isinstance(hr, np.ndarray) or hr.dtype != np.uint8 or hr.ndim != 3 or hr.shape[2] != 3:
        shape = getattr(hr, "shape", None)
        dtype = getattr(hr, "dtype", type(hr).__name__)
        raise ValueError(f"expected an (H, W, 3) uint8 RGB numpy array, got shape {shape} dtype {dtype}")


def _crop(hr: np.ndarray, crop: CropParams) -> np.ndarray:
    height, width = hr.shape[:2]
    padded_height, padded_width = height + crop.pad_bottom, width + crop.pad_right
    inside = 0 <= crop.top <= padded_height - crop.height and 0 <= crop.left <= padded_width - crop.width
    # A padded side is covered whole (the sampler's only case), so cropping the photographed
    # part first and padding it after equals BasicSR's pad-then-crop, without padding the rest.
    covers = (not crop.pad_bottom or (crop.top, crop.height) == (0, padded_height)) and (
        not crop.pad_right or (crop.left, crop.width) == (0, padded_width))
    if not (inside and covers):
        raise ValueError(f"crop box {crop} does not fit the {height}x{width} image padded by "
                         f"{crop.pad_bottom} rows and {crop.pad_right} columns")
    photographed = hr[crop.top:crop.top + crop.height - crop.pad_bottom,
                      crop.left:crop.left + crop.width - crop.pad_right]
    return ops.pad_reflect_101(photographed, crop.pad_bottom, crop.pad_right) if crop.padded else photographed


def _add_noise(x: torch.Tensor, noise: NoiseParams) -> torch.Tensor:
    if noise.kind == "gaussian":
        return ops.add_gaussian_noise(x, noise.sigma, noise.gray, noise.seed)
    return ops.add_poisson_noise(x, noise.poisson_scale, noise.gray, noise.seed)


def _stage1(x: torch.Tensor, stage: StageParams) -> torch.Tensor:
    x = ops.filter2d(x, build_kernel(stage.blur))
    x = ops.resize(x, stage.resize.mode, scale_factor=stage.resize.scale)
    x = _add_noise(x, stage.noise)
    return ops.jpeg(x, stage.jpeg_quality)


def _stage2(x: torch.Tensor, stage: StageParams, crop_hw: tuple[int, int], scale: int) -> torch.Tensor:
    if stage.blur is not None:
        x = ops.filter2d(x, build_kernel(stage.blur))
    size = tuple(int(side / scale * stage.resize.scale) for side in crop_hw)
    x = ops.resize(x, stage.resize.mode, size=size)
    return _add_noise(x, stage.noise)


def _final(x: torch.Tensor, final: FinalParams, lq_size: tuple[int, int]) -> torch.Tensor:
    def resize_and_sinc(y: torch.Tensor) -> torch.Tensor:
        y = ops.resize(y, final.resize_mode, size=lq_size)
        return y if final.sinc is None else ops.filter2d(y, build_kernel(final.sinc))

    if final.order == "resize_sinc_then_jpeg":
        return ops.jpeg(resize_and_sinc(x), final.jpeg_quality)
    return resize_and_sinc(ops.jpeg(x, final.jpeg_quality))


def apply(hr: np.ndarray, params: DegradationParams) -> tuple[np.ndarray, np.ndarray]:
    """Apply a sampled degradation; deterministic for the same ``(hr, params)`` on one machine.

    Args:
        hr: ``(H, W, 3)`` uint8 RGB image with ``(H, W) == (params.hr_height, params.hr_width)``.
        params: the record from :func:`sample_params`.

    Returns:
        ``(hr_crop, lq)``: the ``(crop.height, crop.width, 3)`` uint8 HR crop (padded as
        ``params.crop`` says; never sharpened: with ``params.gt_usm`` the LQ is degraded from
        ``usm_sharpen`` of it, whose 8-bit form is ``ops.usm_sharp(hr_crop)``) and the
        ``(crop.height / scale, crop.width / scale, 3)`` uint8 LQ image.
    """
    _check_image(hr)
    if hr.shape[:2] != (params.hr_height, params.hr_width):
        raise ValueError(f"HR image is {hr.shape[0]}x{hr.shape[1]} but the record was sampled for "
                         f"{params.hr_height}x{params.hr_width}")
    hr_crop = _crop(hr, params.crop)
    with torch.no_grad():
        x = ops.to_tensor(hr_crop)
        if params.gt_usm:
            x = ops.usm_sharpen(x)
        x = _stage1(x, params.stage1)
        x = _stage2(x, params.stage2, (params.crop.height, params.crop.width), params.scale)
        x = _final(x, params.final, params.lq_size)
        lq = ops.to_uint8(x)
    return np.ascontiguousarray(hr_crop), lq


def degrade(
    hr: np.ndarray, config: DegradationConfig, seed: int
) -> tuple[np.ndarray, np.ndarray, DegradationParams]:
    """Sample a degradation for ``hr`` from ``seed`` and apply it.

    Returns ``(hr_crop, lq, params)``: the two uint8 images of :func:`apply` and the
    record to store (``params.to_dict()`` or ``params.to_json()``) so :func:`replay`
    can regenerate ``lq``.
    """
    _check_image(hr)
    params = sample_params(config, seed, hr.shape[:2])
    hr_crop, lq = apply(hr, params)
    return hr_crop, lq, params


def _as_params(row_or_params: DegradationParams | Mapping[str, Any] | str) -> DegradationParams:
    if isinstance(row_or_params, DegradationParams):
        return row_or_params
    if isinstance(row_or_params, str):
        row_or_params = json.loads(row_or_params)
    if not isinstance(row_or_params, Mapping):
        raise TypeError(f"expected DegradationParams, a dict, a JSON string or a row, got {type(row_or_params)}")
    if PARAMS_KEY in row_or_params:
        return _as_params(row_or_params[PARAMS_KEY])
    return DegradationParams.from_dict(dict(row_or_params))


def replay(row_or_params: DegradationParams | Mapping[str, Any] | str, hr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Regenerate ``(hr_crop, lq)`` bit-for-bit from a stored record and the original HR image.

    ``row_or_params`` is a :class:`DegradationParams`, its ``to_dict()`` or ``to_json()``, or a
    dataset row (mapping) holding either under :data:`PARAMS_KEY`.
    """
    return apply(hr, _as_params(row_or_params))
