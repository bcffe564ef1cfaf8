"""Training reads check sha256: a flipped byte in an image column, which keeps each part's
size and row count, fails `load_pairs` with the dataset, version and part named."""
from __future__ import annotations

import pytest
import torch

from pipeline.config import load_config
from pipeline.stage import run_stage
from pipeline.stages import STAGES
from pipeline.stages.train import load_pairs
from storage import ChecksumMismatchError, DatasetStore

torch.set_num_threads(1)


def test_load_pairs_refuses_a_flipped_byte_in_sr_candidates(tmp_path):
    root = str(tmp_path / "store")
    store = DatasetStore(root)
    config = load_config("test")
    refs = {name: run_stage(STAGES[name], store, config).ref
            for name in ("ingest", "degrade", "sample", "segment", "score", "rank", "caption")}
    inputs = {"lq_pairs": refs["degrade"], "sr_candidates": refs["sample"], "preferences": refs["caption"]}
    section = STAGES["train"].section(config)
    train, held = load_pairs(DatasetStore(root), inputs, section)
    assert train or held

    manifest = store.manifest(inputs["sr_candidates"])
    key = f"{manifest['name']}/{manifest['files'][0]['path']}"
    data = bytearray(store.backend.read_file(key))
    data[data.index(b"IDAT") + 20] ^= 0x01  # inside a PNG, stored uncompressed: size and rows unchanged
    store.backend.write_file(key, bytes(data))
    assert DatasetStore(root).read_arrow(inputs["sr_candidates"]).num_rows == manifest["rows"]  # plain reads miss it
    with pytest.raises(ChecksumMismatchError, match=rf"{inputs['sr_candidates']}: part .* sha256"):
        load_pairs(DatasetStore(root), inputs, section)
