"""The train stage's hold-out is image-disjoint: every pair of a held-out sample is held out
(`pipeline.stages.train.load_pairs`), so no sample has pairs on both sides, and about
`eval_fraction` of the samples (so of the pairs) are held out.

The store holds the three datasets `load_pairs` reads (lq_pairs, sr_candidates, preferences),
with the columns it reads: 300 samples of 8 x 8 candidates, 1 to 5 instance pairs each.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from dspo_core.segment import rle
from pipeline.config import TrainStageConfig
from pipeline.stages.train import load_pairs
from storage import DatasetStore, image_cell

SAMPLES, FRACTION = 300, 0.25


@pytest.fixture(scope="module")
def store_and_inputs(tmp_path_factory):
    rng = np.random.default_rng(0)
    store = DatasetStore(str(tmp_path_factory.mktemp("holdout") / "store"))
    lq = image_cell(rng.integers(0, 256, (2, 2, 3), dtype=np.uint8))
    image = image_cell(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    mask = rle.encode(np.ones((8, 8), bool))
    samples, candidates, preferences = [], [], []
    for index in range(SAMPLES):
        sample_id = f"sample-{index:04d}"
        samples.append({"sample_id": sample_id, "split": "train", "lq": lq})
        candidates += [{"candidate_id": f"{sample_id}-c{k}", "image": image} for k in range(2)]
        preferences += [{"pair_id": f"{sample_id}-p{k}", "sample_id": sample_id, "winner_id": f"{sample_id}-c0",
                         "loser_id": f"{sample_id}-c1", "weight": 1.0, "mask": mask, "positive_text": "",
                         "negative_text": ""} for k in range(int(rng.integers(1, 6)))]
    lq_ref = store.publish("lq_pairs", pa.Table.from_pylist(samples))
    candidates_ref = store.publish("sr_candidates", pa.Table.from_pylist(candidates))
    preferences_ref = store.publish("preferences", pa.Table.from_pylist(preferences),
                                    inputs=[lq_ref, candidates_ref])
    return store, {"lq_pairs": lq_ref, "sr_candidates": candidates_ref, "preferences": preferences_ref}, preferences


def test_held_out_pairs_are_whole_samples_and_about_the_fraction(store_and_inputs):
    store, inputs, preferences = store_and_inputs
    train, held = load_pairs(store, inputs, TrainStageConfig(eval_fraction=FRACTION))
    sample_of = {row["pair_id"]: row["sample_id"] for row in preferences}
    train_samples = {sample_of[pair.pair_id] for pair in train}
    held_samples = {sample_of[pair.pair_id] for pair in held}
    assert len(train) + len(held) == len(preferences)
    assert not train_samples & held_samples
    # All pairs of a held-out sample are held out (a hash per pair would split most samples).
    assert len(held) == sum(sample_of[row["pair_id"]] in held_samples for row in preferences)
    # 300 samples: the share's standard deviation is sqrt(0.25 * 0.75 / 300) = 0.025.
    assert abs(len(held_samples) / SAMPLES - FRACTION) < 0.075
    assert abs(len(held) / len(preferences) - FRACTION) < 0.1
    _, again_held = load_pairs(store, inputs, TrainStageConfig(eval_fraction=FRACTION))
    assert [pair.pair_id for pair in again_held] == [pair.pair_id for pair in held]  # stable


def test_no_hold_out_at_fraction_zero(store_and_inputs):
    store, inputs, preferences = store_and_inputs
    train, held = load_pairs(store, inputs, TrainStageConfig(eval_fraction=0.0))
    assert held == [] and len(train) == len(preferences)
