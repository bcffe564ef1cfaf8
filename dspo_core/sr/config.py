"""What each SR backbone accepts, without importing torch, diffusers or ncnn.

The backbones' pydantic config classes, by name (``BACKBONE_CONFIGS``), which of them are
diffusion backbones (``DIFFUSION_BACKBONES``), which candidate settings each honours
(``SUPPORTED_SETTINGS``) and which values of a setting it can take where that is narrower than
the field (``SETTING_CHOICES``). The backbone classes read their ``Config``,
``supported_settings`` and choices from here, so a profile can be checked against exactly what
the backbone enforces before any model loads; ``dspo_core.sr.registry.BACKBONES`` lists the
same names (a test keeps them equal).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from dspo_core.devices import TorchDevice

SD21_BASE = "stabilityai/stable-diffusion-2-1-base"
SD_X4_UPSCALER = "stabilityai/stable-diffusion-x4-upscaler"
DType = Literal["float32", "float16", "bfloat16"]


class LoraSettings(BaseModel):
    """The trainable LoRA adapter added to the UNet by ``trainable_parameters``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rank: int = Field(4, ge=1, description="LoRA rank r of every adapted projection.")
    alpha: float | None = Field(None, gt=0, description="LoRA alpha (update scaled by alpha/r); None = rank.")
    target_modules: tuple[str, ...] = Field(
        ("to_q", "to_k", "to_v", "to_out.0"),
        min_length=1,
        description="UNet module names adapted: the attention projections, as in diffusers' LoRA scripts.",
    )


class BicubicConfig(BaseModel):
    """Bicubic has no options; the empty config keeps the registry uniform."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class RealESRGANConfig(BaseModel):
    """Options of the ncnn Real-ESRGAN backbone."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    variant: Literal["x4plus", "x4plus-anime", "animevideov3"] = Field(
        "x4plus",
        description="Network: x4plus (RRDBNet, photos; ~0.8 s for 64->256 on one core), x4plus-anime (RRDBNet "
        "6 blocks, drawings) or animevideov3 (SRVGGNetCompact, ~40x faster, softer on photos).",
    )
    tile: int = Field(
        256, ge=0, description="Process LQ inputs larger than this in tiles of this side (LQ pixels); 0 = never tile."
    )
    tile_pad: int = Field(10, ge=0, description="LQ pixels of context added around each tile and cropped off after.")
    num_threads: int | None = Field(None, ge=1, description="ncnn CPU threads; None = ncnn's default (all cores).")


class OneStepSDConfig(BaseModel):
    """Options of the one-step SD backbone; the candidate-setting defaults are the ``default_*`` fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_id: str = Field(
        SD21_BASE, description="Hugging Face model id, looked up in the HF cache when `path` is None."
    )
    path: str | None = Field(
        None,
        description="Local diffusers pipeline folder; overrides the cache. s3:// is fetched by the pipeline layer.",
    )
    cache_dir: str | None = Field(None, description="Hugging Face hub cache to search; None = HF's default.")
    lora_path: str | None = Field(
        None,
        description="Folder with a diffusers-format UNet LoRA (pytorch_lora_weights.safetensors) fused into the base "
        "weights at load, e.g. a one-step SR LoRA; the trainable DSPO adapter goes on top of it.",
    )
    osediff_path: str | None = Field(
        None,
        description="An OSEDiff checkpoint (the released osediff.pkl: UNet and VAE-encoder LoRA, ranks, state dicts) "
        "merged into the UNet and VAE at load, as OSEDiff's test runs it on SD-2.1-base; the trainable DSPO adapter "
        "goes on top and the reference is the OSEDiff model. A bare file name is looked up in $DSPO_MODELS by "
        "the pipeline layer.",
    )
    color_fix: Literal["none", "adain", "wavelet"] = Field(
        "none",
        description="Colour correction of each output against its bicubic-upscaled LQ, OSEDiff's --align_method: "
        "'adain' (per-channel mean and std; OSEDiff's test default), 'wavelet' (low frequencies of the LQ, high of "
        "the output) or 'none'.",
    )
    timestep: int = Field(999, ge=0, description="The single timestep the model denoises at (OSEDiff: 999).")
    default_noise_strength: float = Field(
        0.1, ge=0, description="noise_strength of candidates that leave it unset; 0 = the deterministic base output."
    )
    default_guidance_scale: float = Field(1.0, ge=0, description="guidance_scale when unset; <= 1 disables guidance.")
    default_prompt: str = Field("", description="prompt when unset.")
    default_negative_prompt: str = Field("", description="negative_prompt when unset (used only with guidance).")
    lora: LoraSettings = Field(
        default_factory=LoraSettings, description="The trainable adapter (rank, alpha, modules)."
    )
    batch_size: int = Field(4, ge=1, description="Images per forward pass in sample().")
    device: TorchDevice = Field("cpu", description="torch device of every part: cpu, mps, cuda or cuda:N.")
    dtype: DType = Field("float32", description="Weights and activations dtype.")


class TinySDConfig(OneStepSDConfig):
    """``OneStepSDConfig`` for a tiny random-init model: built in a temporary folder when `path` is None."""

    model_id: str = Field("tiny-sd", description="Label only; the model is built, not looked up.")
    build_seed: int = Field(0, ge=0, description="Seed of the random weights when the model is built here.")
    prediction_type: Literal["epsilon", "v_prediction"] = Field(
        "epsilon", description="Scheduler prediction type of a model built here (a given `path` keeps its own)."
    )


class SDUpscalerConfig(BaseModel):
    """Options of the SD x4 upscaler backbone; candidate-setting defaults are the ``default_*`` fields
    (the pipeline's own defaults)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_id: str = Field(SD_X4_UPSCALER, description="Hugging Face model id, looked up in the HF cache.")
    path: str | None = Field(
        None,
        description="Local diffusers pipeline folder; overrides the cache. s3:// is fetched by the pipeline layer.",
    )
    cache_dir: str | None = Field(None, description="Hugging Face hub cache to search; None = HF's default.")
    default_steps: int = Field(75, ge=1, description="Denoising steps when a candidate leaves `steps` unset.")
    default_guidance_scale: float = Field(9.0, ge=0, description="guidance_scale when unset; <= 1 disables guidance.")
    default_noise_level: int = Field(
        20, ge=0, description="noise_level when unset; also the LQ noise augmentation used by encode_lq/predict."
    )
    default_prompt: str = Field("", description="prompt when unset.")
    default_negative_prompt: str = Field("", description="negative_prompt when unset (used only with guidance).")
    lora: LoraSettings = Field(
        default_factory=LoraSettings, description="The trainable adapter (rank, alpha, modules)."
    )
    batch_size: int = Field(4, ge=1, description="Images per pipeline call (same size and settings but the seed).")
    device: TorchDevice = Field("cpu", description="torch device: cpu, mps, cuda or cuda:N.")
    dtype: DType = Field("float32", description="Weights and activations dtype.")


class SettingChoice(NamedTuple):
    """The only values a backbone can take for one candidate setting, and why."""

    values: tuple[Any, ...]
    reason: str

    def problem(self, backbone: str, setting: str, value: Any) -> str | None:
        """The UnsupportedSettingsError text for `value`, or None when it is one of ``values``."""
        if value in self.values:
            return None
        allowed = " or ".join(str(item) for item in self.values)
        return f"backbone {backbone!r} {self.reason}: {setting} must be {allowed}, got {value}"


BACKBONE_CONFIGS: dict[str, type[BaseModel]] = {
    "bicubic": BicubicConfig,
    "realesrgan": RealESRGANConfig,
    "tiny-sd": TinySDConfig,
    "one-step-sd": OneStepSDConfig,
    "sd-x4-upscaler": SDUpscalerConfig,
}
# The ones built on a latent-diffusion UNet (DiffusionSRBackbone): they can be trained with DSPO.
DIFFUSION_BACKBONES: tuple[str, ...] = ("tiny-sd", "one-step-sd", "sd-x4-upscaler")

_ONE_STEP_SETTINGS = frozenset({"steps", "guidance_scale", "noise_strength", "prompt", "negative_prompt"})
# The CandidateSettings fields besides `seed` each backbone honours; any other one set is refused.
SUPPORTED_SETTINGS: dict[str, frozenset[str]] = {
    "bicubic": frozenset(),
    "realesrgan": frozenset(),
    "tiny-sd": _ONE_STEP_SETTINGS,
    "one-step-sd": _ONE_STEP_SETTINGS,
    "sd-x4-upscaler": frozenset({"steps", "guidance_scale", "noise_level", "prompt", "negative_prompt"}),
}
_ONE_STEP = {"steps": SettingChoice((1,), "is one-step")}
# Supported settings whose accepted values are fixed by the backbone itself. The SD x4 upscaler's
# noise_level bound (max_noise_level) is read from the loaded model, so it is checked at run time.
SETTING_CHOICES: dict[str, dict[str, SettingChoice]] = {
    "bicubic": {},
    "realesrgan": {},
    "tiny-sd": _ONE_STEP,
    "one-step-sd": _ONE_STEP,
    "sd-x4-upscaler": {},
}


def setting_problem(backbone: str, name: str, value: Any) -> str | None:
    """Why `backbone` would refuse candidate setting `name` = `value` (UnsupportedSettingsError at
    run time), or None when it honours it; unset (None) values and the seed are always honoured."""
    if value is None or name == "seed":
        return None
    supported = SUPPORTED_SETTINGS[backbone]
    if name not in supported:
        return f"backbone {backbone!r} cannot honour {name}; accepted: {', '.join(['seed', *sorted(supported)])}"
    choice = SETTING_CHOICES[backbone].get(name)
    return choice.problem(backbone, name, value) if choice else None
