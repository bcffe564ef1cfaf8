"""Caches keyed on data, not version numbers: a forced stage that republishes identical data
leaves every downstream stage a cache hit (the real stages, test profile, ingest -> caption)."""
from __future__ import annotations

import torch

from pipeline.config import load_config
from pipeline.stage import run_stage
from pipeline.stages import PIPELINE_ORDER, STAGES, pinned_inputs
from storage import DatasetStore

torch.set_num_threads(1)
THROUGH_CAPTION = PIPELINE_ORDER[:PIPELINE_ORDER.index("caption") + 1]


def run_pipeline(store, config):
    """Every stage through caption as `dspo run` chains them: {stage: StageResult}."""
    outputs, results = {}, {}
    for name in THROUGH_CAPTION:
        results[name] = run_stage(STAGES[name], store, config, inputs=pinned_inputs(name, outputs))
        outputs[STAGES[name].output] = results[name].ref
    return results


def test_forcing_a_stage_twice_recomputes_only_that_stage(tmp_path):
    store = DatasetStore(tmp_path.as_uri())
    config = load_config("test")
    first = run_pipeline(store, config)
    assert not any(result.cache_hit for result in first.values())
    for expected, recomputed in (("instances@v2", "instances@v1"), ("instances@v3", "instances@v2")):
        forced = run_stage(STAGES["segment"], store, config, force=True)
        assert forced.ref == expected and forced.identical_to == recomputed
    again = run_pipeline(store, config)
    assert all(result.cache_hit for result in again.values()), {n: r.cache_hit for n, r in again.items()}
    assert again["caption"].ref == first["caption"].ref
    # A downstream stage pinned to the republished version is still a hit, and says which version it is.
    score = run_stage(STAGES["score"], store, config, inputs={"instances": "instances@v3"})
    assert score.cache_hit and score.ref == first["score"].ref
