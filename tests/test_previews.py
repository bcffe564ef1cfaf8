"""pipeline.previews on a small chain lq_pairs -> sr_candidates -> instances -> pairs/preferences,
linked by manifest lineage as the stages link them (no Prefect, no models)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from dspo_core.segment import rle
from pipeline.previews import manifest_summary, preview_markdown
from storage import IMAGE_TYPE, DatasetStore, image_cell

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
