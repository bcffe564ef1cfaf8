"""The SR backbones, by name: one explicit dict, nothing discovered by import or file name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from .base import SRBackbone
from .bicubic import BicubicBackbone
from .one_step import OneStepSDBackbone
from .tiny import TinySDBackbone
from .realesrgan import RealESRGANBackbone
from .upscaler import SDUpscalerBackbone

BACKBONES: dict[str, type[SRBackbone]] = {
    BicubicBackbone.name: BicubicBackbone,
    RealESRGANBackbone.name: RealESRGANBackbone,
    TinySDBackbone.name: TinySDBackbone,
    OneStepSDBackbone.name: OneStepSDBackbone,
    SDUpscalerBackbone.name: SDUpscalerBackbone,
}


def build_backbone(name: str, config: BaseModel | Mapping[str, Any] | None = None) -> SRBackbone:
    """Construct the backbone registered as `name`.

    Args:
        name: a key of ``BACKBONES``.
        config: the backbone's ``Config`` instance, or a mapping validated into it
            (unknown keys are rejected), or None for the defaults.

    Raises:
        KeyError: unknown name (the message lists the known ones).
        pydantic.ValidationError: the mapping does not fit the backbone's config.
    """
    try:
        backbone = BACKBONES[name]
    except KeyError:
        raise KeyError(f"unknown SR backbone {name!r}; known: {', '.join(BACKBONES)}") from None
    if config is None:
        config = backbone.Config()
    elif not isinstance(config, BaseModel):
        config = backbone.Config.model_validate(dict(config))
    elif not isinstance(config, backbone.Config):
        raise TypeError(f"backbone {name!r} takes a {backbone.Config.__name__}, got {type(config).__name__}")
    return backbone(config)
