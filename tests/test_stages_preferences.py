"""Stages score, rank and caption: from candidates and instances to the `preferences` dataset."""
from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from dspo_core.segment import rle
from pipeline.schemas import HUMAN_LABELS
from pipeline.config import load_config
from pipeline.stage import run_stage
from pipeline.stages import STAGES
from storage import DatasetStore, decode_image

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ranked(tmp_path_factory):
    store = DatasetStore(str(tmp_path_factory.mktemp("prefs") / "store"))
    config = load_config("test")
    results = {name: run_stage(STAGES[name], store, config)
               for name in ("ingest", "degrade", "sample", "segment", "score", "rank", "caption")}
    return store, config, results


def test_scores_are_masked_normalised_and_rewarded(ranked):
    store, _, results = ranked
    scores = store.read_pandas(results["score"].ref)
    instances = store.read_pandas("instances@latest")
    candidates = store.read_pandas("sr_candidates@latest")
    per_sample = candidates.groupby("sample_id").size().iloc[0]
    metrics = {"psnr", "ssim", "gmsd", "entropy", "reward", "fr_mean", "nr_mean"}
    assert set(scores["metric"]) == metrics
    assert len(scores) == len(instances) * per_sample * len(metrics)
    # Normalised on each metric's scale over the whole dataset (every shard), recorded in the manifest.
    metadata = store.manifest(results["score"].ref)["metadata"]
    assert metadata["normalisation"]["name"] == "zscore-logistic"
    assert metadata["metric_weights"]["learned"] == [] and "weight-free" in metadata["metric_weights"]["note"]
    assert "rewards noise" in metadata["metric_weights"]["entropy"]
    for metric in ("psnr", "gmsd", "ssim", "entropy"):
        rows = scores[scores.metric == metric]
        scale = metadata["normalisation"]["scales"][metric]
        assert scale["n"] == len(rows) and scale["lower_better"] == (metric == "gmsd")
        assert scale["mean"] == pytest.approx(rows["value"].mean()) and scale["std"] == pytest.approx(rows["value"].std(ddof=0))
        z = (rows["value"] - scale["mean"]) / scale["std"] * (-1 if scale["lower_better"] else 1)
        np.testing.assert_allclose(rows["normalised"], 1 / (1 + np.exp(-z)), rtol=1e-9)
    gmsd = scores[scores.metric == "gmsd"]
    assert gmsd["lower_better"].all()
    for _, group in gmsd.groupby("instance_id"):  # lower raw gmsd = higher normalised
        assert group.set_index("candidate_id").loc[group.loc[group["value"].idxmin(), "candidate_id"],
                                                   "normalised"] == group["normalised"].max()
    reward = scores[scores.metric == "reward"].set_index(["instance_id", "candidate_id"])["value"]
    fr = scores[scores.metric == "fr_mean"].set_index(["instance_id", "candidate_id"])["value"]
    nr = scores[scores.metric == "nr_mean"].set_index(["instance_id", "candidate_id"])["value"]
    np.testing.assert_allclose(reward, 0.5 * fr + 0.5 * nr)
    assert store.manifest(results["score"].ref)["metadata"]["iqa"]["pyiqa_version"]

    # Masked PSNR of one (instance, candidate) by hand: RGB in [0, 1], MSE inside the mask.
    row = scores[scores.metric == "psnr"].iloc[0]
    mask = rle.decode(instances.set_index("instance_id").loc[row.instance_id, "mask"])
    hr = np.asarray(decode_image(store.read_pandas("lq_pairs@latest").set_index("sample_id")
                                 .loc[row.sample_id, "hr"])).astype(np.float64) / 255
    sr = np.asarray(decode_image(candidates.set_index("candidate_id").loc[row.candidate_id, "image"]))
    mse = ((sr.astype(np.float64) / 255 - hr) ** 2)[mask].mean()
    assert row["value"] == pytest.approx(10 * np.log10(1 / (mse + 1e-8)), rel=1e-4)


def test_pairs_best_worst_per_instance(ranked):
    store, _, results = ranked
    pairs = store.read_pandas(results["rank"].ref)
    scores = store.read_pandas(results["score"].ref)
    reward = scores[scores.metric == "reward"]
    assert len(pairs) == pairs["instance_id"].nunique() > 0
    for pair in pairs.itertuples():
        group = reward[reward.instance_id == pair.instance_id].set_index("candidate_id")["value"]
        assert pair.winner_id == group.idxmax() and pair.loser_id == group.idxmin()
        assert pair.margin == pytest.approx(group.max() - group.min()) and pair.source == "iqa"
    weights = store.read_pandas("instances@latest").set_index("instance_id")["weight"]
    np.testing.assert_allclose(pairs["weight"], weights.loc[pairs["instance_id"]].to_numpy())
    metadata = store.manifest(results["rank"].ref)["metadata"]
    assert metadata["counts"]["pairs"] == len(pairs) and (pairs["margin"] >= 0.01).all()
    assert metadata["normalisation"] == store.manifest(results["score"].ref)["metadata"]["normalisation"]


def test_lq_pairs_keep_the_plain_hr_and_the_sharpened_one(ranked):
    from dspo_core.degradation import usm_sharp

    store, config, results = ranked
    assert config.degrade.degradation.gt_usm  # the default, as Real-ESRGAN trains
    rows = store.read_pandas(results["degrade"].ref)
    hr = np.asarray(decode_image(rows.iloc[0]["hr"]))
    np.testing.assert_array_equal(np.asarray(decode_image(rows.iloc[0]["hr_usm"])), usm_sharp(hr))
    assert store.manifest(results["degrade"].ref)["metadata"]["gt_usm"]["enabled"] is True


def test_preferences_and_lineage(ranked):
    store, _, results = ranked
    prefs = store.read_pandas(results["caption"].ref)
    assert len(prefs) == results["rank"].rows
    assert (prefs["feedback_source"] == "template").all()
    assert prefs["negative_text"].str.len().gt(0).all() and prefs["positive_text"].str.len().gt(0).all()
    assert all(isinstance(json.loads(text), dict) for text in prefs["attributes"])
    manifest = store.manifest(results["caption"].ref)
    assert manifest["metadata"]["fallback"] == "template writer (no captioner configured)"
    names = {ref.split("@")[0] for ref in manifest["inputs"]}
    assert names == {"pairs", "instance_scores", "sr_candidates", "lq_pairs", "instances"}


def test_human_labels_rerank_without_rescoring(ranked):
    store, config, results = ranked
    pairs = store.read_pandas(results["rank"].ref)
    reward = store.read_pandas(results["score"].ref).query("metric == 'reward'")
    flipped = pairs.iloc[0]
    # A human prefers the IQA loser over the IQA winner on the first instance, and flags it.
    label = {"label_id": "l1", "sample_id": flipped.sample_id, "instance_id": flipped.instance_id,
             "best": flipped.loser_id, "worst": flipped.winner_id, "hallucination": True,
             "description": "a striped texture that is not in the photo", "mask": None, "annotator": "ann",
             "source": "csv", "labelled_at": dt.datetime(2026, 11, 26, tzinfo=dt.timezone.utc)}
    store.publish("human_labels", pa.Table.from_pylist([label], schema=HUMAN_LABELS))
    again = {name: run_stage(STAGES[name], store, config) for name in ("score", "rank", "caption")}
    assert again["score"].cache_hit and not again["rank"].cache_hit and not again["caption"].cache_hit
    new_pairs = store.read_pandas(again["rank"].ref).set_index("instance_id")
    human = new_pairs.loc[flipped.instance_id]
    assert (human.winner_id, human.loser_id, human.source) == (flipped.loser_id, flipped.winner_id, "human")
    group = reward[reward.instance_id == flipped.instance_id].set_index("candidate_id")["value"]
    assert human.margin == pytest.approx(group[flipped.loser_id] - group[flipped.winner_id])
    prefs = store.read_pandas(again["caption"].ref).set_index("instance_id").loc[flipped.instance_id]
    assert prefs.hallucination and prefs.negative_text == "a striped texture that is not in the photo"
    assert prefs.hallucination_reason == "Flagged as a hallucination by a human annotator."
    assert prefs.feedback_source == "human"
    agreement = store.manifest(again["rank"].ref)["metadata"]["agreement"]
    assert {row["score"]: row["n"] for row in agreement}["reward"] == 1
    assert "human_labels@v1" in store.manifest(again["rank"].ref)["inputs"]


def test_pull_preferences_with_images_as_hf(ranked, tmp_path):
    import datasets
    from typer.testing import CliRunner

    from flows.cli import app

    store, _, results = ranked
    ref = results["caption"].ref
    out = tmp_path / "prefs-hf"
    result = CliRunner().invoke(app, ["datasets", "pull", ref, "--to", str(out), "--format", "hf", "--with-images",
                                      "--store", store.uri])
    assert result.exit_code == 0, result.output
    loaded = datasets.load_from_disk(str(out))
    row = loaded[0]
    assert row["lq"].size == (32, 32) and row["hr"].size == row["winner"].size == row["loser"].size == (128, 128)
    mask = np.asarray(row["mask_image"]) > 0
    np.testing.assert_array_equal(mask, rle.decode(row["mask"]))
    winner = store.read_pandas("sr_candidates@latest").set_index("candidate_id").loc[row["winner_id"], "image"]
    np.testing.assert_array_equal(np.asarray(row["winner"]), np.asarray(decode_image(winner)))
    assert len(loaded) == results["caption"].rows


def test_caption_with_a_real_transformers_captioner(ranked, tmp_path):
    from dspo_core.feedback import build_tiny_captioner

    store, config, results = ranked
    model_dir = build_tiny_captioner(str(tmp_path / "tiny-blip"), kind="blip")
    with_model = load_config("test", {"caption.captioner": {"model": model_dir, "name": "tiny-blip"}})
    result = run_stage(STAGES["caption"], store, with_model, inputs={"pairs": results["rank"].ref})
    prefs = store.read_pandas(result.ref)
    assert (prefs["feedback_source"] == "captioner:tiny-blip").all()
    assert prefs["negative_text"].str.len().gt(0).all()
    metadata = store.manifest(result.ref)["metadata"]
    assert metadata["captioner"] is not None and metadata["fallback"] is None


def test_caption_runs_the_full_profiles_vlm_section_on_a_tiny_qwen_vl(ranked, tmp_path):
    """The full profile's `caption:` (kind vlm, Qwen2.5-VL) with the model swapped for a tiny
    random one: the real VLM path, and every text's writer counted in the manifest."""
    from dspo_core.feedback import build_tiny_qwen_vl

    store, _, results = ranked
    section = load_config("full").caption.model_dump(mode="json")
    assert (section["captioner"]["kind"], section["captioner"]["model"]) == ("vlm", "Qwen/Qwen2.5-VL-7B-Instruct")
    section["captioner"].update(model=build_tiny_qwen_vl(tmp_path / "tiny-qwen"), revision=None, device="cpu",
                                dtype="float32", max_new_tokens=8)
    result = run_stage(STAGES["caption"], store, load_config("test", {"caption": section}),
                       inputs={"pairs": results["rank"].ref})
    prefs = store.read_pandas(result.ref)
    assert len(prefs) > 0 and set(prefs["feedback_source"]) <= {"captioner:qwen2.5-vl-7b", "template"}
    assert prefs["negative_text"].str.len().gt(0).all() and prefs["positive_text"].str.len().gt(0).all()
    metadata = store.manifest(result.ref)["metadata"]
    assert metadata["captioner"]["kind"] == "vlm"
    assert metadata["captioner"]["class"] == "Qwen2_5_VLForConditionalGeneration"
    sources = metadata["feedback_sources"]
    assert sum(sources["negative"].values()) == sum(sources["positive"].values()) == len(prefs)
    templated = sources["negative"].get("template", 0), sources["positive"].get("template", 0)
    assert templated[0] == int((prefs["feedback_source"] == "template").sum())
    if any(templated):  # random weights rarely spell 'wrong: ...': the fallback is named with its counts
        assert result.fallback == metadata["fallback"] == (
            f"template writer for {templated[0]} of {len(prefs)} negative and {templated[1]} of {len(prefs)} "
            "positive texts: the captioner gave no usable text for them")
    else:
        assert metadata["fallback"] is None
