"""Draw every random value of one degradation into a :class:`DegradationParams` record."""

from __future__ import annotations

import numpy as np

from .config import DegradationConfig
from .kernels import sample_final_sinc, sample_kernel
from .ops import RESIZE_MODES
from .params import RECORD_VERSION, CropParams, DegradationParams, FinalParams, NoiseParams, ResizeParams, StageParams

_NOISE_SEED_BOUND = 2**63
_FINAL_ORDERS = ("resize_sinc_then_jpeg", "jpeg_then_resize_sinc")


def crop_padding(config: DegradationConfig, hr_size: tuple[int, int]) -> tuple[int, int]:
    """``(pad_bottom, pad_right)``: the rows and columns that bring a side smaller than
    ``gt_size`` up to ``gt_size`` (0 for a side at or above it).

    The rule of BasicSR's ``RealESRGANDataset.__getitem__``, basicsr/data/realesrgan_dataset.py
    lines 112-127 at commit 8d56e3a ("crop or pad to 400"): where ``h`` or ``w`` is below
    ``crop_pad_size`` it pads ``max(0, crop_pad_size - h)`` rows at the bottom and
    ``max(0, crop_pad_size - w)`` columns at the right with ``cv2.BORDER_REFLECT_101`` (lines
    117-120), then crops ``crop_pad_size`` at a uniformly random corner of what is larger (lines
    122-127). BasicSR degrades that 400 px patch and crops ``gt_size`` afterwards
    (``RealESRGANModel.feed_data``); our crop comes first, so our ``crop_pad_size`` is ``gt_size``.
    """
    return tuple(max(0, config.gt_size - int(side)) for side in hr_size)


def _sample_crop(rng: np.random.Generator, config: DegradationConfig, hr_size: tuple[int, int]) -> CropParams:
    pad_bottom, pad_right = crop_padding(config, hr_size)
    padded_height, padded_width = hr_size[0] + pad_bottom, hr_size[1] + pad_right
    side = config.gt_size
    if config.crop_mode == "center":
        top, left = (padded_height - side) // 2, (padded_width - side) // 2
    else:  # the draws of version 1, so crops of inputs at or above gt_size are unchanged
        top = int(rng.integers(0, padded_height - side + 1))
        left = int(rng.integers(0, padded_width - side + 1))
    return CropParams(top=top, left=left, height=side, width=side, pad_bottom=pad_bottom, pad_right=pad_right)


def _sample_resize(rng: np.random.Generator, prob: tuple[float, float, float],
                   scale_range: tuple[float, float]) -> ResizeParams:
    direction = ("up", "down", "keep")[rng.choice(3, p=np.asarray(prob) / np.sum(prob))]
    if direction == "up":
        scale = float(rng.uniform(1.0, scale_range[1]))
    elif direction == "down":
        scale = float(rng.uniform(scale_range[0], 1.0))
    else:
        scale = 1.0
    return ResizeParams(direction=direction, scale=scale, mode=_sample_mode(rng))


def _sample_mode(rng: np.random.Generator) -> str:
    return RESIZE_MODES[rng.integers(len(RESIZE_MODES))]


def _sample_noise(rng: np.random.Generator, gaussian_prob: float, sigma_range: tuple[float, float],
                  poisson_range: tuple[float, float], gray_prob: float) -> NoiseParams:
    if rng.uniform() < gaussian_prob:
        kind, strength = "gaussian", {"sigma": float(rng.uniform(*sigma_range))}
    else:
        kind, strength = "poisson", {"poisson_scale": float(rng.uniform(*poisson_range))}
    gray = bool(rng.uniform() < gray_prob)
    return NoiseParams(kind=kind, gray=gray, seed=int(rng.integers(_NOISE_SEED_BOUND)), **strength)


def _sample_quality(rng: np.random.Generator, quality_range: tuple[int, int]) -> int:
    return int(rng.integers(quality_range[0], quality_range[1] + 1))


def sample_params(config: DegradationConfig, rng_seed: int, hr_size: tuple[int, int]) -> DegradationParams:
    """Draw one degradation for an HR image of ``hr_size = (height, width)``.

    All randomness comes from ``numpy.random.Generator(PCG64(rng_seed))``, so the same
    ``(config, rng_seed, hr_size)`` always gives the same record. The record holds the
    crop box, both stages' kernels, resizes, noises (with the seeds of their noise
    fields) and JPEG qualities, and the order, resize mode, sinc and JPEG quality of
    the final step; see :class:`DegradationParams` for the fields.

    An HR smaller than ``gt_size`` on a side gets a padded crop (:func:`crop_padding`).

    Raises ``ValueError`` for a negative seed or an empty HR size.
    """
    if rng_seed < 0:
        raise ValueError(f"rng_seed must be >= 0, got {rng_seed}")
    if min(hr_size) < 1:
        raise ValueError(f"HR image {hr_size[0]}x{hr_size[1]} has no pixels")
    rng = np.random.Generator(np.random.PCG64(rng_seed))
    sizes, pad = config.kernel_sizes, config.blur_kernel_size
    crop = _sample_crop(rng, config, hr_size)

    stage1 = StageParams(
        blur=sample_kernel(rng, sizes, pad, config.kernel_list, config.kernel_prob, config.sinc_prob,
                           config.blur_sigma, config.betag_range, config.betap_range),
        resize=_sample_resize(rng, config.resize_prob, config.resize_range),
        noise=_sample_noise(rng, config.gaussian_noise_prob, config.noise_range, config.poisson_scale_range,
                            config.gray_noise_prob),
        jpeg_quality=_sample_quality(rng, config.jpeg_range),
    )

    blur2 = None
    if rng.uniform() < config.second_blur_prob:
        blur2 = sample_kernel(rng, sizes, pad, config.kernel_list2, config.kernel_prob2, config.sinc_prob2,
                              config.blur_sigma2, config.betag_range2, config.betap_range2)
    stage2 = StageParams(
        blur=blur2,
        resize=_sample_resize(rng, config.resize_prob2, config.resize_range2),
        noise=_sample_noise(rng, config.gaussian_noise_prob2, config.noise_range2, config.poisson_scale_range2,
                            config.gray_noise_prob2),
        jpeg_quality=None,
    )

    final = FinalParams(
        order=_FINAL_ORDERS[0] if rng.uniform() < 0.5 else _FINAL_ORDERS[1],
        resize_mode=_sample_mode(rng),
        sinc=sample_final_sinc(rng, sizes, pad, config.final_sinc_prob),
        jpeg_quality=_sample_quality(rng, config.jpeg_range2),
    )
    return DegradationParams(
        version=RECORD_VERSION, seed=int(rng_seed), scale=config.scale, hr_height=int(hr_size[0]),
        hr_width=int(hr_size[1]), crop=crop, gt_usm=config.gt_usm, stage1=stage1, stage2=stage2, final=final,
    )
