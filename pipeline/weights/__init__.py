"""Model weights in one place: the catalog of known weights, where they live, which ones a
profile uses, fetching them from their sources (URLs, the Hugging Face hub, s3://), verifying files,
and building the models that need them.

    roots.py      the folders weights live under ($DSPO_MODELS, HF and torch caches, the wheel)
    catalog.py    the weights catalog: entries, their files, `locate`; SAM file names by model type
    usage.py      which weights a profile's stages load (`profile_models`)
    verify.py     checking present files against their catalog checksum or the sha256 prefix in their names
    fetch.py      what `dspo models fetch` gets (plan_fetch, fetch_item); s3:// weights; backbones built with them
    download.py   one URL into its cache folder: resumable (.part + Range), checksum checked before the rename
    hub.py        a Hugging Face repo at a pinned revision into the HF cache (huggingface_hub)
    segmenter.py  SAM with a local checkpoint, or the named fallback

Importing this package loads no model library (torch, diffusers, pyiqa): flow definitions import it.
"""
from pipeline.weights.catalog import (
    CATALOG,
    DIFFUSION_BACKBONE_IDS,
    KINDS,
    REALESRGAN_VARIANT_IDS,
    SAM_MODEL_TYPE_IDS,
    FileState,
    Location,
    ModelSpec,
    UnknownModelError,
    WeightFile,
    locate,
    locate_all,
    sam_checkpoint_name,
    spec,
)
from pipeline.weights.fetch import (
    WEIGHT_KEYS,
    FetchItem,
    build_backbone_with_weights,
    cache_path,
    fetch_item,
    fetch_weights,
    is_fetched,
    plan_fetch,
)
from pipeline.weights.roots import (
    ROOTS,
    hf_hub_root,
    models_root,
    realesrgan_wheel_root,
    torch_hub_root,
)
from pipeline.weights.segmenter import resolve_segmenter
from pipeline.weights.usage import ModelUse, profile_models
from pipeline.weights.verify import UseCheck, verify_file, verify_use

__all__ = [
    "CATALOG", "DIFFUSION_BACKBONE_IDS", "KINDS", "REALESRGAN_VARIANT_IDS", "ROOTS", "SAM_MODEL_TYPE_IDS",
    "WEIGHT_KEYS", "FetchItem", "FileState", "Location", "ModelSpec", "ModelUse", "UnknownModelError", "UseCheck", "WeightFile",
    "build_backbone_with_weights", "cache_path", "fetch_item", "fetch_weights", "hf_hub_root", "is_fetched", "locate",
    "locate_all", "models_root", "plan_fetch", "profile_models", "realesrgan_wheel_root", "resolve_segmenter",
    "sam_checkpoint_name", "spec", "torch_hub_root", "verify_file", "verify_use",
]
