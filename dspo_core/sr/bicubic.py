"""Bicubic x4 upscaling (Pillow): the baseline every SR candidate should beat.

Also the first step of the one-step diffusion backbones, which encode the bicubic
upscaled LQ into the latent space.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from .base import CandidateSettings, SRBackbone
from .config import SUPPORTED_SETTINGS, BicubicConfig


def bicubic_upscale(image: np.ndarray, scale: int) -> np.ndarray:
    """``(H, W, 3)`` uint8 -> ``(scale*H, scale*W, 3)`` uint8 with Pillow's bicubic filter."""
    height, width = image.shape[:2]
    return np.asarray(Image.fromarray(image).resize((width * scale, height * scale), Image.Resampling.BICUBIC))


class BicubicBackbone(SRBackbone):
    """Pillow bicubic x4. Deterministic and weight-free: no setting besides the (ignored) seed.

    Args:
        config: a ``BicubicConfig`` (empty).
    """

    name = "bicubic"
    Config = BicubicConfig
    supported_settings = SUPPORTED_SETTINGS[name]

    def __init__(self, config: BicubicConfig | None = None):
        super().__init__(config or BicubicConfig())

    @property
    def weights_id(self) -> str:
        return "builtin:pil-bicubic-x4"

    def setting_defaults(self) -> dict[str, Any]:
        return {}

    def _sample(self, lq: list[np.ndarray], settings: list[CandidateSettings]) -> list[np.ndarray]:
        return [bicubic_upscale(image, self.scale) for image in lq]
