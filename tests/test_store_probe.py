"""The conditional-write probe runs before anything is computed or moved: when a stage job that
is not a cache hit opens its store, and in `tag()`. The service under test is a local backend
that, like s3rver (FIELD-NOTES.md), ignores If-None-Match and If-Match."""
from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.config import load_config
from pipeline.stage import StageJob, run_stage
from storage import ConditionalWriteUnsupportedError, DatasetStore
from storage.backends.local import LocalBackend
from tests.test_stage_framework import SPEC, SquaresStage


class IgnoresConditionalWrites(LocalBackend):
    """Every create and swap overwrites and reports success."""

    def create(self, key: str, data: bytes) -> bool:
        self.write_file(key, data)
        return True

    def swap(self, key: str, data: bytes, token: str | None) -> bool:
        self.write_file(key, data)
        return True


def ignoring_store(root) -> DatasetStore:
    store = DatasetStore(str(root))
    store.backend = IgnoresConditionalWrites(str(root))
    return store


def test_tag_refuses_a_store_that_ignores_conditional_writes(tmp_path):
    honest = DatasetStore(str(tmp_path))
    honest.publish("d", pa.table({"v": [1]}))
    honest.publish("d", pa.table({"v": [2]}))
    honest.tag("d@v1", "paper")
    with pytest.raises(ConditionalWriteUnsupportedError, match="ignores conditional writes"):
        ignoring_store(tmp_path).tag("d@v2", "paper")
    assert honest.tags("d") == {"paper": "d@v1"}


def test_a_stage_job_probes_before_planning_any_shard(tmp_path, monkeypatch):
    honest = DatasetStore(str(tmp_path))
    honest.publish("numbers", pa.table({"value": pa.array(range(4), pa.int64())}))
    stage = SquaresStage(SPEC)
    stage.used = []
    planned = []
    monkeypatch.setattr(SquaresStage, "plan", lambda self, *args: planned.append(args) or [])
    with pytest.raises(ConditionalWriteUnsupportedError, match="ignores conditional writes"):
        StageJob(stage, ignoring_store(tmp_path), load_config("test"))
    assert planned == []


def test_a_cache_hit_reads_without_probing(tmp_path):
    honest = DatasetStore(str(tmp_path))
    honest.publish("numbers", pa.table({"value": pa.array(range(4), pa.int64())}))
    stage = SquaresStage(SPEC)
    stage.used = []
    config = load_config("test")
    run_stage(stage, honest, config)
    job = StageJob(stage, ignoring_store(tmp_path), config)
    assert job.cached and job.ref == "squares@v1"
