"""The stage framework (pipeline/stage.py, pipeline/stage_models.py) on a small two-output stage:
side outputs published with their own fingerprints and lineage, shards run from many threads
with per-shard models, and a crash between two publishes that loses nothing."""
from __future__ import annotations

import threading
import time

import pyarrow as pa
import pytest

from pipeline.config import load_config
from pipeline.stage import Shard, ShardOutput, Stage, StageJob, StageSpec, make_shards, run_stage
from pipeline.stage_models import MODELS, ModelCache
from storage import DatasetStore

COUNTS = pa.schema([("value", pa.int64()), ("square", pa.int64()), ("log_ref", pa.string())])
LOG = pa.schema([("value", pa.int64()), ("note", pa.string())])
SPEC = StageSpec("squares", ("squares", "squares_log"), ("numbers",), "tests.test_stage_framework:SquaresStage")


class Squarer:
    """A stand-in model: counts how many shards use this instance at once."""

    builds = 0

    def __init__(self):
        type(self).builds += 1
        self.active = 0
        self.most_active = 0

    def square(self, value: int) -> int:
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        time.sleep(0.01)
        self.active -= 1
        return value * value


class SquaresStage(Stage):
    """Reads `numbers`, writes `squares` (main) and `squares_log` (side)."""

    def section(self, config):
        return config.degrade

    def schemas(self, section):
        return {"squares": COUNTS, "squares_log": LOG}

    def plan(self, store, inputs, section):
        return make_shards(store.read_arrow(inputs["numbers"]).column("value").to_pylist(), 2)

    def run_shard(self, store, inputs, section, shard):
        with self.model("squarer", section, Squarer) as squarer:
            rows = [{"value": v, "square": squarer.square(v), "log_ref": None} for v in shard.items]
            used = squarer
        self.used.append(used)
        log = [{"value": v, "note": f"squared {v}"} for v in shard.items]
        return ShardOutput(pa.Table.from_pylist(rows, schema=COUNTS),
                           side_tables={"squares_log": pa.Table.from_pylist(log, schema=LOG)})

    def finalize(self, tables, side_outputs):
        for table in tables:
            yield table.set_column(2, "log_ref", pa.array([side_outputs["squares_log"]] * table.num_rows, pa.string()))


@pytest.fixture
def store(tmp_path):
    opened = DatasetStore(tmp_path.as_uri())
    opened.publish("numbers", pa.table({"value": pa.array(range(12), pa.int64())}))
    yield opened
    opened.close()


@pytest.fixture
def stage():
    MODELS.clear()
    Squarer.builds = 0
    built = SquaresStage(SPEC)
    built.used = []
    return built


def test_side_outputs_are_published_with_their_own_fingerprint_and_lineage(store, stage):
    config = load_config("test")
    result = run_stage(stage, store, config)
    assert result.ref == "squares@v1" and result.side_outputs == {"squares_log": "squares_log@v1"}
    main, side = store.manifest("squares@v1"), store.manifest("squares_log@v1")
    assert main["metadata"]["side_outputs"] == {"squares_log": "squares_log@v1"}
    assert main["inputs"] == side["inputs"] == ["numbers@v1"]
    assert side["fingerprint"] != main["fingerprint"] and side["metadata"]["side_output_of"] == "squares"
    assert store.read_pandas("squares_log@v1")["value"].tolist() == list(range(12))
    table = store.read_pandas("squares@v1")
    assert table["square"].tolist() == [v * v for v in range(12)]
    assert set(table["log_ref"]) == {"squares_log@v1"}  # finalize saw the side output's ref
    again = run_stage(stage, store, config)
    assert again.cache_hit and again.side_outputs == result.side_outputs
    assert store.versions("squares_log") == [1]


def test_a_crash_between_the_side_and_the_main_publish_loses_nothing(store, stage, monkeypatch):
    config = load_config("test")
    job = StageJob(stage, store, config)
    for shard in job.pending_shards():
        job.run_shard(shard)
    original = store.publish

    def fail_main(name, *args, **kwargs):
        if name == "squares":
            raise ConnectionError("store went away")
        return original(name, *args, **kwargs)

    monkeypatch.setattr(store, "publish", fail_main)
    with pytest.raises(ConnectionError):
        job.publish()
    monkeypatch.setattr(store, "publish", original)
    rerun = StageJob(stage, store, config)
    assert rerun.pending_shards() == []  # every shard is still staged
    rerun.publish()
    assert store.versions("squares_log") == [1] and store.versions("squares") == [1]
    assert rerun.result().side_outputs == {"squares_log": "squares_log@v1"}


def test_a_shard_must_return_every_declared_side_output(store, stage, monkeypatch):
    monkeypatch.setattr(SquaresStage, "run_shard", lambda self, *a: ShardOutput(pa.table({"value": [1]})))
    job = StageJob(stage, store, load_config("test"))
    with pytest.raises(RuntimeError, match=r"returned side outputs \[\], the stage declares \['squares_log'\]"):
        job.run_shard(job.pending_shards()[0])


def test_shards_from_many_threads_each_get_their_own_model(store, stage):
    job = StageJob(stage, store, load_config("test"))
    shards = job.pending_shards()
    barrier = threading.Barrier(3)

    def run(shard: Shard):
        barrier.wait(timeout=10)
        job.run_shard(shard)

    threads = [threading.Thread(target=run, args=(shard,)) for shard in shards[:3]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    built_by_threads = Squarer.builds
    for shard in shards[3:]:
        job.run_shard(shard)
    assert job.computed == len(shards) == 6
    assert all(squarer.most_active == 1 for squarer in stage.used)  # never shared mid-call
    assert 1 <= built_by_threads <= 3 and Squarer.builds == built_by_threads  # later shards reuse them
    job.publish()
    assert store.read_pandas("squares@v1")["square"].tolist() == [v * v for v in range(12)]


def test_model_builds_never_interleave_and_free_instances_are_reused():
    cache, inside, overlaps = ModelCache(), [], []

    def build():
        inside.append(1)
        overlaps.append(len(inside))
        time.sleep(0.02)
        inside.pop()
        return object()

    held = []
    barrier = threading.Barrier(4)

    def borrow():
        with cache.borrow(("stage", "model", "{}"), build) as model:
            barrier.wait(timeout=10)
            held.append(model)

    threads = [threading.Thread(target=borrow) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert max(overlaps) == 1 and cache.instances(("stage", "model", "{}")) == 4
    assert len({id(model) for model in held}) == 4
    with cache.borrow(("stage", "model", "{}"), build) as model:
        assert model in held  # a free one, not a fifth build
    assert cache.instances(("stage", "model", "{}")) == 4


def test_caches_follow_content_not_version_numbers(store, stage):
    config = load_config("test")
    first = run_stage(stage, store, config)
    store.publish("numbers", pa.table({"value": pa.array(range(12), pa.int64())}))  # the same rows again
    assert store.resolve("numbers@latest") == "numbers@v2"
    again = run_stage(stage, store, config, inputs={"numbers": "numbers@v2"})
    assert again.cache_hit and again.ref == first.ref
    store.publish("numbers", pa.table({"value": pa.array(range(13), pa.int64())}))  # different rows
    assert not run_stage(stage, store, config).cache_hit


class SquaresWithoutRefs(SquaresStage):
    """Rows that name no version (SquaresStage's name their side output's version, so they differ)."""

    def finalize(self, tables, side_outputs):
        return tables


def test_a_forced_rerun_with_identical_output_says_so(store):
    config = load_config("test")
    stage = SquaresWithoutRefs(SPEC)
    stage.used = []
    run_stage(stage, store, config)
    forced = run_stage(stage, store, config, force=True)
    assert forced.ref == "squares@v2" and forced.identical_to == "squares@v1"
    assert run_stage(stage, store, config).identical_to is None
