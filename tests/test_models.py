"""`dspo models ls | verify | fetch` and s3:// model weights used by a stage, against moto's S3 server."""
from __future__ import annotations

import hashlib
import os

import pytest
import torch
from typer.testing import CliRunner

from dspo_core.segment import save_tiny_sam_checkpoint
from flows.cli import app
from pipeline.config import load_config
from pipeline.model_usage import profile_models, verify_file
from pipeline.stage import run_stage
from pipeline.stages import STAGES
from storage import DatasetStore

torch.set_num_threads(1)


@pytest.fixture
def s3_env(s3_server, s3_bucket, tmp_path, monkeypatch):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DSPO_MODELS", str(tmp_path / "models"))
    checkpoint = save_tiny_sam_checkpoint(tmp_path / "sam_custom_tiny.pth")
    s3_server.client().upload_file(str(checkpoint), s3_bucket, "weights/sam_custom_tiny.pth")
    return f"s3://{s3_bucket}/weights/sam_custom_tiny.pth"


def sam_overrides(checkpoint: str) -> list[str]:
    return [
        "segment.segmenter.name=sam", "segment.segmenter.sam.model_type=custom-tiny",
        f"segment.segmenter.sam.checkpoint={checkpoint}", "segment.segmenter.sam.points_per_side=4",
        "segment.segmenter.sam.pred_iou_thresh=0", "segment.segmenter.sam.stability_score_thresh=0",
        "segment.segmenter.sam.box_nms_thresh=1.0", "segment.fallback=none",
    ]


def test_s3_weights_listed_fetched_and_used(s3_env, tmp_path):
    overrides = sam_overrides(s3_env)
    runner = CliRunner(env={"COLUMNS": "400"})
    listed = runner.invoke(app, ["models", "ls", "--profile", "test", *sum((["--set", o] for o in overrides), [])])
    assert listed.exit_code == 0, listed.output
    assert "segment: SAM" in listed.output and "sam_custom_tiny.pth" in listed.output
    use = next(use for use in profile_models(load_config("test", overrides)) if use.used_by == "segment: SAM")
    assert not use.present and use.if_missing == "error"

    fetched = runner.invoke(app, ["models", "fetch", "--profile", "test", *sum((["--set", o] for o in overrides), [])])
    assert fetched.exit_code == 0, fetched.output
    use = next(use for use in profile_models(load_config("test", overrides)) if use.used_by == "segment: SAM")
    assert use.present and use.size == os.path.getsize(tmp_path / "sam_custom_tiny.pth")

    store = DatasetStore(str(tmp_path / "store"))
    config = load_config("test", overrides)
    for name in ("ingest", "degrade", "segment"):
        result = run_stage(STAGES[name], store, config)
    assert set(store.read_arrow(result.ref, columns=["source"]).column(0).to_pylist()) == {"sam"}
    assert store.manifest(result.ref)["metadata"]["fallback"] is None


def test_verify_checks_hash_prefixes(tmp_path, monkeypatch):
    monkeypatch.setenv("DSPO_MODELS", str(tmp_path))
    content = b"not really a checkpoint"
    good = tmp_path / f"sam_vit_b_{hashlib.sha256(content).hexdigest()[:6]}.pth"
    good.write_bytes(content)
    bad = tmp_path / "sam_vit_b_01ec64.pth"
    bad.write_bytes(content)
    assert verify_file(str(good)) is None
    assert "does not start with 01ec64" in verify_file(str(bad))
    result = CliRunner(env={"COLUMNS": "400"}).invoke(
        app, ["models", "verify", "--profile", "test", "--set", "segment.segmenter.name=sam"])
    assert result.exit_code == 1 and "does not start with 01ec64" in result.output


def test_train_and_evaluate_backbones_listed_with_weights_status(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    repo = tmp_path / "hub" / "models--stabilityai--stable-diffusion-2-1-base"

    def diffusion_uses(profile: str, overrides: list[str]) -> dict:
        uses = profile_models(load_config(profile, overrides))
        return {use.used_by: use for use in uses if use.used_by.startswith(("train:", "evaluate: base"))}

    uses = diffusion_uses("full", [])
    assert set(uses) == {"train: backbone (one-step-sd)", "evaluate: base model (one-step-sd)"}
    for use in uses.values():
        assert (use.model, use.path, use.present, use.if_missing) == ("sd-2-1-base", str(repo), False, "error")
    result = CliRunner(env={"COLUMNS": "400"}).invoke(app, ["models", "ls", "--profile", "full"])
    assert result.exit_code == 0, result.output
    assert "train: backbone (one-step-sd)" in result.output and "evaluate: base model (one-step-sd)" in result.output

    weights = repo / "snapshots" / "0123abc" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"\0" * 1234)
    assert all(use.present and use.size == 1234 for use in diffusion_uses("full", []).values())

    # tiny-sd is built from config (no weights) unless a path is given; a fused LoRA is listed on its own.
    assert diffusion_uses("test", []) == {}
    folder = tmp_path / "tiny"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "config.json").write_text("{}")
    uses = diffusion_uses("test", [f"train.backbone_config.path={folder}",
                                   f"train.backbone_config.lora_path={tmp_path / 'lora'}"])
    assert uses["train: backbone (tiny-sd)"].present and uses["train: backbone (tiny-sd)"].size == 2
    assert uses["evaluate: base model (tiny-sd)"].path == str(folder)
    assert not uses["train: backbone (tiny-sd) LoRA"].present and not uses["evaluate: base model (tiny-sd) LoRA"].present
