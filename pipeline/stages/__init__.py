"""The stage registry: an explicit dict from stage name to stage object, in pipeline order."""
from __future__ import annotations

from pipeline.stage import Stage
from pipeline.stages.caption import CaptionStage
from pipeline.stages.degrade import DegradeStage
from pipeline.stages.evaluate import EvaluateStage
from pipeline.stages.ingest import IngestStage
from pipeline.stages.rank import RankStage
from pipeline.stages.sample import SampleStage
from pipeline.stages.score import ScoreStage
from pipeline.stages.segment import SegmentStage
from pipeline.stages.train import TrainStage

STAGES: dict[str, Stage] = {
    stage.name: stage for stage in (
        IngestStage(), DegradeStage(), SampleStage(), SegmentStage(), ScoreStage(), RankStage(), CaptionStage(),
        TrainStage(), EvaluateStage(),
    )
}

#: The whole DAG in order (ARCHITECTURE.md); `dspo run` names the stages not yet in STAGES.
PIPELINE_ORDER = ("ingest", "degrade", "sample", "segment", "score", "rank", "caption", "train", "evaluate")
