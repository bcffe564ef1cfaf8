"""What every super-resolution backbone offers: ``sample`` LQ images under candidate settings.

A backbone turns a list of low-quality RGB images into SR images ``scale`` times larger,
one per ``CandidateSettings``. Settings name everything that varies between the N
candidates of one LQ (seed, steps, guidance, noise, prompt); a backbone honours the
fields it lists in ``supported_settings``, fills the unset ones from its config and
refuses, with ``UnsupportedSettingsError``, a field it cannot honour — a candidate is
never silently generated under settings other than the recorded ones.
"""

from __future__ import annotations

import importlib.metadata
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class CandidateSettings(BaseModel):
    """How one SR candidate is generated. ``None`` means "the backbone's configured default".

    ``resolve_settings`` returns a copy with every supported field filled in, which is
    what a dataset should record.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = Field(
        0, ge=0, lt=2**63, description="Seeds every random draw of this candidate; deterministic backbones ignore it."
    )
    steps: int | None = Field(
        None, ge=1, description="Denoising steps (multi-step diffusion; one-step models accept 1)."
    )
    guidance_scale: float | None = Field(
        None, ge=0, description="Classifier-free guidance weight; 1 or less means no guidance (one forward pass)."
    )
    noise_strength: float | None = Field(
        None, ge=0, description="Std of the Gaussian noise added to the LQ latent of a one-step model (GDPO-SR style)."
    )
    noise_level: int | None = Field(
        None, ge=0, description="Noise-augmentation timestep of the LQ image in SD x4 upscaler (0..max_noise_level)."
    )
    prompt: str | None = Field(None, description="Text conditioning (positive prompt).")
    negative_prompt: str | None = Field(None, description="Negative prompt; used when guidance_scale > 1.")


class UnsupportedSettingsError(ValueError):
    """Candidate settings name a field, or a value, that the backbone cannot honour."""


SETTING_FIELDS = tuple(name for name in CandidateSettings.model_fields if name != "seed")


def check_lq_images(lq: Sequence[np.ndarray]) -> None:
    """Raise ValueError naming the first item that is not an ``(H, W, 3)`` uint8 array."""
    for index, image in enumerate(lq):
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            described = f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}"
            raise ValueError(f"lq[{index}] must be an (H, W, 3) uint8 RGB array, got {described}")
        if image.shape[0] < 1 or image.shape[1] < 1:
            raise ValueError(f"lq[{index}] is empty: shape {image.shape}")


def package_versions(*names: str) -> dict[str, str]:
    """Installed versions of the given distributions (for ``describe``); absent ones are left out."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


class SRBackbone(ABC):
    """Base class of the SR backbones in ``dspo_core.sr.BACKBONES``.

    Subclasses set ``name``, ``Config`` (their pydantic config class) and
    ``supported_settings``, both read from the torch-free ``dspo_core.sr.config`` so a
    profile is checked against them before any model loads, and implement ``weights_id``, ``setting_defaults`` and
    ``_sample``.

    Args:
        config: the backbone's validated ``Config`` instance.
    """

    name: ClassVar[str]
    Config: ClassVar[type[BaseModel]]
    scale: ClassVar[int] = 4
    supported_settings: ClassVar[frozenset[str]] = frozenset()
    # Distributions whose versions decide the outputs, listed by describe().
    packages: ClassVar[tuple[str, ...]] = ("numpy", "pillow")

    def __init__(self, config: BaseModel):
        self.config = config

    @property
    @abstractmethod
    def weights_id(self) -> str:
        """The weights' identity: ``<path or label>@sha256:<12 hex>``, or ``builtin:...`` without weights."""

    @abstractmethod
    def setting_defaults(self) -> dict[str, Any]:
        """The configured value of every field in ``supported_settings``."""

    def check_settings(self, settings: CandidateSettings) -> None:
        """Value checks beyond the field check of ``resolve_settings``; raise UnsupportedSettingsError."""

    def resolve_settings(self, settings: CandidateSettings) -> CandidateSettings:
        """`settings` with every supported field filled from the config.

        Raises:
            UnsupportedSettingsError: a field outside ``supported_settings`` is set, or a
                value is out of what this backbone can do (see ``check_settings``).
        """
        unsupported = [
            name
            for name in SETTING_FIELDS
            if name not in self.supported_settings and getattr(settings, name) is not None
        ]
        if unsupported:
            accepted = ", ".join(sorted(self.supported_settings)) or "none besides seed"
            raise UnsupportedSettingsError(
                f"backbone {self.name!r} cannot honour {', '.join(unsupported)} (accepted settings: {accepted})"
            )
        defaults = self.setting_defaults()
        filled = {name: defaults[name] for name in self.supported_settings if getattr(settings, name) is None}
        resolved = settings.model_copy(update=filled)
        self.check_settings(resolved)
        return resolved

    def sample(self, lq: Sequence[np.ndarray], settings: Sequence[CandidateSettings]) -> list[np.ndarray]:
        """Super-resolve ``lq[i]`` under ``settings[i]``.

        Args:
            lq: ``(H, W, 3)`` uint8 RGB images; sizes may differ.
            settings: one ``CandidateSettings`` per image (repeat an image to get N candidates).

        Returns one ``(scale*H, scale*W, 3)`` uint8 array per input, in order. The same
        image, settings and weights give the same output on the same software stack.
        """
        if len(lq) != len(settings):
            raise ValueError(f"got {len(lq)} LQ images but {len(settings)} settings; pass one settings per image")
        check_lq_images(lq)
        resolved = [self.resolve_settings(item) for item in settings]
        if not lq:
            return []
        return self._sample(list(lq), resolved)

    @abstractmethod
    def _sample(self, lq: list[np.ndarray], settings: list[CandidateSettings]) -> list[np.ndarray]:
        """``sample`` on checked inputs and resolved settings."""

    def describe(self) -> dict[str, Any]:
        """A JSON-ready record of everything needed to reproduce this backbone's outputs.

        Keys: ``name``, ``scale``, ``weights_id``, ``config`` (the full config),
        ``setting_defaults`` and ``packages`` (versions of the libraries that compute it).
        """
        return {
            "name": self.name,
            "scale": self.scale,
            "weights_id": self.weights_id,
            "config": self.config.model_dump(mode="json"),
            "setting_defaults": self.setting_defaults(),
            "packages": package_versions(*self.packages),
        }
