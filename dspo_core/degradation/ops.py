"""Deterministic image operations of the degradation, on ``(1, 3, H, W)`` float32 RGB tensors in [0, 1].

Each follows its BasicSR / Real-ESRGAN counterpart (``filter2D``, ``F.interpolate``,
``*_noise_pt``, ``USMSharp``). Two differences, both needed for replay: noise is
drawn from ``numpy.random.Generator(PCG64(seed))`` instead of the global torch RNG,
and JPEG goes through Pillow at an integer quality instead of ``DiffJPEG``.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

RESIZE_MODES = ("area", "bilinear", "bicubic")

_USM_RADIUS = 51
_USM_WEIGHT = 0.5
_USM_THRESHOLD = 10


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 RGB array -> ``(1, 3, H, W)`` float32 tensor in [0, 1]."""
    return torch.from_numpy(image.transpose(2, 0, 1).copy()).unsqueeze(0).float() / 255.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """``(1, 3, H, W)`` float tensor -> ``(H, W, 3)`` uint8 array, clamped and rounded like Real-ESRGAN.

    Real-ESRGAN ends with ``torch.clamp((out * 255.0).round(), 0, 255) / 255.``; this returns the
    integers of that expression.
    """
    return torch.clamp((x * 255.0).round(), 0, 255)[0].permute(1, 2, 0).to(torch.uint8).numpy()


def reflect_101_indices(length: int, before: int, after: int) -> np.ndarray:
    """Source indices of a side of ``length`` padded by ``before`` and ``after``: reflection without
    repeating the edge (OpenCV ``BORDER_REFLECT_101``, torch and numpy ``reflect``: ``dcb|abcd|cba``),
    folded again as often as needed so pads wider than the side work too (a side of 1 repeats)."""
    index = np.arange(-before, length + after)
    if length == 1:
        return np.zeros(index.size, dtype=np.int64)
    period = 2 * (length - 1)
    index = np.abs(index) % period
    return np.where(index >= length, period - index, index)


def pad_reflect_101(image: np.ndarray, bottom: int, right: int) -> np.ndarray:
    """``(H, W, C)`` array -> ``(H + bottom, W + right, C)``, padded at the bottom and right like
    ``cv2.copyMakeBorder(image, 0, bottom, 0, right, cv2.BORDER_REFLECT_101)``."""
    rows = reflect_101_indices(image.shape[0], 0, bottom)
    columns = reflect_101_indices(image.shape[1], 0, right)
    return np.ascontiguousarray(image[rows][:, columns])


def filter2d(x: torch.Tensor, kernel: np.ndarray) -> torch.Tensor:
    """Correlate each channel with an odd-sized ``(kh, kw)`` kernel after reflect padding (BasicSR ``filter2D``)."""
    kh, kw = kernel.shape
    _, c, h, w = x.shape
    rows = torch.from_numpy(reflect_101_indices(h, kh // 2, kh // 2))
    columns = torch.from_numpy(reflect_101_indices(w, kw // 2, kw // 2))
    padded = x[:, :, rows][:, :, :, columns]
    weight = torch.from_numpy(np.ascontiguousarray(kernel, dtype=np.float32)).view(1, 1, kh, kw).repeat(c, 1, 1, 1)
    return F.conv2d(padded, weight, groups=c)


def resize(
    x: torch.Tensor, mode: str, size: tuple[int, int] | None = None, scale_factor: float | None = None
) -> torch.Tensor:
    """``F.interpolate`` to ``size`` or by ``scale_factor``, without antialiasing, as Real-ESRGAN calls it."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    align = None if mode == "area" else False
    return F.interpolate(x, size=size, scale_factor=scale_factor, mode=mode, align_corners=align)


def _rgb_to_gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(dim=1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def add_gaussian_noise(x: torch.Tensor, sigma: float, gray: bool, seed: int) -> torch.Tensor:
    """Add Gaussian noise of std ``sigma / 255`` (gray: one field for all channels), then clip to [0, 1]."""
    _, c, h, w = x.shape
    rng = np.random.Generator(np.random.PCG64(seed))
    field = rng.standard_normal((1, 1, h, w) if gray else (1, c, h, w), dtype=np.float32)
    noise = torch.from_numpy(field) * sigma / 255.0
    return torch.clamp(x + noise, 0, 1)


def _poisson_noise(img: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    # Round to 8 bits to count the distinct values, as BasicSR's generate_poisson_noise_pt.
    img = torch.clamp((img * 255.0).round(), 0, 255) / 255.0
    vals = 2 ** math.ceil(math.log2(len(torch.unique(img))))
    counts = rng.poisson((img * vals).numpy().astype(np.float64))
    return torch.from_numpy(counts.astype(np.float32)) / vals - img


def add_poisson_noise(x: torch.Tensor, scale: float, gray: bool, seed: int) -> torch.Tensor:
    """Add Poisson (shot) noise times ``scale``, from the gray image when ``gray``, then clip to [0, 1]."""
    rng = np.random.Generator(np.random.PCG64(seed))
    noise = _poisson_noise(_rgb_to_gray(x), rng).expand_as(x) if gray else _poisson_noise(x, rng)
    return torch.clamp(x + noise * scale, 0, 1)


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG round trip at ``quality`` (Pillow/libjpeg, 4:2:0 chroma subsampling) of the clamped image."""
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(x)).save(buffer, format="JPEG", quality=int(quality), subsampling=2, optimize=False)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return to_tensor(np.asarray(decoded.convert("RGB")))


def _usm_blur(x: torch.Tensor) -> torch.Tensor:
    # cv2.getGaussianKernel(51, 0) (sigma = 0.3 * ((51 - 1) * 0.5 - 1) + 0.8 = 8) applied separably:
    # the same filter as USMSharp's 51 x 51 outer product, 25x cheaper.
    sigma = 0.3 * ((_USM_RADIUS - 1) * 0.5 - 1) + 0.8
    ax = np.arange(_USM_RADIUS) - (_USM_RADIUS - 1) / 2
    g = np.exp(-(ax**2) / (2 * sigma**2))
    g = g / g.sum()
    return filter2d(filter2d(x, g[:, None]), g[None, :])


def usm_sharpen(x: torch.Tensor) -> torch.Tensor:
    """Real-ESRGAN's ``USMSharp`` (radius 50, weight 0.5, threshold 10): sharpen where the detail is strong.

    With G the 51 x 51 Gaussian (sigma 8) after reflect padding: residual r = x - G * x;
    mask = |r| * 255 > 10; soft = G * mask; out = soft * clip(x + 0.5 r, 0, 1) + (1 - soft) * x.
    """
    residual = x - _usm_blur(x)
    mask = (torch.abs(residual) * 255 > _USM_THRESHOLD).float()
    soft_mask = _usm_blur(mask)
    sharp = torch.clip(x + _USM_WEIGHT * residual, 0, 1)
    return soft_mask * sharp + (1 - soft_mask) * x


def usm_sharp(image: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB -> the same image through :func:`usm_sharpen`, rounded back to uint8.

    This is the sharpened GT (``gt_usm``) to 8 bits; the degradation itself runs on the float
    result, as RealESRGANModel does."""
    with torch.no_grad():
        return to_uint8(usm_sharpen(to_tensor(image)))
