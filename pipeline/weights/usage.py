"""Which model weights a profile needs, and where each is expected: what `dspo models`
lists, verifies and prefetches.

A use names the stage and component that needs the weights, the catalog entry (see
`pipeline.weights.catalog`) or the configured path / s3:// URI, and what happens when they
are missing (a named fallback, or an error).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from dspo_core.iqa.config import WEIGHT_FREE_METRICS
from dspo_core.iqa.protocol import protocol_metrics
from pipeline.config import PipelineConfig
from pipeline.weights.catalog import (
    BACKBONE_FILE_IDS,
    CATALOG,
    DIFFUSION_BACKBONE_IDS,
    REALESRGAN_VARIANT_IDS,
    SAM_MODEL_TYPE_IDS,
    hf_repo_entry,
    locate,
    resolve_backbone_files,
)
from pipeline.weights.fetch import cache_path, is_fetched


@dataclass(frozen=True)
class ModelUse:
    """One model a profile uses.

    used_by:   "<stage>: <component>", e.g. "sample: candidate source 0 (realesrgan)".
    model:     catalog id, or the configured path / s3:// URI.
    path:      where the weights are (or would be) read from locally; None when no single
               place is known (a learned metric outside the catalog, built from pyiqa's caches).
    present:   whether they are there (a fetched s3:// copy counts).
    size:      bytes present.
    if_missing: what the stage does without them.
    """

    used_by: str
    model: str
    path: str | None
    present: bool
    size: int
    if_missing: str


def _path_use(used_by: str, location: str, if_missing: str) -> ModelUse:
    local = str(cache_path(location)) if location.startswith("s3://") else location
    present = is_fetched(location) if location.startswith("s3://") else os.path.exists(location)
    size = 0
    if present and os.path.isdir(local):
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(local) for f in files)
    elif present:
        size = os.path.getsize(local)
    return ModelUse(used_by, location, local, present, size, if_missing)


def _catalog_use(used_by: str, model_id: str, if_missing: str) -> ModelUse:
    location = locate(model_id)
    return ModelUse(used_by, model_id, location.path, location.present, location.size, if_missing)


def _backbone_uses(used_by: str, backbone: str, config: dict) -> list[ModelUse]:
    """The weights an SR backbone loads: a catalog entry or its configured path, plus a fused LoRA.
    Built-in backbones (bicubic, tiny-sd without a path) load none."""
    uses = []
    configured = config.get("path")
    if backbone == "realesrgan":
        variant = config.get("variant", "x4plus")
        uses.append(_catalog_use(used_by, REALESRGAN_VARIANT_IDS.get(variant, f"realesrgan-{variant}"), "error"))
    elif backbone in DIFFUSION_BACKBONE_IDS and not configured:
        uses.append(_catalog_use(used_by, DIFFUSION_BACKBONE_IDS[backbone], "error"))
    elif configured:
        uses.append(_path_use(used_by, configured, "error"))
    if config.get("lora_path"):
        uses.append(_path_use(f"{used_by} LoRA", config["lora_path"], "error"))
    for key, model_id in BACKBONE_FILE_IDS.items():
        if config.get(key):
            catalogued = resolve_backbone_files({key: config[key]})[key] != config[key]
            uses.append(_catalog_use(f"{used_by} {key}", model_id, "error") if catalogued
                        else _path_use(f"{used_by} {key}", config[key], "error"))
    return uses


def profile_models(config: PipelineConfig) -> list[ModelUse]:
    """Every model weight the profile's stages load, in stage order."""
    uses = []
    for index, source in enumerate(config.sample.sources):
        uses += _backbone_uses(f"sample: candidate source {index} ({source.backbone})", source.backbone, source.config)
    segmenter = config.segment.segmenter
    if segmenter.name == "sam":
        if_missing = "felzenszwalb fallback" if config.segment.fallback == "felzenszwalb" else "error"
        if segmenter.sam.checkpoint:
            uses.append(_path_use("segment: SAM", segmenter.sam.checkpoint, if_missing))
        elif segmenter.sam.model_type in SAM_MODEL_TYPE_IDS:
            uses.append(_catalog_use("segment: SAM", SAM_MODEL_TYPE_IDS[segmenter.sam.model_type], if_missing))
    uses += [_metric_use("score", metric) for metric in config.score.iqa.metrics if metric not in WEIGHT_FREE_METRICS]
    captioner = config.caption.captioner
    if captioner is not None:
        # Without it the caption stage fails (it does not swap in the template writer silently).
        used_by = f"caption: {captioner.kind} ({captioner.name or captioner.model})"
        entry = hf_repo_entry(captioner.model)
        uses.append(_catalog_use(used_by, entry, "error") if entry else _path_use(used_by, captioner.model, "error"))
    train = config.train
    uses += _backbone_uses(f"train: backbone ({train.backbone})", train.backbone, train.backbone_config)
    # evaluate rebuilds the backbone a checkpoint was trained on (from its row); with checkpoints
    # of this profile that is the train section's, so its base weights are needed again there.
    uses += _backbone_uses(f"evaluate: base model ({train.backbone})", train.backbone, train.backbone_config)
    uses += [_metric_use("evaluate", metric.pyiqa_name)
             for metric in protocol_metrics(config.evaluate.protocol, config.evaluate.metrics) if not metric.weight_free]
    return uses


def _metric_use(stage: str, metric: str) -> ModelUse:
    """A learned pyiqa metric: the catalog entry when there is one, else what building it
    offline reports (dspo_core.iqa checks every file pyiqa would download, and never does)."""
    if f"pyiqa-{metric}" in CATALOG:
        return _catalog_use(f"{stage}: metric {metric}", f"pyiqa-{metric}", "error")
    from dspo_core.iqa import missing_weights  # builds the metric: imports torch and pyiqa

    missing = missing_weights(metric)
    return ModelUse(f"{stage}: metric {metric}", f"pyiqa {metric}", missing.path if missing else None,
                    missing is None, 0, "error")
