"""OSEDiff's released checkpoint format, read onto (and written from) a diffusers SD-2 UNet and VAE.

OSEDiff (Wu et al. 2024, github cswry/OSEDiff) publishes its one-step SR model as one torch
pickle (``preset/models/osediff.pkl``) holding LoRA adapters for Stable Diffusion 2.1 base, a
dict with these keys (written by its ``OSEDiff_gen.save_model``, read by ``OSEDiff_test.load_ckpt``):

    unet_lora_encoder_modules   UNet module names of the adapter "default_encoder" (down blocks, conv_in)
    unet_lora_decoder_modules   ... of "default_decoder" (up blocks, conv_out)
    unet_lora_others_modules    ... of "default_others" (the mid block)
    vae_lora_encoder_modules    VAE module names of the VAE adapter "default_encoder" (encoder, quant_conv)
    rank_unet, rank_vae         LoRA ranks
    state_dict_unet             every UNet state entry whose name holds "lora" or "conv_in" (conv_in
                                trains whole, so its base weights are replaced too), peft names
                                (``conv_in.base_layer.weight``, ``...to_q.lora_A.default_encoder.weight``)
    state_dict_vae              every VAE state entry whose name holds "lora"

The adapters are peft ``LoraConfig(r=rank, target_modules=...)`` without ``lora_alpha``, so
peft's default alpha 8 applies: every update is ``W + (8 / rank) * B @ A``. ``apply_osediff``
adds them exactly so, copies the tensors, then merges them into the base weights (OSEDiff's
``merge_and_unload_lora`` option): the DSPO adapter then trains on top of a plain UNet whose
reference (adapter disabled) is the OSEDiff model. ``save_osediff_checkpoint`` writes the same
format with OSEDiff's module selection rules (``osediff_unet_modules`` / ``osediff_vae_modules``);
tests and the full-shape bench use it on random-init models.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from peft import LoraConfig

#: UNet adapter name -> the checkpoint key listing its modules.
UNET_ADAPTERS = {
    "default_encoder": "unet_lora_encoder_modules",
    "default_decoder": "unet_lora_decoder_modules",
    "default_others": "unet_lora_others_modules",
}
VAE_ADAPTER = "default_encoder"
VAE_MODULES_KEY = "vae_lora_encoder_modules"
REQUIRED_KEYS = (*UNET_ADAPTERS.values(), VAE_MODULES_KEY, "rank_unet", "rank_vae", "state_dict_unet", "state_dict_vae")
#: peft's LoraConfig default, which OSEDiff relies on (it never sets lora_alpha); pinned here so a
#: peft release with another default cannot change the loaded model.
OSEDIFF_LORA_ALPHA = 8.0
# Substrings of the parameter names OSEDiff adapts (its initialize_unet / initialize_vae).
UNET_PATTERNS = ("to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_in", "conv_shortcut",
                 "conv_out", "proj_out", "proj_in", "ff.net.2", "ff.net.0.proj")
VAE_PATTERNS = ("conv1", "conv2", "conv_in", "conv_shortcut", "conv", "conv_out", "to_k", "to_q", "to_v", "to_out.0")


class InvalidOSEDiffCheckpointError(ValueError):
    """The file is not an OSEDiff checkpoint, or does not fit the model it is applied to."""


@dataclass(frozen=True)
class OSEDiffCheckpoint:
    """An OSEDiff checkpoint as read from disk.

    unet_modules: UNet adapter name -> its target module names; vae_modules: the VAE adapter's;
    rank_unet / rank_vae: LoRA ranks; state_unet / state_vae: the stored tensors by peft name.
    """

    path: str
    unet_modules: dict[str, list[str]]
    vae_modules: list[str]
    rank_unet: int
    rank_vae: int
    state_unet: dict[str, torch.Tensor]
    state_vae: dict[str, torch.Tensor]

    def describe(self) -> dict:
        """JSON-ready summary: ranks, alpha, adapted module counts per adapter, stored tensors."""
        return {
            "rank_unet": self.rank_unet,
            "rank_vae": self.rank_vae,
            "lora_alpha": OSEDIFF_LORA_ALPHA,
            "unet_modules": {name: len(set(modules)) for name, modules in self.unet_modules.items()},
            "vae_modules": len(set(self.vae_modules)),
            "unet_tensors": len(self.state_unet),
            "vae_tensors": len(self.state_vae),
        }


def read_osediff_checkpoint(path: str) -> OSEDiffCheckpoint:
    """Read an OSEDiff ``.pkl`` (tensors and lists only: loaded with ``weights_only=True``, on the CPU).

    Raises:
        FileNotFoundError: no file at `path`.
        InvalidOSEDiffCheckpointError: not a dict with every key of ``REQUIRED_KEYS``.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"OSEDiff checkpoint {path} not found; set osediff_path to the osediff.pkl file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:  # not a torch file we can read
        raise InvalidOSEDiffCheckpointError(f"{path} is not a readable torch checkpoint ({exc})") from None
    missing = [key for key in REQUIRED_KEYS if not isinstance(data, dict) or key not in data]
    if missing:
        raise InvalidOSEDiffCheckpointError(
            f"{path} is not an OSEDiff checkpoint: missing {', '.join(missing)} (expected the keys of "
            "OSEDiff's save_model: unet_lora_*_modules, vae_lora_encoder_modules, rank_*, state_dict_*)"
        )
    return OSEDiffCheckpoint(
        path=path,
        unet_modules={adapter: list(data[key]) for adapter, key in UNET_ADAPTERS.items()},
        vae_modules=list(data[VAE_MODULES_KEY]),
        rank_unet=int(data["rank_unet"]),
        rank_vae=int(data["rank_vae"]),
        state_unet=dict(data["state_dict_unet"]),
        state_vae=dict(data["state_dict_vae"]),
    )


def _lora_config(rank: int, modules: Iterable[str]) -> LoraConfig:
    return LoraConfig(r=rank, lora_alpha=OSEDIFF_LORA_ALPHA, init_lora_weights="gaussian",
                      target_modules=sorted(set(modules)))


def _stored(name: str, with_conv_in: bool) -> bool:
    return "lora" in name or (with_conv_in and "conv_in" in name)


def _copy_state(model: torch.nn.Module, state: dict[str, torch.Tensor], with_conv_in: bool, what: str,
                path: str) -> None:
    params = {name: param for name, param in model.named_parameters() if _stored(name, with_conv_in)}
    missing = sorted(set(params) - set(state))
    if missing:
        raise InvalidOSEDiffCheckpointError(
            f"{path}: {len(missing)} {what} tensors the adapters need are not stored (first: {missing[0]}); "
            "is it a checkpoint for this base model (SD-2.1-base)?"
        )
    with torch.no_grad():
        for name, param in params.items():
            if state[name].shape != param.shape:
                raise InvalidOSEDiffCheckpointError(
                    f"{path}: {what} tensor {name} has shape {tuple(state[name].shape)}, the model's is "
                    f"{tuple(param.shape)}; is it a checkpoint for this base model (SD-2.1-base)?"
                )
            param.copy_(state[name])


def apply_osediff(unet: torch.nn.Module, vae: torch.nn.Module, checkpoint: OSEDiffCheckpoint) -> None:
    """Add OSEDiff's adapters to `unet` and `vae` as its test does, load the tensors, merge them
    into the base weights and remove the adapter layers (in place; float32 models merge exactly)."""
    try:
        for adapter, modules in checkpoint.unet_modules.items():
            unet.add_adapter(_lora_config(checkpoint.rank_unet, modules), adapter_name=adapter)
        vae.add_adapter(_lora_config(checkpoint.rank_vae, checkpoint.vae_modules), adapter_name=VAE_ADAPTER)
    except ValueError as exc:  # peft: a target module the model does not have
        raise InvalidOSEDiffCheckpointError(f"{checkpoint.path}: its modules do not fit this model ({exc})") from None
    _copy_state(unet, checkpoint.state_unet, True, "UNet", checkpoint.path)
    _copy_state(vae, checkpoint.state_vae, False, "VAE", checkpoint.path)
    unet.fuse_lora(adapter_names=list(UNET_ADAPTERS))
    unet.unload_lora()
    vae.fuse_lora(adapter_names=[VAE_ADAPTER])
    vae.unload_lora()


def osediff_unet_modules(unet: torch.nn.Module) -> dict[str, list[str]]:
    """OSEDiff's UNet targets: every weight (not bias, not norm) whose name holds one of
    ``UNET_PATTERNS``, grouped by place: down blocks and conv_in (encoder), up blocks and conv_out
    (decoder), the rest (others). Adapter name -> module names, in parameter order."""
    groups: dict[str, list[str]] = {adapter: [] for adapter in UNET_ADAPTERS}
    for name, _ in unet.named_parameters():
        if "bias" in name or "norm" in name or not any(pattern in name for pattern in UNET_PATTERNS):
            continue
        module = name.removesuffix(".weight")
        if "down_blocks" in name or "conv_in" in name:
            groups["default_encoder"].append(module)
        elif "up_blocks" in name or "conv_out" in name:
            groups["default_decoder"].append(module)
        else:
            groups["default_others"].append(module)
    return groups


def osediff_vae_modules(vae: torch.nn.Module) -> list[str]:
    """OSEDiff's VAE targets: the encoder's weights (not bias, not norm) whose name holds one of
    ``VAE_PATTERNS``, and quant_conv (not post_quant_conv), in parameter order."""
    modules = []
    for name, _ in vae.named_parameters():
        if "bias" in name or "norm" in name:
            continue
        in_encoder = "encoder" in name and any(pattern in name for pattern in VAE_PATTERNS)
        if in_encoder or ("quant_conv" in name and "post_quant_conv" not in name):
            modules.append(name.removesuffix(".weight"))
    return modules


def save_osediff_checkpoint(path: str, unet: torch.nn.Module, vae: torch.nn.Module, rank: int = 4,
                            seed: int = 0, std: float = 0.02) -> str:
    """Write an OSEDiff-format checkpoint for `unet` and `vae` with random adapter weights.

    Adds the adapters to the given models (in place: pass models loaded for this), fills every
    ``lora_A`` / ``lora_B`` tensor and conv_in's weights with seeded Gaussian values (std `std`
    for the LoRA factors; conv_in is perturbed by the same std, as training would move it) and saves
    the dict OSEDiff's ``save_model`` writes. Returns `path`.
    """
    unet_modules, vae_modules = osediff_unet_modules(unet), osediff_vae_modules(vae)
    for adapter, modules in unet_modules.items():
        unet.add_adapter(_lora_config(rank, modules), adapter_name=adapter)
    vae.add_adapter(_lora_config(rank, vae_modules), adapter_name=VAE_ADAPTER)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for model, with_conv_in in ((unet, True), (vae, False)):
            for name, param in model.named_parameters():
                if _stored(name, with_conv_in):
                    noise = torch.randn(param.shape, generator=generator) * std
                    param.copy_(noise if "lora" in name else param.float() + noise)
    record = {
        VAE_MODULES_KEY: vae_modules,
        **{key: unet_modules[adapter] for adapter, key in UNET_ADAPTERS.items()},
        "rank_unet": rank,
        "rank_vae": rank,
        "state_dict_unet": {k: v for k, v in unet.state_dict().items() if _stored(k, True)},
        "state_dict_vae": {k: v for k, v in vae.state_dict().items() if _stored(k, False)},
    }
    torch.save(record, path)
    return path
