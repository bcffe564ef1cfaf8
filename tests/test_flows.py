"""The Prefect flows (flows/): stage flows on a tmp file:// store with the `test` profile, under
`prefect_test_harness` (a temporary API and database) with result storage in a tmp folder.

Covers: refs and fingerprint cache hits, artifacts with stable keys, retry of a shard on a
transient storage error (and no retry on other errors), failures that publish nothing, the
parent flow as in-process subflows, and the parent's skipping of completed stages when it is
retried (deployment mode, with run_deployment replaced by a fake), plus prefect.yaml's shape.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
)
from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings
from prefect.testing.utilities import prefect_test_harness

from flows import parent as parent_module
from flows.common import artifact_key, stage_deployment
from flows.dag import upstream
from flows.gpu_pools import POOLS
from flows.stage_flows import STAGE_FLOWS, is_transient_storage_error
from pipeline.stages import STAGE_SPECS, STAGES
from pipeline.stages.degrade import DegradeStage
from storage import DatasetStore, StoragePermissionError, StorageUnavailableError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    """A temporary Prefect API for this module; task/flow results go to a tmp folder."""
    results = tmp_path_factory.mktemp("prefect-results")
    with temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: str(results)}):
        with prefect_test_harness(server_startup_timeout=120):
            yield results


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setenv("DSPO_SHARD_RETRY_DELAY", "0.1")
    monkeypatch.setenv("DSPO_SHARD_RETRIES", "2")


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory) -> str:
    return (tmp_path_factory.mktemp("flows") / "store").as_uri()


@pytest.fixture(scope="module")
def chain(harness, store_uri):
    """ingest -> degrade once for the module: {'ingest': state, 'degrade': state}."""
    states = {"ingest": STAGE_FLOWS["ingest"](store=store_uri, profile="test", return_state=True)}
    states["degrade"] = STAGE_FLOWS["degrade"](store=store_uri, profile="test", return_state=True)
    return states


def flow_run_id(state):
    return state.state_details.flow_run_id


def artifacts_of(run_id) -> dict[str, object]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    return {artifact.key: artifact for artifact in found}


def task_runs_of(run_id) -> list:
    with get_client(sync_client=True) as client:
        return client.read_task_runs(task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[run_id])))


def table_row(artifact) -> dict:
    data = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    return data[0]


# ----------------------------------------------------------------------------- no API needed
def test_one_flow_per_stage_named_after_it():
    assert list(STAGE_FLOWS) == list(STAGES)
    from flows import stage_flows

    for name, stage_flow in STAGE_FLOWS.items():
        assert stage_flow.name == f"dspo-{name}"
        assert getattr(stage_flows, f"dspo_{name}") is stage_flow
        spec = STAGE_SPECS[name]
        assert list(stage_flow.parameters.properties) == ["store", *spec.inputs, *spec.optional_inputs, "profile",
                                                          "overrides", "force", "allow_empty"]
        for field, schema in stage_flow.parameters.properties.items():  # a form a person can fill
            assert schema.get("description") and "anyOf" not in schema, (name, field, schema)
    assert parent_module.dspo.name == "dspo"
    assert [stage_deployment(name) for name in ("segment", "score")] == ["dspo-segment/segment", "dspo-score/score"]


def test_prefect_yaml_deploys_every_stage_without_a_machine_path():
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert config["pull"] == [{"prefect.deployments.steps.set_working_directory":
                               {"directory": "{{ $DSPO_PROJECT_DIR }}"}}]
    text = (ROOT / "prefect.yaml").read_text()
    assert str(ROOT) not in text
    deployments = {(d["entrypoint"], d["name"]) for d in config["deployments"]}
    expected = {("flows/parent.py:dspo", "full-pipeline")} | {
        (f"flows/stage_flows.py:dspo_{name}", name) for name in STAGES}
    assert deployments == expected, ("prefect.yaml must have exactly one deployment named after each stage in "
                                     f"pipeline.stages.STAGES; missing {sorted(expected - deployments)}, "
                                     f"extra {sorted(deployments - expected)}")
    for deployment in config["deployments"]:
        stage = deployment["entrypoint"].rpartition("dspo_")[2] if "stage_flows" in deployment["entrypoint"] else None
        if stage:  # the description users read in the UI is the stage's declaration, word for word
            assert deployment["description"] == STAGE_SPECS[stage].summary, stage
        assert deployment["work_pool"]["name"] in POOLS  # which pool: tests/test_gpu_pools.py
        assert deployment["parameters"]["profile"] == "demo"
        assert "store" not in deployment["parameters"]  # resolved on the worker: $DSPO_STORE or the project's


def test_entrypoints_load(monkeypatch):
    from prefect.flows import load_flow_from_entrypoint

    monkeypatch.chdir(ROOT)
    for deployment in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]:
        loaded = load_flow_from_entrypoint(deployment["entrypoint"], use_placeholder_flow=False)
        name = deployment["entrypoint"].rsplit("dspo_", 1)[-1] if "stage_flows" in deployment["entrypoint"] else None
        assert loaded.name == (f"dspo-{name}" if name else "dspo")


def test_stage_dependencies_come_from_the_declared_inputs():
    needs = upstream()
    assert list(needs) == list(STAGES)
    assert needs["ingest"] == () and needs["degrade"] == ("ingest",)
    assert needs["sample"] == needs["segment"] == ("degrade",)   # both read only lq_pairs
    assert needs["score"] == ("degrade", "sample", "segment")
    assert needs["rank"] == ("sample", "segment", "score")[1:]    # human_labels: produced by no stage
    assert needs["evaluate"] == ("degrade", "train")
    for name, producers in needs.items():  # exactly the stages publishing what it requires
        wanted = set(STAGE_SPECS[name].inputs)
        assert {dataset for producer in producers for dataset in STAGE_SPECS[producer].outputs} >= wanted
        assert all(set(STAGE_SPECS[producer].outputs) & wanted for producer in producers)
    from pipeline.stage import StageSpec

    made_up = (StageSpec("b", ("y",), ("x",), "m:B"), StageSpec("a", ("x",), (), "m:A"),
               StageSpec("c", ("z",), ("x", "y"), "m:C", optional_inputs=("w",)))
    assert upstream(made_up, ("a", "b", "c")) == {"a": (), "b": ("a",), "c": ("a", "b")}


def _thread_dag(needs, work):
    """run_dag over a thread pool: `work(name, produced)` is each stage's body."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    from flows.dag import run_dag

    with ThreadPoolExecutor(max_workers=len(needs)) as pool:
        def next_done(running):
            future = next(iter(wait(running, return_when=FIRST_COMPLETED).done))
            error = future.exception()
            return future, None if error else future.result(), f"stage {error}" if error else None

        return run_dag(needs, lambda name, produced: pool.submit(work, name, produced), next_done)


def test_dag_runs_independent_stages_at_once_and_skips_what_needs_a_failed_one():
    needs = {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c"), "e": ("d",), "f": ("c",)}
    both = threading.Barrier(2, timeout=10)  # b and c each wait for the other: only together can they pass

    def work(name, produced):
        if name in ("b", "c"):
            both.wait()
        return f"{name}<-{','.join(sorted(produced.values()))}"

    run = _thread_dag(needs, work)
    assert run.failed == {} and run.skipped == {} and run.failure() is None
    assert run.results["d"] == "d<-b<-a<-,c<-a<-" and run.results["f"] == "f<-c<-a<-"
    assert run.started[0] == "a" and set(run.started[1:3]) == {"b", "c"}

    def failing(name, produced):
        if name == "b":
            raise RuntimeError("b: injected")
        return work(name, produced) if name not in ("b", "c") else name

    both.reset()
    run = _thread_dag(needs, failing)
    assert set(run.results) == {"a", "c", "f"}   # the branch that does not need b goes on
    assert run.failed == {"b": "stage b: injected"} and run.skipped == {"d": ("b",), "e": ("d",)}
    assert run.failure() == "stage b: injected; not run, as they need a failed stage's output: d (needs b), e (needs d)"


def test_retry_condition_only_transient_storage_errors():
    assert is_transient_storage_error(StorageUnavailableError("read x: still failing after 4 attempts: 503"))
    assert is_transient_storage_error(ConnectionResetError("reset by peer"))
    assert is_transient_storage_error(TimeoutError())
    assert not is_transient_storage_error(StorageUnavailableError("write x: the bucket does not exist"))
    assert not is_transient_storage_error(StoragePermissionError("access denied"))
    assert not is_transient_storage_error(ValueError("bad config"))
    assert not is_transient_storage_error(FileNotFoundError("missing"))


# ----------------------------------------------------------------------------- stage flows
def test_ingest_and_degrade_publish_and_record_artifacts(chain, store_uri):
    assert chain["ingest"].is_completed() and chain["degrade"].is_completed()
    assert chain["ingest"].result() == "hr_images@v1"
    assert chain["degrade"].result() == "lq_pairs@v1"
    store = DatasetStore(store_uri)
    manifest = store.manifest("lq_pairs@v1")
    assert manifest["inputs"] == ["hr_images@v1"]
    assert manifest["run_id"] == str(flow_run_id(chain["degrade"]))
    artifacts = artifacts_of(flow_run_id(chain["degrade"]))
    assert {artifact_key("degrade", kind) for kind in ("result", "preview", "progress")} <= set(artifacts)
    row = table_row(artifacts["dspo-degrade-result"])
    assert row["ref"] == "lq_pairs@v1" and row["rows"] == store.manifest("lq_pairs@v1")["rows"] > 0
    assert row["cache hit"] is False and row["shards computed"] == row["shards total"] >= 2
    assert row["quarantined"] == 0 and row["seconds"] > 0
    assert artifacts["dspo-degrade-progress"].data == 100.0
    timing = table_row(artifacts["dspo-degrade-timing"])  # where the run's seconds went (flows/clock.py)
    assert timing["s: shards"] > 0 and timing["s: job set-up"] > 0 and timing["s: publish"] > 0
    assert timing["s: process start"] == 0  # a flow called in this process: no process of its own to start
    assert timing["s: fixed"] == pytest.approx(sum(timing[f"s: {name}"] for name in (
        "job set-up", "publish", "artifacts")), abs=0.02)
    assert artifacts["dspo-degrade-preview"].data.count("data:image/png;base64,") >= 4
    assert len(artifacts["dspo-degrade-preview"].data) < 100_000
    assert "dspo-ingest-result" in artifacts_of(flow_run_id(chain["ingest"]))
    shard_runs = [run for run in task_runs_of(flow_run_id(chain["degrade"])) if run.name.startswith("degrade-shard-")]
    assert len(shard_runs) == row["shards total"] and all(run.state.is_completed() for run in shard_runs)


def test_rerun_is_a_cache_hit(chain, store_uri, caplog):
    state = STAGE_FLOWS["degrade"](store=store_uri, profile="test", return_state=True)
    assert state.result() == "lq_pairs@v1"
    assert DatasetStore(store_uri).versions("lq_pairs") == [1]
    row = table_row(artifacts_of(flow_run_id(state))["dspo-degrade-result"])
    assert row["cache hit"] is True and row["shards computed"] == 0
    assert not [run for run in task_runs_of(flow_run_id(state)) if run.name.startswith("degrade-shard-")]
    assert any("degrade: cache hit: lq_pairs@v1" in record.getMessage() for record in caplog.records)


def test_transient_storage_error_in_a_shard_is_retried(chain, store_uri, monkeypatch):
    original = DegradeStage.run_shard
    calls: dict[str, int] = {}
    lock = threading.Lock()

    def flaky(self, store, inputs, section, shard):
        with lock:
            calls[shard.key] = calls.get(shard.key, 0) + 1
            first = shard.key == "shard-00001" and calls[shard.key] == 1
        if first:
            raise StorageUnavailableError("read lq_pairs: still failing after 4 attempts: HTTP 503 (injected)")
        return original(self, store, inputs, section, shard)

    monkeypatch.setattr(DegradeStage, "run_shard", flaky)
    state = STAGE_FLOWS["degrade"](store=store_uri, profile="test", force=True, return_state=True)
    assert state.is_completed(), state.message
    assert state.result() == "lq_pairs@v2"
    assert calls["shard-00001"] == 2 and all(count == 1 for key, count in calls.items() if key != "shard-00001")
    runs = {run.name: run for run in task_runs_of(flow_run_id(state))}
    assert runs["degrade-shard-00001"].run_count == 2 and runs["degrade-shard-00000"].run_count == 1
    store = DatasetStore(store_uri)
    assert store.read_arrow("lq_pairs@v2").drop_columns([]).equals(store.read_arrow("lq_pairs@v1"))


def test_permanent_error_in_a_shard_fails_the_flow_without_retry_and_publishes_nothing(chain, store_uri,
                                                                                       monkeypatch):
    original = DegradeStage.run_shard
    calls: dict[str, int] = {}

    def broken(self, store, inputs, section, shard):
        calls[shard.key] = calls.get(shard.key, 0) + 1
        if shard.key == "shard-00002":
            raise ValueError("injected permanent fault")
        return original(self, store, inputs, section, shard)

    store = DatasetStore(store_uri)
    before = store.versions("lq_pairs")
    monkeypatch.setattr(DegradeStage, "run_shard", broken)
    state = STAGE_FLOWS["degrade"](store=store_uri, profile="test", force=True, return_state=True)
    assert state.is_failed()
    assert "1 of 3 shards failed" in state.message and "nothing was published" in state.message
    assert calls["shard-00002"] == 1  # not retried: not a storage error
    assert DatasetStore(store_uri).versions("lq_pairs") == before


@pytest.mark.parametrize("kwargs, message", [
    ({"overrides": ["degrade.no_such_option=1"]}, "no_such_option"),
    ({"overrides": ["degrade.seed"]}, "KEY=VALUE"),
    ({"hr_images": "hr_images@v99"}, "hr_images@v99"),
    ({"hr_images": "lq_pairs@v1"}, "is not a hr_images ref"),
], ids=["bad-override", "override-without-value", "missing-input-version", "wrong-dataset-input"])
def test_bad_parameters_fail_the_flow_and_publish_nothing(chain, store_uri, kwargs, message):
    before = {name: DatasetStore(store_uri).versions(name) for name in ("hr_images", "lq_pairs")}
    state = STAGE_FLOWS["degrade"](store=store_uri, profile="test", return_state=True, **kwargs)
    assert state.is_failed()
    assert message in state.message
    assert {name: DatasetStore(store_uri).versions(name) for name in before} == before


# ----------------------------------------------------------------------------- parent flow
def test_parent_runs_every_stage_as_subflows(chain, store_uri):
    state = parent_module.dspo(store=store_uri, profile="test", mode="subflows", return_state=True)
    assert state.is_completed(), state.message
    outputs = state.result()
    assert list(outputs) == [stage.output for stage in STAGES.values()]
    assert outputs["hr_images"] == "hr_images@v1"            # cache hit
    store = DatasetStore(store_uri)
    assert outputs["lq_pairs"] == f"lq_pairs@v{store.versions('lq_pairs')[-1]}"
    assert store.manifest(outputs["preferences"])["rows"] > 0
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id(state)])))
        runs = {client.read_flow(run.flow_id).name.removeprefix("dspo-"): run for run in children}
        tasks = {task.name: task for task in client.read_task_runs(task_run_filter=TaskRunFilter(
            flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id(state)])))}
    assert sorted(runs) == sorted(STAGES) and len(children) == len(STAGES)
    assert all(run.state.is_completed() for run in children)
    # The DAG: sample and segment both need only lq_pairs, so the parent launched them at once (each
    # launch is a task run that lasts as long as its subflow; the subflows themselves need not
    # overlap: on the test profile segment may end before sample's imports are done); every stage
    # started after the stages it reads from had ended.
    sample, segment = tasks["sample"], tasks["segment"]
    assert sample.start_time < segment.end_time and segment.start_time < sample.end_time, (
        sample.start_time, sample.end_time, segment.start_time, segment.end_time)
    for name, needs in upstream().items():
        assert all(runs[need].end_time <= runs[name].start_time for need in needs), name
    summary = json.loads(artifacts_of(flow_run_id(state))["dspo-pipeline-summary"].data)
    assert [row["ref"] for row in summary] == list(outputs.values())
    assert {row["stage"]: row["after"] for row in summary}["score"] == "degrade, sample, segment"


def test_child_ref_falls_back_to_the_result_artifact(chain):
    """A parent that cannot read a stage run's result storage finds the ref in its result artifact."""
    class Unreadable:
        def result(self, raise_on_failure=True):
            raise RuntimeError("result storage of another machine")

    child = FakeRun("degrade-run", Unreadable())
    child.id = flow_run_id(chain["degrade"])
    assert parent_module.child_ref(child, "degrade") == "lq_pairs@v1"
    child.id = flow_run_id(chain["ingest"])
    with pytest.raises(parent_module.StageRunFailed, match="neither in a readable result nor in its result artifact"):
        parent_module.child_ref(child, "degrade")


class FakeRun:
    def __init__(self, name, state):
        self.id, self.name, self.state = name, name, state


def test_retried_parent_skips_completed_stages(harness, monkeypatch):
    """Deployment mode with run_deployment faked: the first attempt fails at `sample`; the retry
    (same flow run) takes ingest and degrade from the task cache and launches only the rest."""
    from prefect.states import Completed, Failed

    launched: list[str] = []

    def fake_run_deployment(name, parameters, timeout, poll_interval):
        stage = name.split("/")[0].removeprefix("dspo-")
        launched.append(stage)
        if stage == "sample" and launched.count("sample") == 1:
            return FakeRun(name, Failed(message="injected child failure"))
        return FakeRun(name, Completed())

    monkeypatch.setattr(parent_module, "run_deployment", fake_run_deployment)
    monkeypatch.setattr(parent_module, "child_ref", lambda child, stage: f"{STAGES[stage].output}@v1")
    retrying = parent_module.dspo.with_options(retries=1, retry_delay_seconds=0)
    state = retrying(store="memory://retry-test", profile="test", mode="deployments", return_state=True)
    assert state.is_completed(), state.message
    # First attempt: sample fails, segment (started with it) completes, nothing after them starts.
    # The retry launches sample again and what follows, not ingest, degrade or segment.
    assert launched[:2] == ["ingest", "degrade"] and sorted(launched[2:4]) == ["sample", "segment"]
    assert launched[4:] == ["sample", *[name for name in STAGES if name not in ("ingest", "degrade", "sample",
                                                                               "segment")]]
    assert state.result()["preferences"] == "preferences@v1"


def test_failed_child_fails_the_parent(harness, monkeypatch):
    from prefect.states import Completed, Crashed

    def fake_run_deployment(name, parameters, timeout, poll_interval):
        return FakeRun(name, Crashed(message="worker died") if "degrade" in name else Completed())

    monkeypatch.setattr(parent_module, "run_deployment", fake_run_deployment)
    monkeypatch.setattr(parent_module, "child_ref", lambda child, stage: f"{STAGES[stage].output}@v1")
    state = parent_module.dspo(store="memory://fail-test", profile="test", mode="deployments", return_state=True)
    assert state.is_failed()
    assert "stage degrade" in state.message and "CRASHED" in state.message
    assert "not run, as they need a failed stage's output: sample (needs degrade), segment (needs degrade)" \
        in state.message


def test_concurrent_shards_match_serial_shards(chain, store_uri):
    """Shards on 3 threads, each with its own backbone instance from the model cache (cold: built
    one at a time), give the same candidates as one thread: per-thread instances are deterministic."""
    from prefect.task_runners import ThreadPoolTaskRunner

    from pipeline.stage_models import MODELS

    MODELS.clear()
    refs = []
    for workers in (3, 1):
        # Same shard size both times: backbones sample a shard as one batch, and batch composition may
        # change the last bits of a diffusion output (shard_size is part of the fingerprint).
        sample = STAGE_FLOWS["sample"].with_options(task_runner=ThreadPoolTaskRunner(max_workers=workers))
        refs.append(sample(store=store_uri, profile="test", lq_pairs="lq_pairs@v1",
                           overrides=["sample.shard_size=2"], force=True))
    backbones = [key for key in MODELS.keys() if key[:2] == ("sample", "backbone")]
    counts = [MODELS.instances(key) for key in backbones]
    assert counts and max(counts) <= 3 and counts[0] == 3, counts  # the first source: one per thread, then reused
    store = DatasetStore(store_uri)
    concurrent, serial = (store.read_arrow(ref).sort_by("candidate_id") for ref in refs)
    assert concurrent.num_rows == serial.num_rows > 0
    assert concurrent.equals(serial)


def test_dask_task_runner_maps_shards_over_worker_processes(chain, store_uri, monkeypatch):
    """DSPO_TASK_RUNNER=dask: shard tasks run in local Dask worker processes, which rebuild the
    job from the task's context, and the published version equals the threaded run's."""
    import os
    import re

    from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId

    from flows import stage_flows

    monkeypatch.setenv("DSPO_TASK_RUNNER", "dask")
    monkeypatch.setenv("DSPO_SHARD_WORKERS", "2")
    degrade = STAGE_FLOWS["degrade"].with_options(task_runner=stage_flows.shard_task_runner())
    state = degrade(store=store_uri, profile="test", hr_images="v1", force=True,
                    return_state=True)
    assert state.is_completed(), state.message
    store = DatasetStore(store_uri)
    threaded = store.read_arrow(chain["degrade"].result()).sort_by("sample_id")
    assert store.read_arrow(state.result()).sort_by("sample_id").equals(threaded)
    shard_runs = [run for run in task_runs_of(flow_run_id(state)) if run.name.startswith("degrade-shard-")]
    assert shard_runs and all(run.state.is_completed() for run in shard_runs)
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(task_run_id=LogFilterTaskRunId(any_=[run.id for run in shard_runs])))
    pids = {int(match) for log in logs for match in re.findall(r"\(pid (\d+)\)", log.message)}
    assert pids and os.getpid() not in pids


def test_task_runner_setting_is_checked(monkeypatch):
    from flows.common import task_runner_kind

    monkeypatch.setenv("DSPO_TASK_RUNNER", "ray")
    with pytest.raises(ValueError, match=r"\$DSPO_TASK_RUNNER='ray': expected one of threads, dask"):
        task_runner_kind()


def test_flow_runs_are_named_after_stage_profile_and_time(chain):
    import re

    with get_client(sync_client=True) as client:
        names = {flow_run_id(state): client.read_flow_run(flow_run_id(state)).name for state in chain.values()}
    assert re.fullmatch(r"ingest-test-\d{4}-\d{6}", names[flow_run_id(chain["ingest"])]), names
    assert re.fullmatch(r"degrade-test-\d{4}-\d{6}", names[flow_run_id(chain["degrade"])]), names
