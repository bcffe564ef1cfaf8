"""The stage registry: an explicit dict from stage name to stage, in pipeline order.

Each entry names the stage's class and repeats its datasets, so that code which only needs
the DAG (the parent flow, `dspo up`, the flow definitions) does not import every stage's
models: a stage's module (and torch, diffusers, ... behind it) is imported the first time
`STAGES[name]` is read. The class's own attributes are checked against its entry then.
"""
from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from pipeline.stage import Stage


@dataclass(frozen=True)
class StageSpec:
    """A registry entry: `target` is "module:Class"; the rest mirrors the class attributes."""

    name: str
    output: str
    inputs: tuple[str, ...]
    target: str
    optional_inputs: tuple[str, ...] = ()


STAGE_SPECS: dict[str, StageSpec] = {spec.name: spec for spec in (
    StageSpec("ingest", "hr_images", (), "pipeline.stages.ingest:IngestStage"),
    StageSpec("degrade", "lq_pairs", ("hr_images",), "pipeline.stages.degrade:DegradeStage"),
    StageSpec("sample", "sr_candidates", ("lq_pairs",), "pipeline.stages.sample:SampleStage"),
    StageSpec("segment", "instances", ("lq_pairs",), "pipeline.stages.segment:SegmentStage"),
    StageSpec("score", "instance_scores", ("lq_pairs", "sr_candidates", "instances"),
              "pipeline.stages.score:ScoreStage"),
    StageSpec("rank", "pairs", ("instance_scores", "instances"), "pipeline.stages.rank:RankStage",
              optional_inputs=("human_labels",)),
    StageSpec("caption", "preferences", ("pairs", "instance_scores", "sr_candidates", "lq_pairs", "instances"),
              "pipeline.stages.caption:CaptionStage"),
    StageSpec("train", "checkpoints", ("preferences", "sr_candidates", "lq_pairs"),
              "pipeline.stages.train:TrainStage"),
    StageSpec("evaluate", "eval_results", ("lq_pairs", "checkpoints"), "pipeline.stages.evaluate:EvaluateStage"),
)}


class StageRegistry(Mapping[str, Stage]):
    """`STAGE_SPECS` as stage objects, each built (and its module imported) on first access."""

    def __init__(self, specs: dict[str, StageSpec]):
        self._specs = specs
        self._built: dict[str, Stage] = {}

    def __getitem__(self, name: str) -> Stage:
        if name not in self._built:
            spec = self._specs[name]
            module, _, attribute = spec.target.partition(":")
            stage = getattr(importlib.import_module(module), attribute)()
            declared = (stage.name, stage.output, tuple(stage.inputs), tuple(stage.optional_inputs))
            if declared != (spec.name, spec.output, spec.inputs, spec.optional_inputs):
                raise RuntimeError(f"stage registry entry {spec} disagrees with {spec.target}: "
                                   f"name/output/inputs/optional_inputs {declared}")
            self._built[name] = stage
        return self._built[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)


STAGES: Mapping[str, Stage] = StageRegistry(STAGE_SPECS)

#: The whole DAG in order (ARCHITECTURE.md).
PIPELINE_ORDER = tuple(STAGE_SPECS)
