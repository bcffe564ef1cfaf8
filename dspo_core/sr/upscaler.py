"""Stable Diffusion x4 upscaler (multi-step) through diffusers' ``StableDiffusionUpscalePipeline``.

The model denoises a latent on the LQ grid, conditioned on the LQ image itself
(noise-augmented to ``noise_level`` by the ``low_res_scheduler`` and concatenated on the
channels, plus a class embedding of the noise level) and on a prompt; its VAE decodes
the latent 4x larger. Candidates differ by seed, steps, guidance scale, noise level and
prompts. Sampling runs the pipeline's own ``__call__``; the denoiser interface exposes
the same UNet call for the DSPO loss.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import torch
from diffusers import StableDiffusionUpscalePipeline

from .base import CandidateSettings, UnsupportedSettingsError
from .config import SUPPORTED_SETTINGS, SDUpscalerConfig
from .diffusion import (
    DTYPES,
    DiffusionSRBackbone,
    images_to_tensor,
    pad_to_multiple,
    tensor_to_images,
)
from .weights import folder_digest, resolve_pretrained, weights_id


class SDUpscalerBackbone(DiffusionSRBackbone):
    """SD x4 upscaler from a local folder or the HF cache (offline only).

    Odd sizes are handled by padding the LQ (edge replication) to ``pad_multiple`` and
    cropping the output back.

    Args:
        config: an ``SDUpscalerConfig``.

    Raises:
        MissingWeightsError: the weights are neither at ``config.path`` nor in the HF cache.
    """

    name = "sd-x4-upscaler"
    Config = SDUpscalerConfig
    supported_settings = SUPPORTED_SETTINGS[name]

    def __init__(self, config: SDUpscalerConfig | None = None):
        super().__init__(config or SDUpscalerConfig())
        self._base_id: str | None = None
        self.folder = resolve_pretrained(self.config.model_id, self.config.path, self.config.cache_dir)
        self.device = torch.device(self.config.device)
        self.dtype = DTYPES[self.config.dtype]
        # No safety checker: it would black out candidates it flags, silently changing the data.
        self.pipeline = StableDiffusionUpscalePipeline.from_pretrained(
            self.folder, dtype=self.dtype, local_files_only=True, safety_checker=None
        ).to(self.device)
        self.pipeline.set_progress_bar_config(disable=True)
        self.unet, self.vae = self.pipeline.unet, self.pipeline.vae
        self.text_encoder, self.tokenizer = self.pipeline.text_encoder, self.pipeline.tokenizer
        self.scheduler, self.low_res_scheduler = self.pipeline.scheduler, self.pipeline.low_res_scheduler
        self._freeze()

    @property
    def max_noise_level(self) -> int:
        """Largest accepted noise_level (350 for the released model)."""
        return self.pipeline.config.max_noise_level

    @property
    def pad_multiple(self) -> int:
        """LQ sides are padded to multiples of this (the pipeline's VAE factor and the UNet's downsampling)."""
        return math.lcm(self.pipeline.vae_scale_factor, 2 ** (len(self.unet.config.block_out_channels) - 1))

    @property
    def base_weights_id(self) -> str:
        """``<folder>@sha256:<12 hex>`` over the pipeline folder's files."""
        if self._base_id is None:
            self._base_id = weights_id(self.folder, folder_digest(self.folder))
        return self._base_id

    def setting_defaults(self) -> dict[str, Any]:
        return {
            "steps": self.config.default_steps,
            "guidance_scale": self.config.default_guidance_scale,
            "noise_level": self.config.default_noise_level,
            "prompt": self.config.default_prompt,
            "negative_prompt": self.config.default_negative_prompt,
        }

    def check_settings(self, settings: CandidateSettings) -> None:
        if settings.noise_level > self.max_noise_level:
            raise UnsupportedSettingsError(
                f"noise_level {settings.noise_level} is above this model's max_noise_level {self.max_noise_level}"
            )

    def _noise_levels(self, batch: int) -> torch.Tensor:
        return torch.full((batch,), self.config.default_noise_level, dtype=torch.long, device=self.device)

    def encode_lq(self, lq: Sequence[np.ndarray], generator: torch.Generator | None = None) -> torch.Tensor:
        """Same-size LQ images in [-1, 1], noise-augmented to ``default_noise_level`` like the pipeline does.

        The noise is drawn from `generator` (on the CPU; fresh randomness when None).
        """
        images = images_to_tensor(lq)
        noise = torch.randn(images.shape, generator=generator)
        noisy = self.low_res_scheduler.add_noise(images, noise, self._noise_levels(len(lq)).cpu())
        return noisy.to(self.device, self.dtype)

    def predict(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        text_embeddings: torch.Tensor,
        lq_latents: torch.Tensor,
    ) -> torch.Tensor:
        """The UNet's prediction (v for the released model) with the LQ image concatenated and the noise-level label."""
        sample = torch.cat([self.scheduler.scale_model_input(noisy_latents, timesteps), lq_latents], dim=1)
        labels = self._noise_levels(noisy_latents.shape[0])
        return self.unet(
            sample, timesteps, encoder_hidden_states=text_embeddings, class_labels=labels, return_dict=False
        )[0]

    def _batch_key(self, image: np.ndarray, settings: CandidateSettings) -> Hashable:
        # One pipeline call shares steps, guidance and noise level across its batch.
        return image.shape, settings.steps, settings.guidance_scale, settings.noise_level

    @torch.no_grad()
    def _sample_batch(self, lq: list[np.ndarray], settings: list[CandidateSettings]) -> list[np.ndarray]:
        height, width = lq[0].shape[0] * self.scale, lq[0].shape[1] * self.scale
        images = pad_to_multiple((images_to_tensor(lq) + 1.0) / 2.0, self.pad_multiple)
        first = settings[0]
        guided = first.guidance_scale > 1.0
        output = self.pipeline(
            prompt=[item.prompt for item in settings],
            negative_prompt=[item.negative_prompt for item in settings] if guided else None,
            image=images.to(self.device, self.dtype),
            num_inference_steps=first.steps,
            guidance_scale=first.guidance_scale,
            noise_level=first.noise_level,
            # One CPU generator per candidate: its draws depend on its seed only.
            generator=[torch.Generator().manual_seed(item.seed) for item in settings],
            output_type="pt",
        ).images
        return tensor_to_images(output[:, :, :height, :width] * 2.0 - 1.0)

    def describe(self) -> dict[str, Any]:
        """``SRBackbone.describe`` plus ``folder``, ``prediction_type``, ``max_noise_level`` and ``pad_multiple``."""
        record = super().describe()
        record.update(
            folder=self.folder,
            prediction_type=self.prediction_type,
            max_noise_level=self.max_noise_level,
            pad_multiple=self.pad_multiple,
        )
        return record
