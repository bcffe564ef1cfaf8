"""Stages train and evaluate on the test profile: checkpoints in the store, metrics, resume, base vs tuned."""
from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from dspo_core.iqa.protocol import protocol_metrics
from dspo_core.sr import CandidateSettings, TinySDBackbone, TinySDConfig, build_tiny_sd
from dspo_core.train import EVAL_KEYS, TRAIN_KEYS
from pipeline.checkpoints import load_checkpoint_into
from pipeline.config import load_config
from pipeline.evaluation.report import ReportContext, markdown_report
from pipeline.previews import preview_markdown
from pipeline.reading_guide import notice_markdown, random_init_notice
from pipeline.schemas import TRAIN_METRIC_KEYS, TRAIN_METRICS
from pipeline.stage import run_stage
from pipeline.stages import STAGES
from pipeline.stages.evaluate import choose_samples
from storage import DatasetStore

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    store = DatasetStore(str(tmp_path_factory.mktemp("train") / "store"))
    config = load_config("test")
    results = {name: run_stage(STAGES[name], store, config)
               for name in ("ingest", "degrade", "sample", "segment", "score", "rank", "caption", "train", "evaluate")}
    return store, config, results


def test_metric_columns_are_the_trainer_keys():
    assert TRAIN_METRIC_KEYS == TRAIN_KEYS
    assert tuple(f"eval_{key}" for key in TRAIN_METRIC_KEYS[:7]) == EVAL_KEYS


def test_checkpoint_lora_loads_from_the_store_and_changes_outputs(trained):
    store, config, results = trained
    rows = store.read_pandas(results["train"].ref)
    assert list(rows["step"]) == [config.train.train.max_steps] and rows["final"].all()
    row = rows.iloc[0]
    assert row["lora_file"] == "pytorch_lora_weights.safetensors" and len(row["lora_weights"]) > 1000
    lq = np.asarray(Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)))
    settings = [CandidateSettings(seed=1, noise_strength=0.0)]
    backbone = TinySDBackbone()
    base = backbone.sample([lq], settings)[0]
    loaded = load_checkpoint_into(backbone, store, results["train"].ref)
    tuned = backbone.sample([lq], settings)[0]
    assert loaded["checkpoint_id"] == row["checkpoint_id"] and backbone.has_lora
    assert np.abs(base.astype(int) - tuned.astype(int)).max() > 0


def test_train_metrics_and_lineage(trained):
    store, config, results = trained
    manifest = store.manifest(results["train"].ref)
    metrics_ref = manifest["metadata"]["side_outputs"]["train_metrics"]
    assert results["train"].side_outputs == {"train_metrics": metrics_ref}
    assert store.manifest(metrics_ref)["inputs"] == manifest["inputs"]
    row = store.read_pandas(results["train"].ref).iloc[0]
    assert row["train_metrics"] == metrics_ref
    assert sorted(manifest["inputs"]) == sorted(store.resolve(f"{name}@latest")
                                                for name in ("preferences", "sr_candidates", "lq_pairs"))
    assert sorted(row["inputs"]) == sorted(manifest["inputs"])
    metrics = store.read_pandas(metrics_ref)
    assert list(metrics.columns) == TRAIN_METRICS.names
    train = metrics[metrics.split == "train"]
    assert list(train["step"]) == list(range(1, config.train.train.max_steps + 1))
    assert train.iloc[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference at step 0
    assert train[list(TRAIN_METRIC_KEYS)].notna().all().all()
    evals = metrics[metrics.split == "eval"]
    assert list(evals["step"]) == [config.train.train.max_steps] and evals["loss"].notna().all()
    assert evals["grad_norm"].isna().all()
    assert manifest["metadata"]["eval_pairs"] > 0 and manifest["metadata"]["train_pairs"] > 0
    assert store.manifest(metrics_ref)["inputs"] == manifest["inputs"]


def test_rerun_is_a_cache_hit(trained):
    store, config, results = trained
    again = run_stage(STAGES["train"], store, config)
    assert again.cache_hit and again.ref == results["train"].ref


def test_resume_continues_the_step_count(trained):
    store, config, results = trained
    steps = config.train.train.max_steps
    longer = load_config("test", {"train.resume": True, "train.train.max_steps": steps + 2})
    resumed = run_stage(STAGES["train"], store, longer)
    rows = store.read_pandas(resumed.ref)
    first = store.read_pandas(results["train"].ref).iloc[0]
    assert list(rows["step"]) == [steps + 2]
    assert rows.iloc[0]["run_id"] == first["run_id"]
    assert rows.iloc[0]["resumed_from"] == f"{results['train'].ref}:{steps}"
    metrics = store.read_pandas(rows.iloc[0]["train_metrics"])
    assert list(metrics[metrics.split == "train"]["step"]) == [steps + 1, steps + 2]
    assert abs(metrics.iloc[0]["loss"] - math.log(2)) > 1e-6  # the restored LoRA, not a fresh one


def test_evaluate_base_vs_tuned_report(trained):
    store, config, results = trained
    results_df = store.read_pandas(results["evaluate"].ref)
    metrics = config.evaluate.metrics
    manifest = store.manifest(results["evaluate"].ref)["metadata"]
    samples = set(results_df["sample_id"])
    assert samples and len(results_df) == len(samples) * 2 * len(metrics)
    for _, group in results_df.groupby("sample_id"):
        assert set(zip(group.method, group.metric)) == {(m, k) for m in ("base", "tuned") for k in metrics}
    tuned = results_df[results_df.method == "tuned"]
    assert (tuned["step"] == config.train.train.max_steps).all() and results_df.query("method == 'base'")["step"].isna().all()
    assert (tuned["checkpoint_ref"] == results["train"].ref).all()
    assert set(results_df["level"]) == {"image"} and set(results_df["protocol"]) == {"weight-free"}
    assert set(results_df.query("metric == 'psnr'")["options"]) == {'{"color_space": "ycbcr", "test_y_channel": true}'}
    # The test profile has no test split: the val fallback is named.
    assert set(results_df["split"]) == {"val"} and any("'val' instead" in note for note in manifest["notes"])
    for metric in metrics:
        for method in ("base", "tuned"):
            cell = manifest["table"][method][metric]
            values = results_df.query("method == @method and metric == @metric")["value"]
            assert cell["mean"] == pytest.approx(values.mean()) and cell["ci_low"] <= cell["mean"] <= cell["ci_high"]
        assert manifest["table"]["base"][metric]["win_rate"] is None
        assert 0 <= manifest["table"]["tuned"][metric]["win_rate"] <= 1
    assert [m["name"] for m in manifest["methods"]] == ["base", "tuned"]
    assert manifest["methods"][1]["checkpoint_ref"] == results["train"].ref
    assert "| method | checkpoint | PSNR (Y) ↑ | SSIM (Y) ↑ | GMSD ↓ | PIQE ↓ |" in manifest["markdown"]
    assert "NOT the paper's protocol" in manifest["markdown"]
    # tiny-sd built from config: the banner opens the report, the manifest and the preview say so.
    banner = manifest["markdown"].split("\n\n")[1]
    assert banner.startswith("> **Random-init backbone.** The backbone `builtin:tiny-sd/seed=0/")
    assert manifest["random_init_backbone"] is True and manifest["random_init_notice"] in banner
    assert manifest["methods"][0]["weights_id"].startswith("builtin:tiny-sd/")
    assert preview_markdown(store, results["evaluate"].ref).split("\n\n")[2] == banner
    train_manifest = store.manifest(results["train"].ref)["metadata"]
    assert train_manifest["random_init_backbone"] is True
    assert train_manifest["random_init_notice"] == manifest["random_init_notice"]
    report = store.read_pandas(manifest["side_outputs"]["eval_report"]).iloc[0]
    assert report["markdown"] == manifest["markdown"]
    assert [row["method"] for row in csv.DictReader(io.StringIO(report["csv"]))] == ["base", "tuned"]
    grid = Image.open(io.BytesIO(report["grid"]["bytes"]))
    grid.load()
    hr_side = config.degrade.degradation.gt_size
    assert grid.size[0] == 4 * hr_side and grid.size[1] > hr_side


def test_make_run_report_files_are_the_eval_report(trained, tmp_path, monkeypatch):
    """What `make run` leaves in .dspo/report/vN: the same table (report.md, report.csv) and the grid."""
    from flows.cli import write_report

    store, _, results = trained
    monkeypatch.chdir(tmp_path)
    path = write_report(store.uri)
    report = store.read_pandas(store.manifest(results["evaluate"].ref)["metadata"]["side_outputs"]["eval_report"])
    assert path.parent.parent == tmp_path / ".dspo" / "report" and path.read_text().startswith("# eval_report@v")
    assert report.iloc[0]["markdown"] in path.read_text() and "![LQ | base | tuned | HR](grid.png)" in path.read_text()
    assert (path.parent / "report.csv").read_text() == report.iloc[0]["csv"] and (path.parent / "grid.png").is_file()


TABLE = {"base": {"psnr": {"level": "image", "mean": 20.0, "ci_low": 19.0, "ci_high": 21.0, "n": 5, "wins": None,
                           "ties": None, "losses": None, "win_rate": None}},
         "tuned": {"psnr": {"level": "image", "mean": 21.0, "ci_low": 20.0, "ci_high": 22.0, "n": 5, "wins": 3,
                            "ties": 1, "losses": 1, "win_rate": 0.7}}}


def _context(banner: str) -> ReportContext:
    return ReportContext("weight-free", "test", 5, "", banner, 1000, 0, 0.95,
                         {"base": "no LoRA", "tuned": "checkpoints@v1 step 12 (DSPO)"})


def test_report_banner_follows_the_backbone_weights(tmp_path):
    """Built from config: banner at the top; the same tiny SD loaded from a weights folder: none."""
    built = TinySDBackbone()
    notice = random_init_notice(built.base_weights_id)
    assert notice is not None and f"`{built.base_weights_id}`" in notice
    assert random_init_notice(built.describe()["weights_id"]) == notice
    psnr = protocol_metrics("weight-free", ["psnr"])
    report = markdown_report(TABLE, psnr, "base", _context(notice_markdown(notice)))
    assert report.split("\n\n")[:2] == ["## DSPO evaluation: base, tuned (weight-free protocol)",
                                         f"> **Random-init backbone.** {notice}"]
    loaded = TinySDBackbone(TinySDConfig(path=build_tiny_sd(str(tmp_path / "weights"))))
    assert random_init_notice(loaded.base_weights_id) is None
    plain = markdown_report(TABLE, psnr, "base", _context(notice_markdown(random_init_notice(loaded.base_weights_id))
                                                          or ""))
    assert "Random-init" not in plain and plain.split("\n\n")[1].startswith(
        "5 samples of split `test`; whole-image scores against the HR image")
    assert "| tuned | checkpoints@v1 step 12 (DSPO) | 21.00 [20.00, 22.00] |" in plain
    assert "| tuned | 70 % (3/1/1) |" in plain


def test_demo_profile_evaluates_at_least_four_test_samples(tmp_path):
    """The demo photos' content hashes under the demo split: >= 4 test samples, no fallback, and
    enough train samples for the demo's training run (ingest and degrade only)."""
    config = load_config("demo")
    store = DatasetStore(str(tmp_path / "store"))
    lq_pairs = run_stage(STAGES["degrade"], store, config,
                         inputs={"hr_images": run_stage(STAGES["ingest"], store, config).ref}).ref
    label, ids, note = choose_samples(store, lq_pairs, config.evaluate.splits)
    assert (label, note) == ("test", "") and len(ids) >= 4
    splits = store.read_arrow(lq_pairs, columns=["split"]).column("split").to_pylist()
    train_samples = sum(split in config.train.splits for split in splits)
    # At most max_instances pairs per sample: the run must be able to draw max_steps batches.
    most_pairs = train_samples * config.segment.segmenter.postfilter.max_instances * (1 - config.train.eval_fraction)
    assert train_samples >= len(ids) and most_pairs >= config.train.train.max_steps * config.train.train.batch_size


# --------------------------------------------------------------------------- methods side by side, real benchmarks
PHOTOS = ("astronaut", "coffee")


def _benchmark_folders(root):
    """A RealSR-layout and a DRealSR-layout folder, two 64 x 64 HR crops of skimage photos and
    their x4 bicubic LR each (RealSR: Canon/Test/4/<n>_HR.png + <n>_LR4.png; DRealSR:
    Test_x4/test_HR/<n>_x1.png + Test_x4/test_LR/<n>_x4.png)."""
    from skimage import data as skdata

    realsr, drealsr = root / "RealSR" / "Canon" / "Test" / "4", root / "DRealSR" / "Test_x4"
    for folder in (realsr, drealsr / "test_HR", drealsr / "test_LR"):
        folder.mkdir(parents=True)
    for index, name in enumerate(PHOTOS, 1):
        photo = Image.fromarray(getattr(skdata, name)()).convert("RGB")
        for offset, (hr_path, lr_path) in enumerate(
                [(realsr / f"Canon_{index:03d}_HR.png", realsr / f"Canon_{index:03d}_LR4.png"),
                 (drealsr / "test_HR" / f"DSC_{index:04d}_x1.png", drealsr / "test_LR" / f"DSC_{index:04d}_x4.png")]):
            hr = photo.crop((64 * offset + 100, 100, 64 * offset + 164, 164))
            hr.save(hr_path)
            hr.resize((16, 16), Image.BICUBIC).save(lr_path)
    return root / "RealSR", root / "DRealSR"


def test_paired_benchmarks_base_vs_image_dpo_vs_dspo(trained, tmp_path):
    """Done-when of the evaluation: RealSR and DRealSR folders ingested as lq_pairs; base, image-level
    DPO (instance_masks: false) and DSPO tiny checkpoints on the same samples; the table with CIs."""
    from pipeline.paired import ingest_paired

    store, _, results = trained
    dspo_ref = results["train"].ref
    # Image-level Diffusion-DPO on the same preferences (2 steps: the table needs a checkpoint, not a good one).
    image_dpo = run_stage(STAGES["train"], store, load_config("test", {"train.train.instance_masks": False,
                                                                      "train.train.max_steps": 2}))
    assert image_dpo.ref != dspo_ref
    compare = [{"name": "base", "checkpoint": "base"}, {"name": "image-dpo", "checkpoint": image_dpo.ref},
               {"name": "dspo", "checkpoint": "input"}]
    evaluate = load_config("test", {"evaluate.compare": compare, "evaluate.metrics": ["psnr", "ssim"]})
    for folder in _benchmark_folders(tmp_path):
        lq_pairs = ingest_paired(store, str(folder)).ref
        result = run_stage(STAGES["evaluate"], store, evaluate, inputs={"lq_pairs": lq_pairs, "checkpoints": dspo_ref})
        rows = store.read_pandas(result.ref)
        metadata = store.manifest(result.ref)["metadata"]
        sample_ids = set(store.read_pandas(lq_pairs, columns=["sample_id"])["sample_id"])
        assert len(sample_ids) == len(PHOTOS) and metadata["split"] == "test" and not metadata["notes"]
        for method in ("base", "image-dpo", "dspo"):
            assert set(rows.query("method == @method")["sample_id"]) == sample_ids  # the same samples for all
            for metric in ("psnr", "ssim"):
                values = rows.query("method == @method and metric == @metric")["value"]
                cell = metadata["table"][method][metric]
                assert cell["mean"] == pytest.approx(values.mean()) and cell["ci_low"] <= cell["mean"] <= cell["ci_high"]
                assert (cell["win_rate"] is None) == (method == "base")
        records = {record["name"]: record for record in metadata["methods"]}
        assert records["image-dpo"]["checkpoint_ref"] == image_dpo.ref and records["image-dpo"]["instance_masks"] is False
        assert records["dspo"]["checkpoint_ref"] == dspo_ref and records["dspo"]["instance_masks"] is True
        assert records["image-dpo"]["lora_sha256"] != records["dspo"]["lora_sha256"]
        assert records["base"]["weights_id"] == records["dspo"]["weights_id"].split("+lora")[0]
        report = store.read_pandas(metadata["side_outputs"]["eval_report"]).iloc[0]
        table_rows = [line for line in report["markdown"].splitlines() if line.startswith("| ")]
        assert [line.split(" | ")[0] for line in table_rows] == [
            "| method", "| base", "| image-dpo", "| dspo", "| method", "| image-dpo", "| dspo"]
        assert f"{image_dpo.ref} step 2 (image-level DPO)" in report["markdown"]
        assert [row["method"] for row in csv.DictReader(io.StringIO(report["csv"]))] == ["base", "image-dpo", "dspo"]
        grid = Image.open(io.BytesIO(report["grid"]["bytes"]))
        assert grid.size[0] == 5 * 64  # LQ | base | image-dpo | dspo | HR


def test_evaluate_refuses_checkpoints_on_another_base(trained):
    """A checkpoint trained on another tiny SD (build_seed 1) cannot share the table: refused, naming both."""
    import json

    import pyarrow as pa

    from pipeline.schemas import CHECKPOINTS

    store, _, results = trained
    row = store.read_arrow(results["train"].ref).to_pylist()[0]
    train_config = json.loads(row["config"])
    train_config["backbone_config"]["build_seed"] = 1
    crafted = {**row, "config": json.dumps(train_config), "run_id": "run-other-base", "checkpoint_id": "checkpoint-other"}
    other = store.publish("checkpoints", pa.Table.from_pylist([crafted], schema=CHECKPOINTS))
    compare = [{"name": "base", "checkpoint": "base"}, {"name": "other", "checkpoint": other},
               {"name": "dspo", "checkpoint": "input"}]
    with pytest.raises(ValueError, match=f"method 'dspo' \\({results['train'].ref}\\) was trained on backbone "
                                         f"tiny-sd .* method 'other' \\({other}\\) on tiny-sd"):
        run_stage(STAGES["evaluate"], store, load_config("test", {"evaluate.compare": compare}),
                  inputs={"checkpoints": results["train"].ref})


def test_evaluate_with_a_missing_metric_weight_fails_naming_the_file(trained, tmp_path, monkeypatch):
    """FID's Inception weights are not here: an error naming the file, before any sampling, nothing published."""
    from dspo_core.iqa.weights import MissingWeightsError

    store, _, results = trained
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    before = store.versions("eval_results")
    with pytest.raises(MissingWeightsError, match="pt_inception-2015-12-05-6726825d.pth"):
        run_stage(STAGES["evaluate"], store, load_config("test", {"evaluate.protocol": "osediff",
                                                                  "evaluate.metrics": ["psnr", "ssim", "fid"]}),
                  inputs={"checkpoints": results["train"].ref})
    assert store.versions("eval_results") == before
