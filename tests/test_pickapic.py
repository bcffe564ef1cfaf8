"""`dspo datasets pull preferences@vN --format pickapic`: the folder loads in HF `datasets` as
diffusers' Diffusion-DPO script loads Pick-a-Pic, and its preprocessing puts the winner first."""
from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from pipeline.config import load_config
from pipeline.pickapic import to_pickapic
from pipeline.stage import run_stage
from pipeline.stages import STAGES
from storage import DatasetStore, StoreError, decode_image

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def captioned(tmp_path_factory):
    store = DatasetStore(str(tmp_path_factory.mktemp("pickapic") / "store"))
    config = load_config("test")
    for name in ("ingest", "degrade", "sample", "segment", "score", "rank"):
        run_stage(STAGES[name], store, config)
    return store, run_stage(STAGES["caption"], store, config).ref


def diffusers_preprocess(examples: dict) -> dict:
    """The steps of train_diffusion_dpo.py's preprocess_train, minus resizing and tokenising:
    open both columns from bytes, concatenate on channels, swap when label_0 == 0."""
    all_pixel_values = []
    for col_name in ["jpg_0", "jpg_1"]:
        images = [Image.open(io.BytesIO(im_bytes)).convert("RGB") for im_bytes in examples[col_name]]
        all_pixel_values.append([torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1) for image in images])
    combined = []
    for im_tup, label_0 in zip(zip(*all_pixel_values), examples["label_0"]):
        if label_0 == 0:
            im_tup = im_tup[::-1]
        combined.append(torch.cat(im_tup, dim=0))
    examples["pixel_values"] = combined
    examples["captions"] = list(examples["caption"])
    return examples


def test_pull_pickapic_loads_like_pick_a_pic_and_puts_the_winner_first(captioned, tmp_path):
    import datasets
    from typer.testing import CliRunner

    from flows.cli import app

    store, ref = captioned
    out = tmp_path / "pickapic"
    result = CliRunner().invoke(app, ["datasets", "pull", ref, "--format", "pickapic", "--to", str(out),
                                      "--store", store.uri])
    assert result.exit_code == 0, result.output
    train = datasets.load_dataset(str(out), split="train")
    preferences = store.read_pandas(ref).set_index("pair_id")
    assert len(train) == len(preferences) and len(train) > 0
    assert set(train.unique("label_0")) <= {0.0, 1.0}
    candidates = store.read_pandas("sr_candidates@latest").set_index("candidate_id")["image"]
    processed = train.with_transform(diffusers_preprocess)
    for index in range(len(train)):
        row, example = train[index], processed[index]
        winner = np.asarray(decode_image(candidates[row["winner_id"]]).convert("RGB"))
        loser = np.asarray(decode_image(candidates[row["loser_id"]]).convert("RGB"))
        channels = example["pixel_values"].permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(channels[..., :3], winner)
        np.testing.assert_array_equal(channels[..., 3:], loser)
        assert example["captions"] == preferences.loc[row["pair_id"], "positive_text"]
        mask = np.asarray(Image.open(io.BytesIO(row["mask"]))) > 0
        assert mask.shape == winner.shape[:2] and mask.any()
        assert Image.open(io.BytesIO(row["lq"])).size == (32, 32)
        assert row["instance_id"] == preferences.loc[row["pair_id"], "instance_id"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["pickapic"]["rows"] == len(train) and manifest["pickapic"]["dropped_ties"] == 0
    assert set(train[0]) >= {"lq", "mask", "instance_id", "weight", "margin", "source", "negative_caption",
                             "lq_pairs_ref", "sr_candidates_ref"}


def test_ties_are_dropped_and_counted(captioned, tmp_path):
    store, ref = captioned
    table = store.read_arrow(ref)
    assert table.num_rows >= 2
    tied = table.set_column(table.schema.get_field_index("loser_id"), "loser_id", table.column("winner_id"))
    half = table.num_rows // 2
    mixed = pa.concat_tables([table.slice(0, half), tied.slice(half)])
    tied_ref = store.publish("preferences_tied", mixed, inputs=store.manifest(ref)["inputs"], fingerprint="tied-test")
    report = to_pickapic(store, tied_ref, str(tmp_path / "tied"))
    assert report["rows"] == half and report["dropped_ties"] == table.num_rows - half
    with pytest.raises(StoreError, match="not empty"):
        to_pickapic(store, tied_ref, str(tmp_path / "tied"))
