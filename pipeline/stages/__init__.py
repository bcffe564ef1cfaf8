"""The stages: the one place each stage's datasets are declared, and the DAG they make.

    STAGES["degrade"]                  # the DegradeStage (its module imported on first access)
    PIPELINE_ORDER                     # ("ingest", "degrade", ...), from the declared inputs
    pinned_inputs("score", outputs)    # the refs of earlier outputs that score reads

A `StageSpec` names the stage, the datasets it reads and writes, and its class. The class
does not repeat them: it is built from its spec (`Stage(spec)`). Code that only needs the DAG
(the parent flow, `dspo up`, the flow definitions, prefect.yaml's check) reads the specs and
imports no stage module, so no model library (torch, diffusers, ...) is loaded until a stage runs.
Adding a stage: a module in this package and one `StageSpec` line here; its flow and its
prefect.yaml deployment follow from it (`tests/test_flows.py` checks prefect.yaml).
"""
from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

from pipeline.stage import Stage, StageSpec

DECLARED = (
    StageSpec("ingest", ("hr_images",), (), "pipeline.stages.ingest:IngestStage"),
    StageSpec("degrade", ("lq_pairs",), ("hr_images",), "pipeline.stages.degrade:DegradeStage"),
    StageSpec("sample", ("sr_candidates",), ("lq_pairs",), "pipeline.stages.sample:SampleStage", gpu=True),
    StageSpec("segment", ("instances",), ("lq_pairs",), "pipeline.stages.segment:SegmentStage", gpu=True),
    StageSpec("score", ("instance_scores",), ("lq_pairs", "sr_candidates", "instances"),
              "pipeline.stages.score:ScoreStage", gpu=True),
    StageSpec("rank", ("pairs",), ("instance_scores", "instances"), "pipeline.stages.rank:RankStage",
              optional_inputs=("human_labels",)),
    StageSpec("caption", ("preferences",), ("pairs", "instance_scores", "sr_candidates", "lq_pairs", "instances"),
              "pipeline.stages.caption:CaptionStage"),
    StageSpec("train", ("checkpoints", "train_metrics"), ("preferences", "sr_candidates", "lq_pairs"),
              "pipeline.stages.train:TrainStage", gpu=True),
    StageSpec("evaluate", ("eval_results", "eval_report"), ("lq_pairs", "checkpoints"),
              "pipeline.stages.evaluate:EvaluateStage", gpu=True),
)


def topological_order(specs: tuple[StageSpec, ...]) -> tuple[str, ...]:
    """Stage names so that each comes after the stages producing its inputs (ties: declaration
    order). Refuses an input no stage produces, a dataset two stages produce, and cycles."""
    producer: dict[str, str] = {}
    for spec in specs:
        for dataset in spec.outputs:
            if dataset in producer:
                raise ValueError(f"dataset {dataset!r} is published by both {producer[dataset]!r} and {spec.name!r}")
            producer[dataset] = spec.name
    needs: dict[str, set[str]] = {}
    for spec in specs:
        missing = [dataset for dataset in spec.inputs if dataset not in producer]
        if missing:
            raise ValueError(f"stage {spec.name!r} reads {missing}, which no stage publishes")
        needs[spec.name] = {producer[dataset] for dataset in spec.inputs}
    order: list[str] = []
    while len(order) < len(specs):
        ready = [spec.name for spec in specs if spec.name not in order and needs[spec.name] <= set(order)]
        if not ready:
            raise ValueError(f"stages {sorted(set(needs) - set(order))} depend on each other in a cycle")
        order.append(ready[0])
    return tuple(order)


#: The whole DAG in dependency order.
PIPELINE_ORDER = topological_order(DECLARED)
STAGE_SPECS: dict[str, StageSpec] = {name: next(s for s in DECLARED if s.name == name) for name in PIPELINE_ORDER}


def pinned_inputs(name: str, outputs: dict[str, str]) -> dict[str, str]:
    """The refs among `outputs` (dataset -> ref of what earlier stages of this run published)
    that stage `name` reads: a pipeline run pins each input to the version made in that run."""
    spec = STAGE_SPECS[name]
    accepted = (*spec.inputs, *spec.optional_inputs)
    return {dataset: ref for dataset, ref in outputs.items() if dataset in accepted}


class StageRegistry(Mapping[str, Stage]):
    """Stage objects by name, each built from its spec (its module imported) on first access."""

    def __init__(self, specs: dict[str, StageSpec]):
        self._specs = specs
        self._built: dict[str, Stage] = {}

    def __getitem__(self, name: str) -> Stage:
        if name not in self._built:
            spec = self._specs[name]
            module, _, attribute = spec.target.partition(":")
            self._built[name] = getattr(importlib.import_module(module), attribute)(spec)
        return self._built[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)


STAGES: Mapping[str, Stage] = StageRegistry(STAGE_SPECS)
