"""The paper's core claim on the tiny backbone: instance-level DSPO does not learn a planted
local artifact that image-level Diffusion-DPO learns (bench/instance_vs_image.py, small).

Setup: the image-level winner has a stripe artifact in instance A (top-left quadrant) and the
loser is blurred outside A. After the same training (steps, images per step, lr, beta, LoRA
init), the share of held-out pairs whose implicit reward (z on the A mask, policy vs reference)
prefers the artifact-free side must be clearly higher for DSPO than for image-level DPO, and
DSPO must not lose the preference on B (the pipeline's B pairs) that image-level DPO learns.
Observed with SMALL over seeds 0-4 (16 held-out pairs, accuracy steps of 0.0625):
A accuracy image-DPO 0.00-0.06 vs DSPO 0.88-1.00 (margins -44..-33 vs +12..+17); "A only"
0.00 vs 0.88-1.00; B accuracy image-DPO 0.94-1.00 vs DSPO 0.94-1.00, DSPO at most one pair
lower, both B margins +8.6..+12.6. The thresholds leave wide room below that; the test runs
seed 0 (deterministic), so only a change of the code can move it. "B only" is not asserted:
neither method learned it at this size (bench/instance_vs_image.py, "Measurement").
"""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import instance_vs_image as ivi

torch.set_num_threads(1)

SMALL = {"steps": 30, "n_train": 48, "n_eval": 16, "batch_size": 8}
MIN_ACC_GAIN_A = 0.5  # 8 of 16 held-out pairs
MAX_ACC_LOSS_B = 0.125  # 2 of 16 held-out pairs


@pytest.mark.timeout(180)
def test_dspo_prefers_the_artifact_free_instance_more_than_image_dpo(tmp_path):
    model_dir = ivi.build_tiny_sd(str(tmp_path / "tiny"), seed=0)
    res = ivi.run(seed=0, model_dir=model_dir, **SMALL)
    image, dspo = res["image"], res["dspo"]
    for test in ("A", "A only"):  # the pipeline's A pairs, and the artifact alone
        assert dspo[test]["acc"] - image[test]["acc"] >= MIN_ACC_GAIN_A, (test, image[test], dspo[test])
        assert image[test]["margin"] < 0 < dspo[test]["margin"], (test, image[test], dspo[test])
    assert dspo["B"]["acc"] >= image["B"]["acc"] - MAX_ACC_LOSS_B, (image["B"], dspo["B"])
    assert dspo["B"]["margin"] > 0 and image["B"]["margin"] > 0, (image["B"], dspo["B"])


TEXT_WIRING = {"steps": 3, "n_train": 8, "n_eval": 4, "batch_size": 4}


@pytest.mark.timeout(120)
def test_text_modes_train_with_the_feedback_text_and_are_measured_with_and_without_it(tmp_path):
    """The bench's text arm: DSPO trained with prompt + negative text (each pair's caption and
    the loser's flaw) is a different model from DSPO without text, and its held-out z depends on
    the text it is measured with. Which way the text moves A's accuracy is the bench's finding
    (README), not asserted: a handful of steps here only checks that the text is used."""
    model_dir = ivi.build_tiny_sd(str(tmp_path / "tiny"), seed=0)
    res = ivi.run(seed=0, model_dir=model_dir, text_modes=("none", "prompt+negative"), **TEXT_WIRING)
    assert set(res) == {"image", "dspo", "dspo:prompt+negative", "dspo:prompt+negative, no text"}
    with_text, without = res["dspo:prompt+negative"]["A"]["z"], res["dspo:prompt+negative, no text"]["A"]["z"]
    assert not torch.allclose(with_text, without)
    assert not torch.allclose(without, res["dspo"]["A"]["z"])  # the texts changed what was learned
    pairs = ivi.instance_pairs(ivi.make_items(1, ivi.TRAIN_SOURCES, 0))
    assert [(pair.positive_text, pair.negative_text) for pair in pairs] == [
        ("a photo of astronaut", ivi.ARTIFACT_TEXT), ("a photo of astronaut", ivi.BLUR_TEXT)]
