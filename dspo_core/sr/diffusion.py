"""The denoiser interface of diffusion SR backbones: what the DSPO loss calls.

Besides ``sample``, a ``DiffusionSRBackbone`` exposes its latent-diffusion parts so the
Diffusion-DPO / DSPO loss can be written once for every diffusion backbone::

    z_w, z_l = sr.encode(winner), sr.encode(loser)             # images in [-1, 1]
    cond = sr.encode_lq(lq)                                    # LQ conditioning
    text = sr.encode_text(prompts)
    x_t = sr.add_noise(z_w, noise, t)                          # same noise and t for w and l
    policy = sr.predict(x_t, t, text, cond)
    with torch.no_grad(), sr.reference():                      # LoRA off = the frozen base model
        ref = sr.predict(x_t, t, text, cond)
    err = (policy - sr.target(z_w, noise, t)) ** 2             # eps or v, per prediction_type

Training is LoRA on the UNet (peft, through diffusers' ``add_adapter``): the reference
forward is the same network with the adapter disabled, so no second copy is held.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from abc import abstractmethod
from collections.abc import Hashable, Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from peft import LoraConfig

from .base import CandidateSettings, SRBackbone
from .config import LoraSettings  # noqa: F401 -- bench/ imports it from here
from .weights import weights_id

ADAPTER = "dspo"
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def images_to_tensor(images: Sequence[np.ndarray]) -> torch.Tensor:
    """Same-size ``(H, W, 3)`` uint8 images -> ``(B, 3, H, W)`` float32 in [-1, 1]."""
    stacked = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    return stacked / 127.5 - 1.0


def tensor_to_images(images: torch.Tensor) -> list[np.ndarray]:
    """``(B, 3, H, W)`` in [-1, 1] -> ``(H, W, 3)`` uint8 images (clamped, rounded)."""
    scaled = ((images.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return list(scaled.permute(0, 2, 3, 1).cpu().numpy())


def pad_to_multiple(images: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad the bottom and right of ``(B, C, H, W)`` to multiples of `multiple` by edge replication.

    Latent models need sides divisible by their total downsampling; the caller crops the
    output back. Replication (not reflection) works for any size, even 1 px.
    """
    height, width = images.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h == 0 and pad_w == 0:
        return images
    return torch.nn.functional.pad(images, (0, pad_w, 0, pad_h), mode="replicate")


def batches(keys: Sequence[Hashable], batch_size: int) -> list[list[int]]:
    """Indices of `keys` grouped by equal key, split into runs of at most `batch_size`, in first-seen order."""
    groups: dict[Hashable, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    return [indices[i : i + batch_size] for indices in groups.values() for i in range(0, len(indices), batch_size)]


class DiffusionSRBackbone(SRBackbone):
    """An SR backbone built on a latent diffusion UNet, with the interface the DSPO loss needs.

    Subclasses load the parts (``unet``, ``vae``, ``text_encoder``, ``tokenizer``,
    ``scheduler``) and implement ``base_weights_id``, ``encode_lq``, ``predict`` and
    ``_sample_batch``; this class provides latents, noise, targets, text encoding,
    batching of ``sample`` and the LoRA adapter.
    """

    packages: ClassVar[tuple[str, ...]] = ("numpy", "pillow", "torch", "diffusers", "transformers", "peft")

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    device: torch.device
    dtype: torch.dtype

    def _freeze(self) -> None:
        # Only the LoRA adapter ever trains; frozen parts also skip autograd bookkeeping.
        for module in (self.unet, self.vae, self.text_encoder):
            module.requires_grad_(False)
            module.eval()

    @property
    @abstractmethod
    def base_weights_id(self) -> str:
        """Identity of the weights loaded from disk (pipeline folder, plus any fused base LoRA)."""

    @property
    def weights_id(self) -> str:
        """``base_weights_id``, plus ``+lora:dspo@sha256:<12 hex>`` of the adapter's current tensors when present."""
        digest = self.adapter_digest()
        return (
            self.base_weights_id
            if digest is None
            else f"{self.base_weights_id}+{weights_id('lora:' + ADAPTER, digest)}"
        )

    @property
    def prediction_type(self) -> str:
        """What ``predict`` returns: ``"epsilon"`` (the noise) or ``"v_prediction"`` (the velocity)."""
        return self.scheduler.config.prediction_type

    @property
    def num_train_timesteps(self) -> int:
        """Training timesteps of the noise schedule (1000 for Stable Diffusion); t is drawn in [0, this)."""
        return self.scheduler.config.num_train_timesteps

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along each side."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` images in [-1, 1] -> scaled VAE latents ``(B, C, H/f, W/f)``.

        The posterior mean (not a sample), so the same image always gives the same latent.
        H and W must be multiples of ``vae_scale_factor``.
        """
        height, width = images.shape[-2:]
        if height % self.vae_scale_factor or width % self.vae_scale_factor:
            raise ValueError(f"image side {height}x{width} is not a multiple of the VAE factor {self.vae_scale_factor}")
        posterior = self.vae.encode(images.to(self.device, self.dtype)).latent_dist
        return posterior.mode() * self.vae.config.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [-1, 1] (not clamped)."""
        return self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts -> text encoder hidden states ``(B, 77, D)``, padded to the tokenizer's max length."""
        tokens = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        return self.text_encoder(tokens.input_ids.to(self.device), return_dict=False)[0]

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(a_t) * latents + sqrt(1 - a_t) * noise (the forward process at `timesteps`)."""
        return self.scheduler.add_noise(latents, noise, timesteps)

    def target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What ``predict`` should output for x_t = add_noise(latents, noise, t): eps, or v per ``prediction_type``."""
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "v_prediction":
            return self.scheduler.get_velocity(latents, noise, timesteps)
        raise ValueError(f"unsupported prediction_type {self.prediction_type!r} (epsilon or v_prediction)")

    def predict_x0(
        self, noisy_latents: torch.Tensor, model_output: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """The clean latent implied by a model output, in closed form.

        eps: x0 = (x_t - sqrt(1 - a) * eps) / sqrt(a); v: x0 = sqrt(a) * x_t - sqrt(1 - a) * v.
        Used instead of ``scheduler.step`` for one-step sampling (step at t=999 after
        ``set_timesteps(1)`` raises IndexError with SD-2 scheduler configs).
        """
        alphas = self.scheduler.alphas_cumprod.to(noisy_latents.device)[timesteps.to(noisy_latents.device)]
        alpha = alphas.to(noisy_latents.dtype).view(-1, 1, 1, 1)
        if self.prediction_type == "epsilon":
            return (noisy_latents - (1 - alpha).sqrt() * model_output) / alpha.sqrt()
        if self.prediction_type == "v_prediction":
            return alpha.sqrt() * noisy_latents - (1 - alpha).sqrt() * model_output
        raise ValueError(f"unsupported prediction_type {self.prediction_type!r} (epsilon or v_prediction)")

    @abstractmethod
    def encode_lq(self, lq: Sequence[np.ndarray], generator: torch.Generator | None = None) -> torch.Tensor:
        """The LQ conditioning ``predict`` takes as `lq_latents`, for same-size uint8 LQ images.

        `generator` seeds any noise augmentation of the conditioning (SD x4 upscaler);
        backbones with a deterministic conditioning ignore it.
        """

    @abstractmethod
    def predict(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        text_embeddings: torch.Tensor,
        lq_latents: torch.Tensor,
    ) -> torch.Tensor:
        """One UNet forward: the eps or v prediction (see ``prediction_type``) at x_t, differentiable."""

    def _batch_key(self, image: np.ndarray, settings: CandidateSettings) -> Hashable:
        # What must be equal within one forward batch; per-candidate seeds never are.
        return image.shape

    @abstractmethod
    def _sample_batch(self, lq: list[np.ndarray], settings: list[CandidateSettings]) -> list[np.ndarray]:
        """``sample`` on one batch whose items share ``_batch_key``."""

    def _sample(self, lq: list[np.ndarray], settings: list[CandidateSettings]) -> list[np.ndarray]:
        results: list[np.ndarray] = [np.empty(0, np.uint8)] * len(lq)
        keys = [self._batch_key(image, item) for image, item in zip(lq, settings)]
        for batch in batches(keys, self.config.batch_size):
            outputs = self._sample_batch([lq[i] for i in batch], [settings[i] for i in batch])
            for index, image in zip(batch, outputs):
                results[index] = image
        return results

    @property
    def has_lora(self) -> bool:
        """Whether the trainable adapter exists (added by ``trainable_parameters`` or ``load_lora``)."""
        return ADAPTER in getattr(self.unet, "peft_config", {})

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The LoRA parameters of the UNet, the only ones that train; adds the adapter on first call.

        The adapter (``config.lora``: rank, alpha, target modules) starts with a zero
        up-projection, so the policy equals the reference until the first step. Its
        weights are float32 whatever ``config.dtype`` is.
        """
        if not self.has_lora:
            lora = self.config.lora
            self.unet.add_adapter(
                LoraConfig(
                    r=lora.rank,
                    lora_alpha=lora.alpha or lora.rank,
                    init_lora_weights="gaussian",
                    target_modules=list(lora.target_modules),
                ),
                adapter_name=ADAPTER,
            )
        return self._adapter_parameters()

    def _adapter_parameters(self) -> list[torch.nn.Parameter]:
        params = []
        for name, param in self.unet.named_parameters():
            param.requires_grad_(f".{ADAPTER}." in name and "lora_" in name)
            if param.requires_grad:
                # float32 LoRA weights under a half-precision model (diffusers' cast_training_params):
                # small updates would otherwise round away. peft casts activations to match.
                param.data = param.data.float()
                params.append(param)
        return params

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """Within this block ``predict`` is the reference model: the UNet with the adapter disabled."""
        if not self.has_lora:
            yield
            return
        self.unet.disable_adapters()
        try:
            yield
        finally:
            self.unet.enable_adapters()

    def save_lora(self, directory: str) -> str:
        """Write the adapter to ``<directory>/pytorch_lora_weights.safetensors`` (diffusers format).

        Returns the file's path. Rank, alpha and target modules go into its metadata.
        """
        if not self.has_lora:
            raise ValueError("no LoRA adapter to save: call trainable_parameters() or load_lora() first")
        self.unet.save_lora_adapter(directory, adapter_name=ADAPTER, weight_name=LORA_WEIGHT_NAME)
        return os.path.join(directory, LORA_WEIGHT_NAME)

    def load_lora(self, directory: str) -> None:
        """Replace the adapter with the one ``save_lora`` wrote in `directory`.

        Rank and alpha come from the file's metadata, not from ``config.lora``.
        """
        if not os.path.isfile(os.path.join(directory, LORA_WEIGHT_NAME)):
            raise FileNotFoundError(f"no {LORA_WEIGHT_NAME} in {directory}")
        if self.has_lora:
            self.unet.delete_adapters(ADAPTER)
        self.unet.load_lora_adapter(
            directory, weight_name=LORA_WEIGHT_NAME, prefix=None, adapter_name=ADAPTER, local_files_only=True
        )
        self._adapter_parameters()

    def adapter_digest(self) -> str | None:
        """sha256 of the adapter's current tensors (names and bytes); None without an adapter."""
        if not self.has_lora:
            return None
        digest = hashlib.sha256()
        for name, param in sorted(self.unet.named_parameters(), key=lambda item: item[0]):
            if f".{ADAPTER}." in name:
                digest.update(name.encode("utf-8"))
                digest.update(param.detach().float().cpu().numpy().tobytes())
        return digest.hexdigest()
