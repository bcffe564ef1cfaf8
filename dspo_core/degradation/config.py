"""Options of the Real-ESRGAN second-order degradation.

The option names and defaults are those of Real-ESRGAN's ``realesrgan_x4plus.yml``
(read by ``RealESRGANDataset`` and ``RealESRGANModel``); ``gt_size`` defaults to
512 as used by SD-based super-resolution. The ``2``-suffixed options belong to the
second degradation stage. ``gt_usm`` (on) is RealESRGANModel's unconditional sharpening of
the GT before degradation, under the name RealESRNet's options give it.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
KernelType = Literal["iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso"]

_DEFAULT_KERNEL_PROB = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
_PROB_TOLERANCE = 1e-6


def _check_range(name: str, value: tuple[float, float], low: float | None = None, high: float | None = None) -> None:
    lo, hi = value
    if lo > hi:
        raise ValueError(f"{name}: lower bound {lo} is greater than upper bound {hi}")
    if low is not None and lo < low:
        raise ValueError(f"{name}: lower bound {lo} is below the minimum {low}")
    if high is not None and hi > high:
        raise ValueError(f"{name}: upper bound {hi} is above the maximum {high}")


def _check_probabilities(name: str, probs: tuple[float, ...], expected_len: int) -> None:
    if len(probs) != expected_len:
        raise ValueError(f"{name}: expected {expected_len} probabilities, got {len(probs)}")
    if any(p < 0 or p > 1 for p in probs):
        raise ValueError(f"{name}: every probability must lie in [0, 1], got {list(probs)}")
    if abs(sum(probs) - 1.0) > _PROB_TOLERANCE:
        raise ValueError(f"{name}: probabilities must sum to 1, got {list(probs)} (sum {sum(probs):.6g})")


class DegradationConfig(BaseModel):
    """Frozen, validated options of the Real-ESRGAN second-order degradation.

    Ranges are ``(low, high)`` pairs sampled uniformly. Unknown option names are
    rejected, so a misspelt Real-ESRGAN option fails loudly instead of silently
    falling back to its default.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    scale: int = Field(4, ge=1, description="Super-resolution factor: the LQ is the HR crop divided by this.")
    gt_size: int = Field(
        512, ge=1,
        description="Side of the square HR crop; a multiple of `scale`, at least `min_crop_size`. An image smaller "
        "than this on a side is padded there (bottom or right, cv2.BORDER_REFLECT_101) up to it, as BasicSR's "
        "RealESRGANDataset pads to its crop size, so every crop of every image is gt_size x gt_size.",
    )
    crop_mode: Literal["random", "center"] = Field(
        "random", description="Where the HR crop is taken: uniformly at random or in the centre."
    )
    gt_usm: bool = Field(
        True,
        description="Sharpen the HR crop with Real-ESRGAN's USMSharp (Gaussian blur 51 x 51, sigma 8; weight 0.5; "
        "threshold 10 on the 0-255 scale) and degrade the sharpened crop, as RealESRGANModel does (it always "
        "degrades `gt_usm`; RealESRNet's option of this name). The unsharpened crop stays the HR (the evaluation "
        "target); the sharpened one, Real-ESRGAN's L1 and perceptual target, is stored beside it (lq_pairs' "
        "`hr_usm`). Replaces the former `use_usm`.",
    )

    blur_kernel_size: int = Field(
        21, ge=1, description="Odd size every blur and sinc kernel is zero-padded to (Real-ESRGAN pads to 21)."
    )
    kernel_range: tuple[int, int] = Field(
        (7, 21), description="Odd kernel sizes (low, high); each kernel draws its size uniformly among the odd sizes."
    )
    kernel_list: tuple[KernelType, ...] = Field(KERNEL_TYPES, description="Stage-1 blur kernel families.")
    kernel_prob: tuple[float, ...] = Field(
        _DEFAULT_KERNEL_PROB, description="Stage-1 probability of each family in `kernel_list`; sums to 1."
    )
    sinc_prob: float = Field(0.1, ge=0, le=1, description="Stage-1 probability of a sinc kernel instead of a blur.")
    blur_sigma: tuple[float, float] = Field((0.2, 3.0), description="Stage-1 blur sigma range, in pixels.")
    betag_range: tuple[float, float] = Field(
        (0.5, 4.0), description="Stage-1 generalized-Gaussian shape range; must contain 1."
    )
    betap_range: tuple[float, float] = Field((1.0, 2.0), description="Stage-1 plateau shape range; must contain 1.")

    kernel_list2: tuple[KernelType, ...] = Field(KERNEL_TYPES, description="Stage-2 blur kernel families.")
    kernel_prob2: tuple[float, ...] = Field(
        _DEFAULT_KERNEL_PROB, description="Stage-2 probability of each family in `kernel_list2`; sums to 1."
    )
    sinc_prob2: float = Field(0.1, ge=0, le=1, description="Stage-2 probability of a sinc kernel instead of a blur.")
    blur_sigma2: tuple[float, float] = Field((0.2, 1.5), description="Stage-2 blur sigma range, in pixels.")
    betag_range2: tuple[float, float] = Field(
        (0.5, 4.0), description="Stage-2 generalized-Gaussian shape range; must contain 1."
    )
    betap_range2: tuple[float, float] = Field((1.0, 2.0), description="Stage-2 plateau shape range; must contain 1.")
    second_blur_prob: float = Field(0.8, ge=0, le=1, description="Probability that stage 2 blurs at all.")

    final_sinc_prob: float = Field(
        0.8, ge=0, le=1, description="Probability of the final sinc filter applied with the resize to the LQ size."
    )

    resize_prob: tuple[float, float, float] = Field(
        (0.2, 0.7, 0.1), description="Stage-1 probabilities of resizing up, down, or keeping the size."
    )
    resize_range: tuple[float, float] = Field(
        (0.15, 1.5), description="Stage-1 resize factors: down draws from [low, 1], up from [1, high]."
    )
    gaussian_noise_prob: float = Field(
        0.5, ge=0, le=1, description="Stage-1 probability of Gaussian noise; Poisson noise otherwise."
    )
    noise_range: tuple[float, float] = Field(
        (1.0, 30.0), description="Stage-1 Gaussian sigma range, on the 0-255 scale."
    )
    poisson_scale_range: tuple[float, float] = Field((0.05, 3.0), description="Stage-1 Poisson noise scale range.")
    gray_noise_prob: float = Field(
        0.4, ge=0, le=1, description="Stage-1 probability that the noise is gray (shared by the three channels)."
    )
    jpeg_range: tuple[int, int] = Field((30, 95), description="Stage-1 JPEG quality range (integers, inclusive).")

    resize_prob2: tuple[float, float, float] = Field(
        (0.3, 0.4, 0.3), description="Stage-2 probabilities of resizing up, down, or keeping the size."
    )
    resize_range2: tuple[float, float] = Field(
        (0.3, 1.2), description="Stage-2 resize factors relative to the LQ size: down [low, 1], up [1, high]."
    )
    gaussian_noise_prob2: float = Field(
        0.5, ge=0, le=1, description="Stage-2 probability of Gaussian noise; Poisson noise otherwise."
    )
    noise_range2: tuple[float, float] = Field(
        (1.0, 25.0), description="Stage-2 Gaussian sigma range, on the 0-255 scale."
    )
    poisson_scale_range2: tuple[float, float] = Field((0.05, 2.5), description="Stage-2 Poisson noise scale range.")
    gray_noise_prob2: float = Field(
        0.4, ge=0, le=1, description="Stage-2 probability that the noise is gray (shared by the three channels)."
    )
    jpeg_range2: tuple[int, int] = Field((30, 95), description="Final JPEG quality range (integers, inclusive).")

    @model_validator(mode="before")
    @classmethod
    def _renamed_options(cls, data: object) -> object:
        if isinstance(data, dict) and "use_usm" in data:
            raise ValueError("use_usm was renamed gt_usm, Real-ESRGAN's name (the sharpened crop is now degraded and "
                             "stored as hr_usm, the unsharpened one stays in hr): replace use_usm with gt_usm")
        return data

    @field_validator("blur_kernel_size")
    @classmethod
    def _odd_kernel_size(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"blur_kernel_size must be odd, got {value}")
        return value

    @field_validator("kernel_range")
    @classmethod
    def _odd_kernel_range(cls, value: tuple[int, int]) -> tuple[int, int]:
        _check_range("kernel_range", value, low=1)
        if value[0] % 2 == 0 or value[1] % 2 == 0:
            raise ValueError(f"kernel_range bounds must be odd kernel sizes, got {list(value)}")
        return value

    @field_validator("blur_sigma", "blur_sigma2", "noise_range", "noise_range2", "poisson_scale_range",
                     "poisson_scale_range2")
    @classmethod
    def _non_negative_range(cls, value: tuple[float, float], info: ValidationInfo) -> tuple[float, float]:
        _check_range(info.field_name, value, low=0)
        if info.field_name.startswith("blur_sigma") and value[0] <= 0:
            raise ValueError(f"{info.field_name}: sigma must be positive, got {list(value)}")
        return value

    @field_validator("betag_range", "betap_range", "betag_range2", "betap_range2", "resize_range", "resize_range2")
    @classmethod
    def _range_around_one(cls, value: tuple[float, float], info: ValidationInfo) -> tuple[float, float]:
        _check_range(info.field_name, value)
        if value[0] <= 0 or not value[0] <= 1 <= value[1]:
            raise ValueError(
                f"{info.field_name} must satisfy 0 < low <= 1 <= high (Real-ESRGAN draws from [low, 1] or "
                f"[1, high]), got {list(value)}"
            )
        return value

    @field_validator("jpeg_range", "jpeg_range2")
    @classmethod
    def _jpeg_quality(cls, value: tuple[int, int], info: ValidationInfo) -> tuple[int, int]:
        _check_range(info.field_name, value, low=1, high=100)
        return value

    @field_validator("resize_prob", "resize_prob2")
    @classmethod
    def _resize_probabilities(cls, value: tuple[float, ...], info: ValidationInfo) -> tuple[float, ...]:
        _check_probabilities(info.field_name, value, 3)
        return value

    @model_validator(mode="after")
    def _cross_field_checks(self) -> DegradationConfig:
        if self.gt_size % self.scale != 0:
            raise ValueError(f"gt_size {self.gt_size} must be a multiple of scale {self.scale}")
        if self.gt_size < self.min_crop_size:
            raise ValueError(
                f"gt_size {self.gt_size} is too small: some intermediate image of the degradation would have no "
                f"pixels; use at least {self.min_crop_size} (scale {self.scale}, resize_range "
                f"{list(self.resize_range)}, resize_range2 {list(self.resize_range2)})"
            )
        if self.kernel_range[1] > self.blur_kernel_size:
            raise ValueError(
                f"kernel_range upper bound {self.kernel_range[1]} exceeds blur_kernel_size {self.blur_kernel_size}"
            )
        for list_name, prob_name in (("kernel_list", "kernel_prob"), ("kernel_list2", "kernel_prob2")):
            kinds, probs = getattr(self, list_name), getattr(self, prob_name)
            if not kinds:
                raise ValueError(f"{list_name} must name at least one kernel family")
            if len(set(kinds)) != len(kinds):
                raise ValueError(f"{list_name} has duplicate entries: {list(kinds)}")
            _check_probabilities(f"{prob_name} (for {list_name})", probs, len(kinds))
        return self

    @property
    def kernel_sizes(self) -> tuple[int, ...]:
        """The odd kernel sizes a kernel draws from, e.g. ``(7, 9, ..., 21)``."""
        return tuple(range(self.kernel_range[0], self.kernel_range[1] + 1, 2))

    @property
    def min_crop_size(self) -> int:
        """Smallest `gt_size` (a multiple of `scale`) whose every intermediate image has at least 1 pixel."""
        side = self.scale
        while math.floor(side * self.resize_range[0]) < 1 or int(side / self.scale * self.resize_range2[0]) < 1:
            side += self.scale
        return side
