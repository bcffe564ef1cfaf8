"""Blur and sinc kernels of the Real-ESRGAN degradation (BasicSR's ``degradations.py``).

The kernel functions return odd-sized ``(k, k)`` float64 arrays that sum to 1,
centred on ``k // 2``; :func:`build_kernel` zero-pads and casts them to float32.
Coordinates follow BasicSR's ``mesh_grid``: ``x`` runs along columns, ``y`` along
rows, and ``theta`` (radians) rotates the principal axes from the ``x`` axis
towards the ``y`` axis.

Families (with ``r = (x, y)`` and ``S`` the rotated covariance of
:func:`sigma_matrix`):

- ``iso`` / ``aniso``: ``exp(-0.5 * r^T S^-1 r)``
- ``generalized_iso`` / ``generalized_aniso``: ``exp(-0.5 * (r^T S^-1 r) ** beta)``
- ``plateau_iso`` / ``plateau_aniso``: ``1 / (1 + (r^T S^-1 r) ** beta)``
- ``sinc``: the circular low-pass ``omega_c * J1(omega_c * |r|) / (2 pi |r|)``
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

from .params import KernelParams

_ISOTROPIC = ("iso", "generalized_iso", "plateau_iso")


def mesh_grid(kernel_size: int) -> np.ndarray:
    """Return the ``(k, k, 2)`` grid of ``(x, y)`` offsets from the kernel centre."""
    ax = np.arange(-kernel_size // 2 + 1.0, kernel_size // 2 + 1.0)
    xx, yy = np.meshgrid(ax, ax)
    return np.stack([xx, yy], axis=-1)


def sigma_matrix(sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """Covariance ``U diag(sigma_x^2, sigma_y^2) U^T`` with ``U`` the rotation by ``theta``."""
    d = np.diag([sigma_x**2, sigma_y**2])
    u = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    return u @ d @ u.T


def _mahalanobis_sq(kernel_size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    grid = mesh_grid(kernel_size)
    inverse = np.linalg.inv(sigma_matrix(sigma_x, sigma_y, theta))
    return np.sum((grid @ inverse) * grid, axis=-1)


def gaussian_kernel(kernel_size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """Bivariate Gaussian (``iso`` when ``sigma_x == sigma_y``), normalised to sum 1."""
    kernel = np.exp(-0.5 * _mahalanobis_sq(kernel_size, sigma_x, sigma_y, theta))
    return kernel / kernel.sum()


def generalized_gaussian_kernel(
    kernel_size: int, sigma_x: float, sigma_y: float, theta: float, beta: float
) -> np.ndarray:
    """Bivariate generalized Gaussian ``exp(-0.5 * q ** beta)``; ``beta = 1`` is the Gaussian."""
    kernel = np.exp(-0.5 * np.power(_mahalanobis_sq(kernel_size, sigma_x, sigma_y, theta), beta))
    return kernel / kernel.sum()


def plateau_kernel(kernel_size: int, sigma_x: float, sigma_y: float, theta: float, beta: float) -> np.ndarray:
    """Bivariate plateau-shaped kernel ``1 / (1 + q ** beta)``."""
    kernel = np.reciprocal(np.power(_mahalanobis_sq(kernel_size, sigma_x, sigma_y, theta), beta) + 1)
    return kernel / kernel.sum()


def circular_lowpass_kernel(omega_c: float, kernel_size: int) -> np.ndarray:
    """2D sinc (circularly symmetric ideal low-pass) with cutoff ``omega_c`` in radians (``pi`` is Nyquist).

    ``k(r) = omega_c * J1(omega_c * r) / (2 * pi * r)``, with its limit ``omega_c^2 / (4 pi)`` at ``r = 0``.
    """
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    r = np.linalg.norm(mesh_grid(kernel_size), axis=-1)
    bessel = special.j1(omega_c * r)
    centre = kernel_size // 2
    r[centre, centre] = 1.0
    kernel = omega_c * bessel / (2 * np.pi * r)
    kernel[centre, centre] = omega_c**2 / (4 * np.pi)
    return kernel / kernel.sum()


def build_kernel(params: KernelParams) -> np.ndarray:
    """Build the kernel a :class:`KernelParams` record describes, zero-padded to ``params.padded_size``.

    Returns a ``(padded_size, padded_size)`` float32 array summing to 1 (up to float32 rounding).
    """
    size = params.size
    if params.kind == "sinc":
        kernel = circular_lowpass_kernel(params.omega_c, size)
    elif params.kind in ("iso", "aniso"):
        kernel = gaussian_kernel(size, params.sigma_x, params.sigma_y, params.theta)
    elif params.kind in ("generalized_iso", "generalized_aniso"):
        kernel = generalized_gaussian_kernel(size, params.sigma_x, params.sigma_y, params.theta, params.beta)
    elif params.kind in ("plateau_iso", "plateau_aniso"):
        kernel = plateau_kernel(size, params.sigma_x, params.sigma_y, params.theta, params.beta)
    else:
        raise ValueError(f"unknown kernel kind {params.kind!r}")
    pad = (params.padded_size - size) // 2
    return np.pad(kernel, pad).astype(np.float32)


def sample_kernel(
    rng: np.random.Generator,
    kernel_sizes: tuple[int, ...],
    padded_size: int,
    kernel_list: tuple[str, ...],
    kernel_prob: tuple[float, ...],
    sinc_prob: float,
    sigma_range: tuple[float, float],
    betag_range: tuple[float, float],
    betap_range: tuple[float, float],
) -> KernelParams:
    """Draw one blur kernel the way ``RealESRGANDataset`` does, returning its parameters.

    The size is uniform over ``kernel_sizes``. With probability ``sinc_prob`` the kernel
    is a sinc with ``omega_c`` uniform in ``[pi/3, pi]`` (``[pi/5, pi]`` for sizes >= 13);
    otherwise the family is drawn from ``kernel_list`` with ``kernel_prob``, the sigmas
    uniformly from ``sigma_range`` (``sigma_y = sigma_x`` and ``theta = 0`` for isotropic
    families, ``theta`` uniform in ``[-pi, pi]`` otherwise) and ``beta`` with p 0.5 from
    ``[low, 1]``, else from ``[1, high]`` of its family's range.
    """
    size = int(rng.choice(kernel_sizes))
    if rng.uniform() < sinc_prob:
        omega_low = np.pi / 3 if size < 13 else np.pi / 5
        return KernelParams(kind="sinc", size=size, padded_size=padded_size,
                            omega_c=float(rng.uniform(omega_low, np.pi)))
    kind = str(kernel_list[rng.choice(len(kernel_list), p=np.asarray(kernel_prob) / np.sum(kernel_prob))])
    sigma_x = float(rng.uniform(*sigma_range))
    if kind in _ISOTROPIC:
        sigma_y, theta = sigma_x, 0.0
    else:
        sigma_y = float(rng.uniform(*sigma_range))
        theta = float(rng.uniform(-np.pi, np.pi))
    beta = None
    if kind.startswith(("generalized", "plateau")):
        low, high = betag_range if kind.startswith("generalized") else betap_range
        beta = float(rng.uniform(low, 1.0) if rng.uniform() < 0.5 else rng.uniform(1.0, high))
    return KernelParams(kind=kind, size=size, padded_size=padded_size, sigma_x=sigma_x, sigma_y=sigma_y,
                        theta=theta, beta=beta)


def sample_final_sinc(
    rng: np.random.Generator, kernel_sizes: tuple[int, ...], padded_size: int, final_sinc_prob: float
) -> KernelParams | None:
    """Draw the final sinc filter (``omega_c`` uniform in ``[pi/3, pi]``), or ``None`` for no filter."""
    if rng.uniform() >= final_sinc_prob:
        return None
    size = int(rng.choice(kernel_sizes))
    return KernelParams(kind="sinc", size=size, padded_size=padded_size,
                        omega_c=float(rng.uniform(np.pi / 3, np.pi)))
