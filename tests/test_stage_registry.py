"""The stage registry: entries agree with their classes, and reading the DAG imports no models."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.stages import PIPELINE_ORDER, STAGE_SPECS, STAGES, StageRegistry, StageSpec

ROOT = Path(__file__).resolve().parent.parent


def test_every_entry_matches_its_class():
    assert list(STAGES) == list(PIPELINE_ORDER) == list(STAGE_SPECS)
    for name, spec in STAGE_SPECS.items():
        stage = STAGES[name]
        assert (stage.name, stage.output, tuple(stage.inputs), tuple(stage.optional_inputs)) == (
            spec.name, spec.output, spec.inputs, spec.optional_inputs)
        assert STAGES[name] is stage


def test_an_entry_that_disagrees_with_its_class_is_refused():
    wrong = StageSpec("degrade", "not_lq_pairs", ("hr_images",), "pipeline.stages.degrade:DegradeStage")
    with pytest.raises(RuntimeError, match="disagrees with pipeline.stages.degrade:DegradeStage"):
        StageRegistry({"degrade": wrong})["degrade"]


def test_flow_definitions_import_no_model_library():
    code = ("import sys, flows.stage_flows, flows.parent; "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'pyiqa') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
