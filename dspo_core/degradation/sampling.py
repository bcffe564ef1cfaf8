"""Draw every random value of one degradation into a :class:`DegradationParams` record."""

from __future__ import annotations

import numpy as np

from .config import DegradationConfig
from .kernels import sample_final_sinc, sample_kernel
from .ops import RESIZE_MODES
from .params import RECORD_VERSION, CropParams, DegradationParams, FinalParams, NoiseParams, ResizeParams, StageParams

_NOISE_SEED_BOUND = 2**63
_FINAL_ORDERS = ("resize_sinc_then_jpeg", "jpeg_then_resize_sinc")


def crop_size(config: DegradationConfig, hr_size: tuple[int, int]) -> tuple[int, int]:
    """``(height, width)`` of the HR crop: ``gt_size``, or the largest multiple of ``scale`` that fits.

    Raises ``ValueError`` when the crop would be smaller than ``config.min_crop_size``
    (some intermediate image of the degradation would have no pixels).
    """
    height, width = int(hr_size[0]), int(hr_size[1])
    size = tuple(min(config.gt_size, side // config.scale * config.scale) for side in (height, width))
    if min(size) < config.min_crop_size:
        raise ValueError(
            f"HR image {height}x{width} is too small: its crop would be {size[0]}x{size[1]}, but this config "
            f"needs at least {config.min_crop_size}x{config.min_crop_size} (scale {config.scale}, "
            f"resize_range {list(config.resize_range)}, resize_range2 {list(config.resize_range2)})"
        )
    return size


def _sample_crop(rng: np.random.Generator, config: DegradationConfig, hr_size: tuple[int, int]) -> CropParams:
    height, width = crop_size(config, hr_size)
    if config.crop_mode == "center":
        top, left = (hr_size[0] - height) // 2, (hr_size[1] - width) // 2
    else:
        top = int(rng.integers(0, hr_size[0] - height + 1))
        left = int(rng.integers(0, hr_size[1] - width + 1))
    return CropParams(top=top, left=left, height=height, width=width,
                      reduced=(height, width) != (config.gt_size, config.gt_size))


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

    Raises ``ValueError`` for a negative seed or an HR too small for the config.
    """
    if rng_seed < 0:
        raise ValueError(f"rng_seed must be >= 0, got {rng_seed}")
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
        hr_width=int(hr_size[1]), crop=crop, use_usm=config.use_usm, stage1=stage1, stage2=stage2, final=final,
    )
