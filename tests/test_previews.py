"""pipeline.previews on a small chain lq_pairs -> sr_candidates -> instances -> pairs/preferences,
linked by manifest lineage as the stages link them (no Prefect, no models)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from dspo_core.segment import rle
from pipeline.previews import manifest_summary, preview_markdown
from pipeline.reading_guide import TRAIN_METRIC_READINGS, random_init_metadata
from storage import IMAGE_TYPE, DatasetStore, image_cell

README = Path(__file__).resolve().parent.parent / "README.md"
TINY_SD_WEIGHTS = "builtin:tiny-sd/seed=0/epsilon@sha256:0123456789ab"

SAMPLES = ["s0" * 4, "s1" * 4]
SIZE = 32


def picture(seed: int, side: int = SIZE) -> dict:
    return image_cell(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8))


def half_mask(left: bool) -> dict:
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    if left:
        mask[:, : SIZE // 2] = 1
    else:
        mask[:, SIZE // 2:] = 1
    return rle.encode(mask)


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> tuple[DatasetStore, dict[str, str]]:
    store = DatasetStore(str(tmp_path_factory.mktemp("previews") / "store"))
    refs = {"lq_pairs": store.publish("lq_pairs", pa.table({
        "sample_id": SAMPLES, "scale": [4, 4], "hr": [picture(0), picture(1)],
        "lq": [picture(2, SIZE // 4), picture(3, SIZE // 4)]}))}
    # Stored out of candidate order: the preview sorts them.
    refs["sr_candidates"] = store.publish("sr_candidates", pa.table({
        "candidate_id": ["c1", "c0", "c2"], "sample_id": [SAMPLES[0]] * 3, "candidate_index": [1, 0, 2],
        "backbone": ["bicubic", "realesrgan", "tiny-sd"], "image": [picture(4), picture(5), picture(6)]}),
        inputs=[refs["lq_pairs"]])
    refs["instances"] = store.publish("instances", pa.table({
        "instance_id": ["i0", "i1"], "sample_id": [SAMPLES[0]] * 2, "index": [1, 0],
        "mask": [half_mask(True), half_mask(False)], "source": ["felzenszwalb"] * 2}),
        inputs=[refs["lq_pairs"]])
    pairs = {"sample_id": [SAMPLES[0]] * 2, "instance_id": ["i0", "i1"], "winner_id": ["c0", "c2"],
             "loser_id": ["c1", "missing"], "margin": [0.5, 0.25]}
    refs["pairs"] = store.publish("pairs", pa.table(pairs), inputs=[refs["sr_candidates"], refs["instances"]])
    refs["preferences"] = store.publish("preferences", pa.table({
        **pairs, "hallucination": [True, False], "positive_text": ["sharp | clean", "x"],
        "negative_text": ["invented texture", "y"]}), inputs=[refs["pairs"]])
    yield store, refs
    store.close()


def images_in(text: str) -> int:
    return text.count("data:image/png;base64,")


def test_lq_pairs_show_hr_beside_lq(chain):
    store, refs = chain
    text = preview_markdown(store, refs["lq_pairs"])
    assert text.startswith(f"### {refs['lq_pairs']}\n") and "| sample | HR crop | LQ input |" in text
    assert images_in(text) == 4


def test_candidates_follow_the_lq_input_in_candidate_order(chain):
    store, refs = chain
    text = preview_markdown(store, refs["sr_candidates"])
    assert "| LQ input | #0 realesrgan | #1 bicubic | #2 tiny-sd |" in text
    assert images_in(text) == 4


def test_instances_are_drawn_over_their_anchor(chain):
    store, refs = chain
    text = preview_markdown(store, refs["instances"])
    assert f"| `{SAMPLES[0][:8]}` | 2 | felzenszwalb |" in text
    assert images_in(text) == 2


def test_pairs_skip_a_pair_whose_candidate_is_missing(chain):
    store, refs = chain
    text = preview_markdown(store, refs["pairs"])
    assert "`i0` margin 0.500" in text and "`i1`" not in text
    assert images_in(text) == 2


def test_preferences_show_the_feedback_escaped(chain):
    store, refs = chain
    text = preview_markdown(store, refs["preferences"])
    assert "| instance | winner | loser | feedback |" in text
    assert "hallucination; + sharp \\| clean / - invented texture" in text


def test_other_datasets_show_their_image_columns_or_nothing(chain):
    store, _ = chain
    crops = pa.array([picture(7), None], type=IMAGE_TYPE)
    extra = store.publish("crops_of_a_new_stage", pa.table({"crop": crops, "n": [1, 2]}))
    assert images_in(preview_markdown(store, extra)) == 1
    numbers = store.publish("instance_scores", pa.table({"value": [1.0]}))
    assert preview_markdown(store, numbers) is None


def test_manifest_summary_names_models_and_fallbacks():
    lines = manifest_summary({"segmenter": {"name": "felzenszwalb"}, "fallback": "no SAM checkpoint",
                              "config": {"backbone": "tiny-sd", "backbone_config": {"steps": 1}},
                              "notes": ["CPU"], "rows": 3})
    assert lines == ['segmenter: {"name": "felzenszwalb"}', 'backbone: tiny-sd {"steps": 1}',
                     "fallback: no SAM checkpoint", "note: CPU"]


def checkpoints_with(store: DatasetStore, weights_id: str) -> str:
    """A checkpoints version whose manifest metadata is what the train stage writes for `weights_id`."""
    metadata = {"run_id": "run-1", "steps": [12], "train_pairs": 40, "eval_pairs": 4,
                "side_outputs": {"train_metrics": "train_metrics@v1"}, **random_init_metadata(weights_id),
                "final_metrics": {"eval": {"step": 12, "loss": 0.7, "implicit_acc": 0.4, "margin": 0.02},
                                  "train": {"step": 12, "loss": 0.69, "implicit_acc": 0.5, "margin": 0.01}}}
    return store.publish("checkpoints", pa.table({"step": [12]}), metadata=metadata)


def test_checkpoints_preview_opens_with_the_random_init_banner_and_says_how_to_read_the_metrics(chain):
    store, _ = chain
    text = preview_markdown(store, checkpoints_with(store, TINY_SD_WEIGHTS))
    body = text.split("\n\n", 1)[1]
    assert body.startswith("> **Random-init backbone.** The backbone `builtin:tiny-sd/seed=0/epsilon@sha256:")
    assert "not image quality" in body.split("\n\n")[0]
    assert "40 train / 4 held-out pairs, metrics in `train_metrics@v1`" in text
    assert text.index("| last train | loss | implicit_acc | margin |") < text.index("| last eval | loss |")
    for key, meaning in TRAIN_METRIC_READINGS.items():
        assert f"- `{key}`: {meaning}\n" in text + "\n"
    real = preview_markdown(store, checkpoints_with(store, "/models/sd-x4-upscaler@sha256:0123456789ab"))
    assert "Random-init" not in real and real.split("\n\n")[1].startswith("run `run-1`")


def test_manifest_summary_names_a_random_init_backbone():
    lines = manifest_summary(random_init_metadata(TINY_SD_WEIGHTS + "+lora:dspo@sha256:ba9876543210"))
    assert len(lines) == 1 and lines[0].startswith("random-init backbone: The backbone `builtin:tiny-sd/")
    assert manifest_summary(random_init_metadata("/models/sd-x4-upscaler@sha256:0123456789ab")) == []


def test_eval_preview_shows_the_report_and_the_grid_of_its_side_output(chain):
    store, _ = chain
    report = store.publish("eval_report", pa.table({"grid": pa.array([picture(8, 64)], type=IMAGE_TYPE)}))
    ref = store.publish("eval_results", pa.table({"value": [1.0]}), metadata={
        "markdown": "## DSPO evaluation\n\n> **Random-init backbone.** x\n", "side_outputs": {"eval_report": report},
        "methods": [{"name": "base"}, {"name": "image-dpo"}, {"name": "dspo"}]})
    text = preview_markdown(store, ref)
    assert text.split("\n\n")[1:3] == ["## DSPO evaluation", "> **Random-init backbone.** x"]
    assert "LQ | base | image-dpo | dspo | HR" in text and images_in(text) == 1


def test_readme_reads_the_train_metrics_in_the_words_of_the_previews():
    readme = README.read_text(encoding="utf-8")
    for key, meaning in TRAIN_METRIC_READINGS.items():
        assert f"| `{key}` | {meaning} |" in readme, key
