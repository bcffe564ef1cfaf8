"""One-step latent-diffusion SR (OSEDiff-style) on a Stable Diffusion 2 pipeline folder.

Sampling one LQ image:

1. upscale the LQ x4 (bicubic) and pad it to the model's grid (see ``pad_multiple``);
2. VAE-encode it: ``z_lq``;
3. x_T = z_lq + noise_strength * eps, eps drawn from the candidate's seed (GDPO-SR's
   noise injection; 0 gives OSEDiff's deterministic output);
4. one UNet prediction at t = ``timestep`` (999), with ``z_lq`` concatenated on the
   channels when the UNet takes 2x latent channels (the tiny model); a 4-channel UNet
   (SD-2.1-base, OSEDiff) sees the LQ only through x_T;
5. x0 in closed form from the eps or v prediction, VAE-decode, crop the padding off;
6. optionally colour-correct against the bicubic upscale (``color_fix``, OSEDiff's --align_method).

With ``osediff_path`` the released OSEDiff checkpoint is merged into the UNet and VAE at load
(``dspo_core.sr.osediff``), which makes this OSEDiff's test on SD-2.1-base: noise_strength 0,
t = 999, x0 = (z - sqrt(1 - a) * eps) / sqrt(a), color_fix 'adain'. Where it differs from that
script: the prompt is the candidate's ``prompt`` (OSEDiff prepends the tags of its DAPE/RAM
tagger, ``"<tags>, <prompt>,"``; no tagger runs offline here, so pass tags or a caption as the
prompt to match it); the LQ latent is the VAE posterior mean (OSEDiff draws an unseeded
sample); sides are padded to 64 (OSEDiff crops them to multiples of 8); LQ inputs under 128 px
are not enlarged first; and no tiling: OSEDiff's VAE tiles only above 1088 px (encoder) and
246 latent px (decoder), and its UNet above a 96x96 latent (768 px), where it blends
overlapping tiles instead of one forward (a warning says when an input is that large).

``tiny-sd`` (``tiny.TinySDBackbone``) is this class on a random-init folder made by ``tiny.build_tiny_sd``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from ..digest import sha256_file
from .base import CandidateSettings, UnsupportedSettingsError
from .bicubic import bicubic_upscale
from .color_fix import COLOR_FIXES
from .config import SETTING_CHOICES, SUPPORTED_SETTINGS, OneStepSDConfig
from .diffusion import (
    DTYPES,
    LORA_WEIGHT_NAME,
    DiffusionSRBackbone,
    images_to_tensor,
    pad_to_multiple,
    tensor_to_images,
)
from .osediff import apply_osediff, read_osediff_checkpoint
from .weights import folder_digest, resolve_pretrained, weights_id

log = logging.getLogger(__name__)
# OSEDiff's test tiles the UNet input above this latent area (--latent_tiled_size 96).
OSEDIFF_LATENT_TILE = 96


class OneStepSDBackbone(DiffusionSRBackbone):
    """One-step SR on an SD-2 pipeline folder (real SD-2.1-base by default, offline only).

    Candidates differ by seed and noise_strength (and optionally prompt and guidance);
    ``steps`` is accepted only as 1.

    Args:
        config: a ``OneStepSDConfig``.

    Raises:
        MissingWeightsError: the weights are neither at ``config.path`` nor in the HF cache.
    """

    name = "one-step-sd"
    Config = OneStepSDConfig
    supported_settings = SUPPORTED_SETTINGS[name]

    def __init__(self, config: OneStepSDConfig | None = None):
        super().__init__(config or self.Config())
        self._base_id: str | None = None
        self.folder = self._locate()
        self.device = torch.device(self.config.device)
        self.dtype = DTYPES[self.config.dtype]
        folder = self.folder
        # dtype at load time: diffusers keeps the modules a model marks as float32-only. An OSEDiff
        # checkpoint is merged in float32 first, then cast (a bf16 merge would round the update).
        osediff = self.config.osediff_path
        load = {"local_files_only": True, "dtype": torch.float32 if osediff else self.dtype}
        self.unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **load).to(self.device)
        self.vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", **load).to(self.device)
        self.text_encoder = CLIPTextModel.from_pretrained(
            folder, subfolder="text_encoder", local_files_only=True, dtype=self.dtype
        ).to(self.device)
        self.tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True)
        self.scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler", local_files_only=True)
        self._check_model()
        self.osediff: dict[str, Any] | None = None
        if osediff is not None:
            checkpoint = read_osediff_checkpoint(osediff)
            apply_osediff(self.unet, self.vae, checkpoint)
            if self.dtype != torch.float32:
                self.unet.to(self.dtype)
                self.vae.to(self.dtype)
            self.osediff = {"path": osediff, **checkpoint.describe()}
        if self.config.lora_path is not None:
            self._fuse_base_lora(self.config.lora_path)
        self._freeze()

    def _locate(self) -> str:
        return resolve_pretrained(self.config.model_id, self.config.path, self.config.cache_dir)

    def _check_model(self) -> None:
        latent = self.vae.config.latent_channels
        if self.unet.config.in_channels not in (latent, 2 * latent):
            raise ValueError(
                f"{self.folder}: UNet in_channels {self.unet.config.in_channels} is neither the latent channels "
                f"({latent}) nor latent + LQ latent ({2 * latent})"
            )
        if self.config.timestep >= self.num_train_timesteps:
            raise ValueError(f"timestep {self.config.timestep} is outside the schedule [0, {self.num_train_timesteps})")

    def _fuse_base_lora(self, directory: str) -> None:
        # Merged into the base weights, so the DSPO reference (adapter disabled) includes it.
        self.unet.load_lora_adapter(directory, weight_name=LORA_WEIGHT_NAME, prefix=None, adapter_name="base")
        self.unet.fuse_lora(adapter_names=["base"])
        self.unet.unload_lora()

    @property
    def concat_lq(self) -> bool:
        """Whether the UNet takes the LQ latent concatenated to x_t (in_channels = 2x latent channels)."""
        return self.unet.config.in_channels == 2 * self.vae.config.latent_channels

    @property
    def pad_multiple(self) -> int:
        """HR sides are padded to multiples of this: VAE factor x the UNet's downsampling (64 for SD-2)."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    def _base_label(self) -> str:
        return self.folder

    @property
    def base_weights_id(self) -> str:
        """``<folder>@sha256:<12 hex>`` over the folder's files, ``+osediff:<osediff_path>@sha256:...`` for a
        merged OSEDiff checkpoint, ``+<lora_path>@sha256:...`` for a fused LoRA."""
        if self._base_id is None:
            self._base_id = weights_id(self._base_label(), folder_digest(self.folder))
            if self.config.osediff_path is not None:
                osediff = self.config.osediff_path
                self._base_id += "+" + weights_id("osediff:" + osediff, sha256_file(osediff))
            if self.config.lora_path is not None:
                lora_file = os.path.join(self.config.lora_path, LORA_WEIGHT_NAME)
                self._base_id += "+" + weights_id(self.config.lora_path, sha256_file(lora_file))
        return self._base_id

    def setting_defaults(self) -> dict[str, Any]:
        return {
            "steps": 1,
            "guidance_scale": self.config.default_guidance_scale,
            "noise_strength": self.config.default_noise_strength,
            "prompt": self.config.default_prompt,
            "negative_prompt": self.config.default_negative_prompt,
        }

    def check_settings(self, settings: CandidateSettings) -> None:
        for setting, choice in SETTING_CHOICES[self.name].items():
            problem = choice.problem(self.name, setting, getattr(settings, setting))
            if problem:
                raise UnsupportedSettingsError(problem)

    def encode_lq(self, lq: Sequence[np.ndarray], generator: torch.Generator | None = None) -> torch.Tensor:
        """Same-size LQ images -> latents of their bicubic x4 upscales (4x sides must fit the VAE grid)."""
        return self.encode(images_to_tensor([bicubic_upscale(image, self.scale) for image in lq]))

    def predict(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        text_embeddings: torch.Tensor,
        lq_latents: torch.Tensor,
    ) -> torch.Tensor:
        """The UNet's eps or v prediction; `lq_latents` is concatenated only when ``concat_lq``."""
        sample = torch.cat([noisy_latents, lq_latents], dim=1) if self.concat_lq else noisy_latents
        return self.unet(sample, timesteps, encoder_hidden_states=text_embeddings, return_dict=False)[0]

    def _noise(self, shape: torch.Size, settings: list[CandidateSettings]) -> torch.Tensor:
        # One CPU generator per candidate: its noise depends on its seed only, not on the
        # batch it lands in or the device.
        noise = [torch.randn(shape, generator=torch.Generator().manual_seed(item.seed)) for item in settings]
        strength = torch.tensor([item.noise_strength for item in settings]).view(-1, 1, 1, 1)
        return (torch.stack(noise) * strength).to(self.device, self.dtype)

    @torch.no_grad()
    def _sample_batch(self, lq: list[np.ndarray], settings: list[CandidateSettings]) -> list[np.ndarray]:
        height, width = lq[0].shape[0] * self.scale, lq[0].shape[1] * self.scale
        upscaled = images_to_tensor([bicubic_upscale(image, self.scale) for image in lq])
        lq_latents = self.encode(pad_to_multiple(upscaled, self.pad_multiple))
        if self.osediff is not None and lq_latents.shape[-2] * lq_latents.shape[-1] > OSEDIFF_LATENT_TILE**2:
            log.warning("one-step-sd: a %dx%d latent runs in one UNet forward; OSEDiff's test would tile it "
                        "in %d px tiles", *lq_latents.shape[-2:], OSEDIFF_LATENT_TILE)
        noisy = lq_latents + self._noise(lq_latents.shape[1:], settings)
        timesteps = torch.full((len(lq),), self.config.timestep, dtype=torch.long, device=self.device)
        output = self.predict(noisy, timesteps, self.encode_text([item.prompt for item in settings]), lq_latents)
        guidance = torch.tensor([item.guidance_scale for item in settings], device=self.device, dtype=self.dtype)
        if bool((guidance > 1).any()):
            negative = self.encode_text([item.negative_prompt for item in settings])
            unconditional = self.predict(noisy, timesteps, negative, lq_latents)
            guided = unconditional + guidance.view(-1, 1, 1, 1) * (output - unconditional)
            output = torch.where((guidance > 1).view(-1, 1, 1, 1), guided, output)
        images = self.decode(self.predict_x0(noisy, output, timesteps))[:, :, :height, :width]
        if self.config.color_fix != "none":
            output01 = (images.float().clamp(-1, 1) + 1) / 2
            fixed = COLOR_FIXES[self.config.color_fix](output01, (upscaled.to(output01.device) + 1) / 2)
            images = fixed * 2 - 1
        return tensor_to_images(images)

    def describe(self) -> dict[str, Any]:
        """``SRBackbone.describe`` plus ``folder`` (where the weights were read), ``osediff`` (the merged
        checkpoint: path, ranks, adapted module counts; None without one), ``prediction_type``,
        ``concat_lq`` and ``pad_multiple``."""
        record = super().describe()
        record.update(
            folder=self.folder,
            osediff=self.osediff,
            prediction_type=self.prediction_type,
            concat_lq=self.concat_lq,
            pad_multiple=self.pad_multiple,
        )
        return record
