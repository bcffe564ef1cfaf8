"""Tiny random-init Stable Diffusion SR models, built from config and saved like real ones.

Tests and the offline demo run the real loading and inference code on these: each
builder creates the diffusers/transformers parts with the real model classes, the real
CLIP tokenizer (``clip_tokenizer``) and Stable Diffusion 2 scheduler settings, and saves
them with the pipeline's ``save_pretrained`` (which, unlike saving parts one by one, also
writes ``model_index.json``). The backbones then read the folder with ``from_pretrained``.
Weights are random: outputs look like noise, but are deterministic per seed.
"""

from __future__ import annotations

import os
import tempfile
from typing import Literal

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    StableDiffusionUpscalePipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel

from .clip_tokenizer import load_clip_tokenizer
from .config import TinySDConfig
from .one_step import OneStepSDBackbone
from .weights import resolve_pretrained

TEXT_DIM = 32
PredictionType = Literal["epsilon", "v_prediction"]


def sd2_scheduler_config(prediction_type: PredictionType) -> dict:
    """The noise schedule of Stable Diffusion 2.x (scaled-linear betas 0.00085..0.012, 1000 steps).

    ``timestep_spacing="trailing"`` makes a one-step schedule land on t=999, where SD-2's
    own "leading" spacing with ``steps_offset=1`` breaks ``scheduler.step``.
    """
    return {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "clip_sample": False,
        "steps_offset": 1,
        "prediction_type": prediction_type,
        "timestep_spacing": "trailing",
    }


def _text_encoder() -> CLIPTextModel:
    # Hidden 32, 2 layers over the full 49408-token CLIP vocabulary (1.6 M parameters);
    # GELU and 77 positions as in SD-2's OpenCLIP-H text tower.
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=TEXT_DIM,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="gelu",
        projection_dim=TEXT_DIM,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return CLIPTextModel(config)


def _vae(block_out_channels: tuple[int, ...], sample_size: int) -> AutoencoderKL:
    blocks = len(block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=block_out_channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=sample_size,
    )


def build_tiny_sd(
    directory: str,
    seed: int = 0,
    prediction_type: PredictionType = "epsilon",
    image_size: int = 128,
    concat_lq: bool = True,
) -> str:
    """Build a tiny SD-2-style one-step SR model (random weights) and save it in `directory`.

    Parts (about 3.5 M parameters in all):
      - UNet: blocks (32, 64), one layer each, cross-attention dim 32, ``in_channels=8``:
        the 4-channel noisy latent concatenated with the 4-channel LQ latent (``concat_lq=False``:
        4, SD-2.1-base's layout, which OSEDiff adapts).
      - VAE: 4 latent channels, four blocks, so **x8** downsampling like the real SD VAE
        (the same padding rules apply); scaling factor 0.18215.
      - Text encoder: CLIP, hidden 32, 2 layers; the real CLIP tokenizer.
      - Scheduler: ``DDPMScheduler`` with SD-2's schedule (``sd2_scheduler_config``).

    Args:
        directory: output folder (created); gets ``model_index.json`` and one subfolder per part.
        seed: seeds the random weights; the same seed gives the same weights.
        prediction_type: ``"epsilon"`` or ``"v_prediction"``, written to the scheduler config.
        image_size: HR side the model is nominally made for (sets the configs' ``sample_size``).
        concat_lq: whether the UNet takes the LQ latent on extra channels (8 inputs) or not (4).

    Returns `directory`.
    """
    vae_blocks = (16, 32, 32, 32)
    latent_size = image_size // 2 ** (len(vae_blocks) - 1)
    with torch.random.fork_rng(devices=[]), tempfile.TemporaryDirectory() as scratch:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=latent_size,
            in_channels=8 if concat_lq else 4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=TEXT_DIM,
            attention_head_dim=8,
            use_linear_projection=True,
            norm_num_groups=32,
        )
        vae = _vae(vae_blocks, image_size)
        vae.register_to_config(scaling_factor=0.18215)
        text_encoder = _text_encoder()
        pipeline = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=load_clip_tokenizer(scratch),
            unet=unet,
            scheduler=DDPMScheduler(**sd2_scheduler_config(prediction_type)),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipeline.save_pretrained(directory, safe_serialization=True)
    return directory


def build_tiny_upscaler(directory: str, seed: int = 0, max_noise_level: int = 350) -> str:
    """Build a tiny random-init ``StableDiffusionUpscalePipeline`` and save it in `directory`.

    Mirrors stabilityai/stable-diffusion-x4-upscaler at toy width: the UNet takes
    ``in_channels=7`` (4 latent + the 3-channel noise-augmented LQ image, both at LQ
    resolution) and a class embedding of the noise level; the VAE has three blocks
    (x4: the latent grid is the LQ grid, decoded to 4x); v-prediction DDIM as the main
    scheduler and a DDPM ``low_res_scheduler`` for the LQ noise augmentation.

    Args:
        directory: output folder (created).
        seed: seeds the random weights.
        max_noise_level: largest accepted ``noise_level`` (the real model's 350).

    Returns `directory`.
    """
    with torch.random.fork_rng(devices=[]), tempfile.TemporaryDirectory() as scratch:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=32,
            in_channels=7,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=TEXT_DIM,
            attention_head_dim=8,
            use_linear_projection=True,
            num_class_embeds=max_noise_level + 1,
            norm_num_groups=32,
        )
        vae = _vae((16, 32, 32), 128)
        vae.register_to_config(scaling_factor=0.08333)
        pipeline = StableDiffusionUpscalePipeline(
            vae=vae,
            text_encoder=_text_encoder(),
            tokenizer=load_clip_tokenizer(scratch),
            unet=unet,
            low_res_scheduler=DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear"),
            scheduler=DDIMScheduler(**sd2_scheduler_config("v_prediction"), set_alpha_to_one=False),
            max_noise_level=max_noise_level,
        )
        os.makedirs(directory, exist_ok=True)
        pipeline.save_pretrained(directory, safe_serialization=True)
    return directory


class TinySDBackbone(OneStepSDBackbone):
    """``one-step-sd`` on a tiny random-init SD model (``build_tiny_sd``), for tests and demos.

    With ``config.path`` set it loads that folder; otherwise it builds the model from
    ``build_seed`` into a temporary folder kept for the backbone's lifetime, and its
    weights id is ``builtin:tiny-sd/seed=<s>/<prediction_type>@sha256:...``.

    Args:
        config: a ``TinySDConfig``.
    """

    name = "tiny-sd"
    Config = TinySDConfig

    def _locate(self) -> str:
        if self.config.path is not None:
            return resolve_pretrained(self.config.model_id, self.config.path)
        self._scratch = tempfile.TemporaryDirectory(prefix="dspo-tiny-sd-")
        return build_tiny_sd(
            self._scratch.name, seed=self.config.build_seed, prediction_type=self.config.prediction_type
        )

    def _base_label(self) -> str:
        if self.config.path is not None:
            return self.folder
        return f"builtin:tiny-sd/seed={self.config.build_seed}/{self.config.prediction_type}"
