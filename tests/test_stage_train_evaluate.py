"""Stages train and evaluate on the test profile: checkpoints in the store, metrics, resume, base vs tuned."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from dspo_core.sr import CandidateSettings, TinySDBackbone
from dspo_core.train import EVAL_KEYS, TRAIN_KEYS
from pipeline.schemas import TRAIN_METRIC_KEYS, TRAIN_METRICS
from pipeline.config import load_config
from pipeline.stage import run_stage
from pipeline.stages import STAGES
from pipeline.checkpoints import load_checkpoint_into
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
    report = store.read_pandas(manifest["side_outputs"]["eval_report"]).iloc[0]
    assert report["markdown"] == manifest["markdown"]
    grid = Image.open(io.BytesIO(report["grid"]["bytes"]))
    grid.load()
    hr_side = config.degrade.degradation.gt_size
    assert grid.size[0] == 4 * hr_side and grid.size[1] > hr_side
