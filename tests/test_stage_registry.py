"""The stage registry: entries agree with their classes, and reading the DAG imports no models."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.stages import DECLARED, PIPELINE_ORDER, STAGE_SPECS, STAGES, StageSpec, pinned_inputs, topological_order

ROOT = Path(__file__).resolve().parent.parent


def test_every_stage_is_built_from_its_one_declaration():
    assert list(STAGES) == list(PIPELINE_ORDER) == list(STAGE_SPECS)
    for name, spec in STAGE_SPECS.items():
        stage = STAGES[name]
        assert stage.spec is spec and STAGES[name] is stage
        assert (stage.name, stage.output, stage.outputs, stage.inputs, stage.optional_inputs) == (
            spec.name, spec.outputs[0], spec.outputs, spec.inputs, spec.optional_inputs)
        assert list(stage.schemas(stage.section(load_config("test")))) == list(spec.outputs)


def test_pipeline_order_follows_the_declared_inputs():
    position = {name: index for index, name in enumerate(PIPELINE_ORDER)}
    producer = {dataset: spec.name for spec in STAGE_SPECS.values() for dataset in spec.outputs}
    for spec in STAGE_SPECS.values():
        assert all(position[producer[dataset]] < position[spec.name] for dataset in spec.inputs), spec.name
    # Declared in another order, the same DAG comes out in dependency order.
    shuffled = tuple(reversed(DECLARED))
    reordered = topological_order(shuffled)
    assert reordered.index("ingest") == 0 and reordered[-1] == "evaluate"
    assert reordered.index("degrade") < reordered.index("segment") < reordered.index("score")


def test_a_dag_that_cannot_run_is_refused():
    ingest = StageSpec("ingest", ("hr_images",), (), "m:A")
    with pytest.raises(ValueError, match="reads \\['lq_pairs'\\], which no stage publishes"):
        topological_order((ingest, StageSpec("score", ("scores",), ("lq_pairs",), "m:B")))
    with pytest.raises(ValueError, match="published by both 'ingest' and 'again'"):
        topological_order((ingest, StageSpec("again", ("hr_images",), (), "m:B")))
    with pytest.raises(ValueError, match="cycle"):
        topological_order((StageSpec("a", ("x",), ("y",), "m:A"), StageSpec("b", ("y",), ("x",), "m:B")))


def test_pinned_inputs_take_only_what_a_stage_reads():
    outputs = {"hr_images": "hr_images@v1", "lq_pairs": "lq_pairs@v4", "instances": "instances@v2",
               "human_labels": "human_labels@v3", "sr_candidates": "sr_candidates@v2"}
    assert pinned_inputs("segment", outputs) == {"lq_pairs": "lq_pairs@v4"}
    assert pinned_inputs("rank", outputs) == {"instances": "instances@v2", "human_labels": "human_labels@v3"}


def test_flow_definitions_import_no_model_library():
    code = ("import sys, flows.stage_flows, flows.parent; "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'pyiqa') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
