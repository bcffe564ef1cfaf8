"""Stages train and evaluate on the test profile: checkpoints in the store, metrics, resume, base vs tuned."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from dspo_core.sr import CandidateSettings, TinySDBackbone, TinySDConfig, build_tiny_sd
from dspo_core.train import EVAL_KEYS, TRAIN_KEYS
from pipeline.checkpoints import load_checkpoint_into
from pipeline.config import load_config
from pipeline.previews import preview_markdown
from pipeline.reading_guide import random_init_notice
from pipeline.schemas import TRAIN_METRIC_KEYS, TRAIN_METRICS
from pipeline.stage import run_stage
from pipeline.stages import STAGES
from pipeline.stages.evaluate import choose_samples, markdown_report
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
    metrics = set(config.evaluate.iqa.metrics)
    manifest = store.manifest(results["evaluate"].ref)["metadata"]
    samples = set(results_df["sample_id"])
    assert samples and len(results_df) == len(samples) * 2 * len(metrics)
    for _, group in results_df.groupby("sample_id"):
        assert set(zip(group.model, group.metric)) == {(m, k) for m in ("base", "tuned") for k in metrics}
    assert (results_df["step"] == config.train.train.max_steps).all()
    # The test profile has no test split: the val fallback is named.
    assert set(results_df["split"]) == {"val"} and any("'val' instead" in note for note in manifest["notes"])
    for metric in metrics:
        mean = manifest["means"][metric]
        assert mean["base"] == pytest.approx(results_df.query("model == 'base' and metric == @metric")["value"].mean())
        assert mean["delta"] == pytest.approx(mean["tuned"] - mean["base"])
    assert "| metric | base | tuned | delta |" in manifest["markdown"] and "psnr" in manifest["markdown"]
    # tiny-sd built from config: the banner opens the report, the manifest and the preview say so.
    banner = manifest["markdown"].split("\n\n")[1]
    assert banner.startswith("> **Random-init backbone.** The backbone `builtin:tiny-sd/seed=0/")
    assert manifest["random_init_backbone"] is True and manifest["random_init_notice"] in banner
    assert manifest["weights"]["base"].startswith("builtin:tiny-sd/")
    assert preview_markdown(store, results["evaluate"].ref).split("\n\n")[2] == banner
    train_manifest = store.manifest(results["train"].ref)["metadata"]
    assert train_manifest["random_init_backbone"] is True
    assert train_manifest["random_init_notice"] == manifest["random_init_notice"]
    report = store.read_pandas(manifest["side_outputs"]["eval_report"]).iloc[0]
    assert report["markdown"] == manifest["markdown"]
    grid = Image.open(io.BytesIO(report["grid"]["bytes"]))
    grid.load()
    hr_side = config.degrade.degradation.gt_size
    assert grid.size[0] == 4 * hr_side and grid.size[1] > hr_side


MEANS = {"psnr": {"base": 20.0, "tuned": 21.0, "delta": 1.0, "lower_better": False, "better": "tuned"}}
CHECKPOINT = {"checkpoint_id": "checkpoint-1", "step": 12}


def test_report_banner_follows_the_backbone_weights(tmp_path):
    """Built from config: banner at the top; the same tiny SD loaded from a weights folder: none."""
    built = TinySDBackbone()
    notice = random_init_notice(built.base_weights_id)
    assert notice is not None and f"`{built.base_weights_id}`" in notice
    assert random_init_notice(built.describe()["weights_id"]) == notice
    report = markdown_report(MEANS, CHECKPOINT, "test", 5, "", notice)
    assert report.split("\n\n")[:2] == ["## DSPO evaluation: checkpoint checkpoint-1 (step 12)",
                                         f"> **Random-init backbone.** {notice}"]
    loaded = TinySDBackbone(TinySDConfig(path=build_tiny_sd(str(tmp_path / "weights"))))
    assert random_init_notice(loaded.base_weights_id) is None
    plain = markdown_report(MEANS, CHECKPOINT, "test", 5, "", random_init_notice(loaded.base_weights_id))
    assert "Random-init" not in plain and plain.split("\n\n")[1] == (
        "5 samples of split `test`; whole-image scores against the HR crop.")


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
