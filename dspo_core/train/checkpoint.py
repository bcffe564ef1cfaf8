"""Checkpoint files of ``DSPOTrainer`` and the helpers that write and read them.

A checkpoint folder holds:

- ``pytorch_lora_weights.safetensors``: the LoRA adapter in diffusers format
  (``backbone.save_lora``; load with ``backbone.load_lora`` or diffusers' ``load_lora_adapter``),
  or ``unet/`` (``UNet2DConditionModel.save_pretrained``) with ``full_finetune``;
- ``trainable_params.safetensors`` (LoRA only): the trainable tensors under their parameter
  names, restored in place on resume so the optimizer keeps its parameter objects;
- ``trainer_state.pt``: optimizer, LR scheduler and (fp16) grad-scaler states;
- ``trainer_state.json``: step, micro-step, process count and the full ``TrainConfig``;
- ``rng_state_<rank>.pkl``: python, numpy, torch (and CUDA) RNG states of each process.
"""

from __future__ import annotations

import json
import os
import pickle
import random
from collections.abc import Mapping

import numpy as np
import torch
from safetensors.torch import load_file, save_file

TRAINABLE_FILE = "trainable_params.safetensors"
STATE_FILE = "trainer_state.pt"
INFO_FILE = "trainer_state.json"
UNET_DIR = "unet"


def rng_file(rank: int) -> str:
    return f"rng_state_{rank}.pkl"


def capture_rng() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_rng(directory: str, rank: int) -> None:
    with open(os.path.join(directory, rng_file(rank)), "wb") as handle:
        pickle.dump(capture_rng(), handle)


def load_rng(directory: str, rank: int) -> bool:
    """Restore this process's RNG states; False when the checkpoint has none for `rank`."""
    path = os.path.join(directory, rng_file(rank))
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as handle:
        restore_rng(pickle.load(handle))  # our own file, written by save_rng
    return True


def save_tensors(named: Mapping[str, torch.Tensor], path: str) -> None:
    save_file({name: tensor.detach().cpu().contiguous() for name, tensor in named.items()}, path)


def _unet_state_files(directory: str) -> list[str]:
    """The safetensors file(s) of a ``save_pretrained`` UNet folder, sharded or not."""
    single = os.path.join(directory, "diffusion_pytorch_model.safetensors")
    if os.path.isfile(single):
        return [single]
    index = os.path.join(directory, "diffusion_pytorch_model.safetensors.index.json")
    with open(index) as handle:
        files = sorted(set(json.load(handle)["weight_map"].values()))
    return [os.path.join(directory, name) for name in files]


def load_into(params: Mapping[str, torch.nn.Parameter], files: list[str]) -> None:
    """Copy saved tensors into `params` in place (same names, shapes; dtype cast to the parameter's)."""
    saved: dict[str, torch.Tensor] = {}
    for path in files:
        saved.update(load_file(path))
    missing, unexpected = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not match the trainable parameters: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    with torch.no_grad():
        for name, param in params.items():
            if saved[name].shape != param.shape:
                raise ValueError(f"{name}: checkpoint shape {tuple(saved[name].shape)} != {tuple(param.shape)}")
            param.copy_(saved[name].to(param.device, param.dtype))


def trainable_files(directory: str, full_finetune: bool) -> list[str]:
    if full_finetune:
        return _unet_state_files(os.path.join(directory, UNET_DIR))
    return [os.path.join(directory, TRAINABLE_FILE)]


def write_info(directory: str, info: dict) -> None:
    with open(os.path.join(directory, INFO_FILE), "w") as handle:
        json.dump(info, handle, indent=2, sort_keys=True)


def read_info(directory: str) -> dict:
    path = os.path.join(directory, INFO_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {INFO_FILE} in {directory}: not a DSPOTrainer checkpoint")
    with open(path) as handle:
        return json.load(handle)
