"""Training checkpoints in the store: finding, reading and loading them, and their archives.

    row = checkpoint_row(store, "checkpoints@v2")            # its highest step
    backbone = build_diffusion_backbone(row_config["backbone"], row_config["backbone_config"])
    load_checkpoint_into(backbone, store, row)              # the LoRA, from the row's bytes

A checkpoints row (schema: pipeline.schemas.CHECKPOINTS) holds the LoRA file inline
(`lora_weights`) and the whole trainer state folder as a tar (`trainer_state`), so another
machine evaluates or resumes a run from the store alone.
"""
from __future__ import annotations

import io
import os
import tarfile
import tempfile

import pyarrow.compute as pc

from dspo_core.sr import DiffusionSRBackbone
from pipeline.weights import build_backbone_with_weights
from pipeline.weights.catalog import resolve_backbone_files
from storage import DatasetStore


def build_diffusion_backbone(name: str, config: dict) -> DiffusionSRBackbone:
    """The backbone `name` from `config` (weights fetched), refused unless it is a diffusion
    backbone: only those have the denoiser interface training and LoRA loading need."""
    backbone = build_backbone_with_weights(name, resolve_backbone_files(config))
    if not isinstance(backbone, DiffusionSRBackbone):
        raise TypeError(f"train needs a diffusion backbone (tiny-sd, one-step-sd, sd-x4-upscaler), not {name!r}")
    return backbone


def latest_checkpoint(store: DatasetStore, run_id: str) -> tuple[str, dict] | None:
    """(ref, row) of the highest-step checkpoint of `run_id` in any checkpoints version (newest wins ties)."""
    if "checkpoints" not in store.datasets():
        return None
    best = None
    for version in store.versions("checkpoints"):
        ref = f"checkpoints@v{version}"
        steps = store.read_arrow(ref, columns=["step"], filter=pc.field("run_id") == run_id).column("step").to_pylist()
        if steps and (best is None or max(steps) >= best[1]):
            best = (ref, max(steps))
    if best is None:
        return None
    rows = store.read_arrow(best[0], filter=(pc.field("run_id") == run_id) & (pc.field("step") == best[1]))
    return best[0], rows.to_pylist()[0]


def checkpoint_row(store: DatasetStore, ref_or_row: str | dict, step: int | None = None) -> dict:
    """A checkpoints row: given, or read from a ref (the given step, else its highest step)."""
    if isinstance(ref_or_row, dict):
        return ref_or_row
    table = store.read_arrow(ref_or_row)
    steps = table.column("step").to_pylist()
    if not steps:
        raise ValueError(f"{store.resolve(ref_or_row)} has no checkpoints")
    wanted = max(steps) if step is None else step
    if wanted not in steps:
        raise ValueError(f"{store.resolve(ref_or_row)} has no checkpoint at step {step} (steps: {sorted(steps)})")
    return table.slice(steps.index(wanted), 1).to_pylist()[0]


def load_checkpoint_into(backbone: DiffusionSRBackbone, store: DatasetStore, ref_or_row: str | dict,
                         step: int | None = None) -> dict:
    """Load a checkpoint's LoRA (from the store) into `backbone`; returns the checkpoints row."""
    row = checkpoint_row(store, ref_or_row, step)
    with tempfile.TemporaryDirectory(prefix="dspo-lora-") as directory:
        with open(os.path.join(directory, row["lora_file"]), "wb") as handle:
            handle.write(row["lora_weights"])
        backbone.load_lora(directory)
    return row


def tar_folder(directory: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name in sorted(os.listdir(directory)):
            archive.add(os.path.join(directory, name), arcname=name)
    return buffer.getvalue()


def untar(data: bytes, directory: str) -> str:
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        archive.extractall(directory, filter="data")  # our own archive; 'data' refuses links and absolute paths
    return directory
