"""The record of one sampled degradation: every random value, JSON-serialisable.

A :class:`DegradationParams` is what a dataset row stores; together with the HR
image it regenerates the LQ bit-for-bit (see :func:`~.pipeline.replay`). Per-pixel
noise is not stored: each noise step records the seed of the
``numpy.random.Generator(PCG64(seed))`` that draws it, so the record stays small.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal

RECORD_VERSION = 3
"""Version 3 names the sharpening ``gt_usm`` (Real-ESRGAN's name; versions 1-2 wrote ``use_usm``,
and their ``hr`` was the sharpened crop when it was true). Version 2 records every crop at
``gt_size`` (padded where the image is smaller); version 1 shrank the crop instead. Both are
still read (:meth:`DegradationParams.from_dict`)."""

NoiseKind = Literal["gaussian", "poisson"]
ResizeMode = Literal["area", "bilinear", "bicubic"]
FinalOrder = Literal["resize_sinc_then_jpeg", "jpeg_then_resize_sinc"]


def _build(cls, data: dict[str, Any], **nested: Any):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}")
    return cls(**{**data, **nested})


@dataclass(frozen=True)
class KernelParams:
    """One blur or sinc kernel.

    Attributes:
        kind: ``iso``, ``aniso``, ``generalized_iso``, ``generalized_aniso``, ``plateau_iso``,
            ``plateau_aniso`` or ``sinc``.
        size: odd support of the kernel, in pixels.
        padded_size: odd size the kernel is zero-padded to before filtering.
        sigma_x: standard deviation along the first principal axis (not for ``sinc``).
        sigma_y: along the second axis; equals ``sigma_x`` for isotropic families.
        theta: rotation of the principal axes in radians; 0 for isotropic families.
        beta: shape of generalized and plateau kernels, else ``None``.
        omega_c: cutoff of a ``sinc`` kernel in radians, else ``None``.
    """

    kind: str
    size: int
    padded_size: int
    sigma_x: float | None = None
    sigma_y: float | None = None
    theta: float | None = None
    beta: float | None = None
    omega_c: float | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KernelParams:
        return _build(cls, data)


@dataclass(frozen=True)
class ResizeParams:
    """One random resize.

    Attributes:
        direction: ``up``, ``down`` or ``keep``.
        scale: factor drawn for the direction (1.0 for ``keep``). Stage 1 applies it to the
            current image; stage 2 applies it to the LQ size (``crop / config.scale``).
        mode: ``area``, ``bilinear`` or ``bicubic`` (``torch.nn.functional.interpolate``).
    """

    direction: Literal["up", "down", "keep"]
    scale: float
    mode: ResizeMode

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResizeParams:
        return _build(cls, data)


@dataclass(frozen=True)
class NoiseParams:
    """One additive noise step.

    Attributes:
        kind: ``gaussian`` or ``poisson``.
        gray: one noise field shared by the three channels when true.
        sigma: Gaussian standard deviation on the 0-255 scale (``gaussian`` only).
        poisson_scale: multiplier of the Poisson noise (``poisson`` only).
        seed: seed of the ``numpy.random.Generator(PCG64(seed))`` drawing the noise field.
    """

    kind: NoiseKind
    gray: bool
    seed: int
    sigma: float | None = None
    poisson_scale: float | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NoiseParams:
        return _build(cls, data)


@dataclass(frozen=True)
class CropParams:
    """The HR crop: a box in the input image padded at its bottom and right.

    An input smaller than ``gt_size`` on a side is first padded on that side with
    ``cv2.BORDER_REFLECT_101`` (mirror without repeating the edge pixel: ``dcb|abcd|cba``)
    up to ``gt_size``, as BasicSR's ``RealESRGANDataset`` pads to its crop size; the crop
    then spans the padded side. The HR is never resampled.

    Attributes:
        top, left: corner of the crop in the padded image (0 on a padded side).
        height, width: size of the crop, both multiples of the scale factor: ``gt_size`` in
            every record sampled since version 2 (a version 1 record may hold a smaller box).
        pad_bottom, pad_right: rows added below and columns added right of the input; the last
            ``pad_bottom`` rows and ``pad_right`` columns of the crop are mirrored, not photographed.
    """

    top: int
    left: int
    height: int
    width: int
    pad_bottom: int
    pad_right: int

    @property
    def padded(self) -> bool:
        """Whether any row or column of the crop is padding."""
        return bool(self.pad_bottom or self.pad_right)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CropParams:
        return _build(cls, data)


@dataclass(frozen=True)
class StageParams:
    """One degradation stage: blur, resize, noise (and, in stage 1, JPEG).

    Attributes:
        blur: the kernel, or ``None`` when stage 2 skipped its blur (``second_blur_prob``).
        resize: the random resize.
        noise: the additive noise.
        jpeg_quality: JPEG quality of stage 1; ``None`` in stage 2, whose JPEG is part of
            :class:`FinalParams`.
    """

    blur: KernelParams | None
    resize: ResizeParams
    noise: NoiseParams
    jpeg_quality: int | None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageParams:
        blur = None if data.get("blur") is None else KernelParams.from_dict(data["blur"])
        return _build(cls, data, blur=blur, resize=ResizeParams.from_dict(data["resize"]),
                      noise=NoiseParams.from_dict(data["noise"]))


@dataclass(frozen=True)
class FinalParams:
    """The last step: resize to the LQ size with the final sinc filter, and JPEG, in either order.

    Attributes:
        order: ``resize_sinc_then_jpeg`` or ``jpeg_then_resize_sinc`` (p 0.5 each).
        resize_mode: interpolation of the resize to ``crop / scale``.
        sinc: the final sinc kernel, or ``None`` when no filter is applied.
        jpeg_quality: JPEG quality.
    """

    order: FinalOrder
    resize_mode: ResizeMode
    sinc: KernelParams | None
    jpeg_quality: int

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinalParams:
        sinc = None if data.get("sinc") is None else KernelParams.from_dict(data["sinc"])
        return _build(cls, data, sinc=sinc)


@dataclass(frozen=True)
class DegradationParams:
    """Everything :func:`~.pipeline.apply` needs besides the HR image.

    Attributes:
        version: record format version (:data:`RECORD_VERSION`).
        seed: the ``rng_seed`` the record was sampled from.
        scale: super-resolution factor; the LQ is ``crop.height / scale x crop.width / scale``.
        hr_height, hr_width: size of the HR image the record was sampled for.
        crop: the HR crop.
        gt_usm: whether the HR crop is sharpened (Real-ESRGAN's USMSharp) before degrading.
        stage1, stage2: the two degradation stages.
        final: the final resize + sinc and JPEG.
    """

    version: int
    seed: int
    scale: int
    hr_height: int
    hr_width: int
    crop: CropParams
    gt_usm: bool
    stage1: StageParams
    stage2: StageParams
    final: FinalParams

    @property
    def lq_size(self) -> tuple[int, int]:
        """``(height, width)`` of the LQ image."""
        return self.crop.height // self.scale, self.crop.width // self.scale

    def to_dict(self) -> dict[str, Any]:
        """Nested dict of plain Python values (int, float, str, bool, None), ready for ``json.dumps``."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """Compact JSON of :meth:`to_dict`; floats round-trip exactly."""
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DegradationParams:
        """Inverse of :meth:`to_dict`; raises ``ValueError`` on unknown fields or an unknown version.
        A version 1 record (crops shrunk, never padded) or version 2 record (``use_usm``) is read as
        the equivalent version 3 record: the same LQ replays from it."""
        version = data.get("version")
        if version not in (1, 2, RECORD_VERSION):
            raise ValueError(f"unsupported degradation record version {version!r}, "
                             f"expected 1, 2 or {RECORD_VERSION}")
        crop = dict(data["crop"])
        if version in (1, 2):
            # The sharpening was called use_usm; it degraded the same sharpened crop.
            data = {**{key: value for key, value in data.items() if key != "use_usm"},
                    "gt_usm": bool(data.get("use_usm", False)), "version": RECORD_VERSION}
        if version == 1:
            # A v1 crop was never padded: `reduced` (shrunk below gt_size) is implied by its box,
            # and applying the box alone regenerates the v1 LQ, so the record reads as v3.
            crop.pop("reduced", None)
            crop.update(pad_bottom=0, pad_right=0)
        return _build(cls, data, crop=CropParams.from_dict(crop),
                      stage1=StageParams.from_dict(data["stage1"]), stage2=StageParams.from_dict(data["stage2"]),
                      final=FinalParams.from_dict(data["final"]))

    @classmethod
    def from_json(cls, text: str) -> DegradationParams:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))
