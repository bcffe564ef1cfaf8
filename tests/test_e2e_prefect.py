"""End to end through real Prefect processes, as a user runs them:

    dspo up --port 0 --state-dir TMP        server + work pool + `prefect deploy --all` + process worker
    prefect deployment run dspo/full-pipeline --watch     (test profile, store on moto's S3 server;
                                                           sample and segment run at the same time)
    prefect deployment run dspo-segment/segment --watch   (force: a new `instances` version only)
    a stage that fails: the parent fails, nothing is published, the stage's run is retried alone
    dspo pipeline with a mistyped profile or key: one error line at once, nothing submitted
    dspo pipeline with a stage that fails: one error line naming the stage's flow run and the reason
    dspo down                                every process it started is gone

One stack for the module (its start costs ~30 s); each test has its own bucket. The worker (and
so every flow run) reaches moto's S3 server through its environment (`S3TestServer.env()`).
Every stage is its own flow run process that imports the pipeline (torch, diffusers, peft:
~12 s of CPU) before its seconds of work: the module takes ~6 minutes on an idle 2-core
machine, twice that on a busy one.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from PIL import Image
from support.stack_processes import processes_of

from flows import environment, prefect_api, stack, stack_state, supervisor
from flows.dag import upstream
from pipeline.materialize import preferences_with_images
from pipeline.stages import STAGES
from storage import DatasetStore, decode_image

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
DSPO = ROOT / ".venv" / "bin" / "dspo"
LINEAGE = ["preferences", "pairs", "instance_scores", "sr_candidates", "lq_pairs", "hr_images"]
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


def run(argv: list, env: dict, timeout: float) -> subprocess.CompletedProcess:
    started = time.monotonic()
    try:
        result = subprocess.run([str(part) for part in argv], env=env, cwd=ROOT, capture_output=True, text=True,
                                timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"`{' '.join(map(str, argv))}` still running after {timeout:.0f}s; output so far:\n"
                    f"{(exc.stdout or b'')[-4000:]!r}")
    print(f"[{time.monotonic() - started:6.1f}s] {' '.join(map(str, argv[:6]))}")
    return result


def explain(result: subprocess.CompletedProcess, state: Path) -> str:
    logs = "\n".join(f"--- {name}.log\n{supervisor.tail(state / 'logs' / f'{name}.log', 40)}"
                     for name in ("worker", "deploy", "server"))
    return f"exit {result.returncode}\nstdout:\n{result.stdout[-6000:]}\nstderr:\n{result.stderr[-6000:]}\n{logs}"


def api(method: str, url: str, body: dict | None = None, ok: tuple = (200,)):
    status, payload = prefect_api.http(method, url, body, timeout=30)
    assert status in ok, f"{method} {url}: HTTP {status}: {payload}"
    return payload


@dataclass
class Stack:
    state: Path
    env: dict            # for `dspo` commands: this environment + the S3 server's
    cli_env: dict        # for `prefect` commands: pointed at the stack's API
    api_url: str

    def deploy_run(self, deployment: str, parameters: dict, timeout: float) -> subprocess.CompletedProcess:
        return run([environment.interpreter(ROOT), "-m", "prefect", "deployment", "run", deployment, "--watch",
                    "--params", json.dumps(parameters)], self.cli_env, timeout=timeout)

    def runs_by_flow(self, store_uri: str) -> dict[str, list[dict]]:
        """Flow runs on the store `store_uri` (each test has its own), by flow name, oldest first."""
        flows = {flow["id"]: flow["name"] for flow in api("POST", f"{self.api_url}/flows/filter", {"limit": 200})}
        runs: dict[str, list[dict]] = {}
        for flow_run in api("POST", f"{self.api_url}/flow_runs/filter",
                            {"limit": 200, "sort": "EXPECTED_START_TIME_ASC"}):
            if flow_run["parameters"].get("store") == store_uri:
                runs.setdefault(flows[flow_run["flow_id"]], []).append(flow_run)
        return runs


def alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="module")
def running_stack(s3_server, tmp_path_factory):
    """`dspo up` in a temp state folder on a free port; after the module, `dspo down` must leave
    none of the processes it started (server, worker, their children) running."""
    state = tmp_path_factory.mktemp("e2e") / "stack"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PREFECT_", "DSPO_"))}
    env.update(s3_server.env())
    env["DSPO_SHARD_RETRY_DELAY"] = "0.5"
    records: list[dict] = []
    try:
        result = run([DSPO, "up", "--port", "0", "--state-dir", state], env, timeout=600)
        assert result.returncode == 0, explain(result, state)
        assert "Prefect UI:   http://127.0.0.1:" in result.stdout
        for name in ("server", "worker"):
            records.append(supervisor.read_pidfile(state / f"{name}.pid"))
            assert supervisor.is_ours(records[-1]), f"{name} is not running after dspo up:\n{explain(result, state)}"
        report = stack.status(str(state))
        assert report["healthy"] and report["work_pool"] == "READY", report
        cli_env = environment.stack_env(stack_state.Paths(state), report["port"], ROOT)
        cli_env.update(s3_server.env())
        yield Stack(state, env, cli_env, report["api_url"])
    finally:
        started = processes_of(records)
        result = run([DSPO, "down", "--state-dir", state], env, timeout=120)
        left = [process for process in started if alive(process)]
        for process in left:  # never leave them to the next test run, even when dspo down failed
            process.kill()
        assert result.returncode == 0, explain(result, state)
        assert started and not left, f"still running after dspo down: {[p.pid for p in left]}"
        for record in records:
            assert not supervisor.group_members(record["pgid"]), f"processes of group {record['pgid']} still run"
        assert not (state / "server.pid").exists() and not (state / "worker.pid").exists()


def s3_store(s3_server, bucket: str) -> tuple[str, DatasetStore]:
    uri = f"s3://{bucket}/dspo"
    return uri, DatasetStore(uri, {"endpoint_url": s3_server.endpoint_url, "key": s3_server.ACCESS_KEY,
                                   "secret": s3_server.SECRET_KEY, "region": s3_server.region})


def lineage_chain(store: DatasetStore, ref: str, names: list[str]) -> list[str]:
    """Follow manifest inputs from `ref` through the datasets `names` (in order); the refs met."""
    chain = [ref]
    for name in names:
        inputs = {item.partition("@")[0]: item for item in store.manifest(chain[-1])["inputs"]}
        assert name in inputs, f"{chain[-1]} does not name a {name} version among its inputs {sorted(inputs)}"
        chain.append(inputs[name])
    return chain


def test_full_pipeline_through_deployments_on_s3(running_stack, s3_server, s3_bucket):
    state, api_url = running_stack.state, running_stack.api_url
    deployments = stack.status(str(state))["deployments"]
    assert {"dspo/full-pipeline", *(f"dspo-{name}/{name}" for name in STAGES)} <= set(deployments)
    deployment = next(item for item in api("POST", f"{api_url}/deployments/filter", {"limit": 200})
                      if item["name"] == "full-pipeline")
    assert deployment["pull_steps"] == [{"prefect.deployments.steps.set_working_directory":
                                         {"directory": "{{ $DSPO_PROJECT_DIR }}"}}]

    server_pid = supervisor.read_pidfile(state / "server.pid")["pid"]
    again = run([DSPO, "up", "--state-dir", state], running_stack.env, timeout=300)
    assert again.returncode == 0, explain(again, state)
    assert "server: reusing pid" in again.stdout and "worker: reusing pid" in again.stdout
    assert supervisor.read_pidfile(state / "server.pid")["pid"] == server_pid

    store_uri, store = s3_store(s3_server, s3_bucket)
    result = running_stack.deploy_run("dspo/full-pipeline", {"store": store_uri, "profile": "test"}, timeout=1000)
    assert result.returncode == 0, explain(result, state)
    assert "Flow run finished successfully in 'Completed'" in result.stdout + result.stderr

    runs = running_stack.runs_by_flow(store_uri)
    assert [run["state_type"] for run in runs["dspo"]] == ["COMPLETED"]
    for name in STAGES:
        stage_runs = runs.get(f"dspo-{name}", [])
        assert len(stage_runs) == 1, f"dspo-{name}: {len(stage_runs)} flow runs"
        assert stage_runs[0]["state_type"] == "COMPLETED", stage_runs[0]["state"]
        assert stage_runs[0]["deployment_id"], f"dspo-{name} did not run from its deployment"
        assert stage_runs[0]["parent_task_run_id"], f"dspo-{name} is not linked to the parent run"
    # The DAG: sample and segment both need only lq_pairs, so their flow runs overlap in time; every
    # stage started after the stages whose outputs it reads had ended.
    span = {name: (datetime.fromisoformat(runs[f"dspo-{name}"][0]["start_time"]),
                   datetime.fromisoformat(runs[f"dspo-{name}"][0]["end_time"])) for name in STAGES}
    (sample_start, sample_end), (segment_start, segment_end) = span["sample"], span["segment"]
    assert sample_start < segment_end and segment_start < sample_end, span
    for name, needs in upstream().items():
        assert all(span[need][1] <= span[name][0] for need in needs), (name, span)
    timing = api("POST", f"{api_url}/artifacts/filter", {"artifacts": {
        "flow_run_id": {"any_": [runs["dspo-degrade"][0]["id"]]}, "key": {"any_": ["dspo-degrade-timing"]}}})
    row = timing[0]["data"][0] if isinstance(timing[0]["data"], list) else json.loads(timing[0]["data"])[0]
    assert row["s: process start"] > 0 and row["s: flow imports"] > 0 and row["s: shards"] > 0, row

    assert store.versions("preferences") == [1]
    first = next(preferences_with_images(store, "preferences@v1", batch_size=8))
    assert first.num_rows > 0
    for column in ("lq", "hr", "winner", "loser", "mask_image"):
        image = decode_image(first.column(column)[0].as_py())
        assert image.width > 0 and image.height > 0
    assert lineage_chain(store, "preferences@v1", LINEAGE[1:]) == [f"{name}@v1" for name in LINEAGE]
    assert store.manifest("preferences@v1")["run_id"] == runs["dspo-caption"][0]["id"]

    # One stage alone, forced: a new `instances` version, nothing else changes.
    before = {name: store.versions(name) for name in store.datasets()}
    result = running_stack.deploy_run("dspo-segment/segment", {
        "store": store_uri, "profile": "test", "force": True, "lq_pairs": "lq_pairs@v1"}, timeout=600)
    assert result.returncode == 0, explain(result, state)
    after = {name: store.versions(name) for name in store.datasets()}
    assert after.pop("instances") == before.pop("instances") + [2]
    assert after == before
    assert store.manifest("instances@v2")["inputs"] == ["lq_pairs@v1"]
    segment_runs = running_stack.runs_by_flow(store_uri)["dspo-segment"]
    assert len(segment_runs) == 2 and store.manifest("instances@v2")["run_id"] == segment_runs[1]["id"]


def wait_for_run(api_url: str, run_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        flow_run = api("GET", f"{api_url}/flow_runs/{run_id}")
        if flow_run["state_type"] in TERMINAL or time.monotonic() > deadline:
            return flow_run
        time.sleep(1)


def test_failed_stage_fails_the_parent_and_is_retried_alone(running_stack, s3_server, s3_bucket, tmp_path):
    """The fault: the ingest source folder is missing (a real one: the stage lists the folder).
    After it is created, the failed ingest flow run itself is retried, as the UI's Retry does."""
    store_uri, store = s3_store(s3_server, s3_bucket)
    source = tmp_path / "photos"
    parameters = {"store": store_uri, "profile": "test", "overrides": [f"ingest.source={source}"]}
    result = running_stack.deploy_run("dspo/full-pipeline", parameters, timeout=600)
    assert result.returncode != 0, explain(result, running_stack.state)

    runs = running_stack.runs_by_flow(store_uri)
    assert sorted(runs) == ["dspo", "dspo-ingest"], "no stage after the failed one may run"
    (parent,), (ingest,) = runs["dspo"], runs["dspo-ingest"]
    assert parent["state_type"] == "FAILED" and ingest["state_type"] == "FAILED"
    assert "stage ingest" in parent["state"]["message"] and ingest["name"] in parent["state"]["message"]
    assert "is not a folder" in ingest["state"]["message"]
    assert store.datasets() == [], "the failed attempt left a dataset version visible"

    source.mkdir()
    rng = np.random.default_rng(0)
    for index in range(6):  # two shards of the test profile's 4
        Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(source / f"{index}.png")
    api("POST", f"{running_stack.api_url}/flow_runs/{ingest['id']}/set_state",
        {"state": {"type": "SCHEDULED", "name": "AwaitingRetry", "message": "Retry from the test"}}, ok=(200, 201))
    retried = wait_for_run(running_stack.api_url, ingest["id"], timeout=300)
    assert retried["state_type"] == "COMPLETED", retried["state"]
    assert retried["run_count"] == 2
    assert store.datasets() == ["hr_images"] and store.versions("hr_images") == [1]
    manifest = store.manifest("hr_images@v1")
    assert manifest["rows"] == 6 and manifest["run_id"] == ingest["id"]
    runs = running_stack.runs_by_flow(store_uri)
    assert sorted(runs) == ["dspo", "dspo-ingest"] and len(runs["dspo-ingest"]) == 1
    assert runs["dspo"][0]["state_type"] == "FAILED"


def test_dspo_pipeline_checks_the_profile_before_submitting(running_stack):
    """A mistyped profile or metric is one error line at once; nothing reaches the server."""
    def flow_runs() -> int:
        return len(api("POST", f"{running_stack.api_url}/flow_runs/filter", {"limit": 200}))

    before = flow_runs()
    for args, message in [(["--profile", "dmeo"], "error: no profile 'dmeo' (did you mean demo?)"),
                          (["--set", "score.iqa.metircs=[psnr]"], "error: score.iqa.metircs: unknown key (did you "
                                                                  "mean metrics?)")]:
        started = time.monotonic()
        result = run([DSPO, "pipeline", *args, "--state-dir", running_stack.state], running_stack.env, timeout=120)
        assert result.returncode == 2 and result.stdout == "", explain(result, running_stack.state)
        assert result.stderr.count("\n") == 1 and result.stderr.startswith(message), result.stderr
        print(f"dspo pipeline {' '.join(args)}: {time.monotonic() - started:.1f}s")
    assert flow_runs() == before


def test_dspo_pipeline_names_the_failed_stage(running_stack, s3_server, s3_bucket, tmp_path):
    """`dspo pipeline` with a stage that fails (ingest's source folder is missing): exit 1 and one
    error line naming the stage, its flow run's name, id and UI page, and the reason; what was
    submitted and watched is the pipeline run the line refers to."""
    store_uri, store = s3_store(s3_server, s3_bucket)
    source = tmp_path / "photos"
    result = run([DSPO, "pipeline", "--profile", "test", "--store", store_uri, "--set", f"ingest.source={source}",
                  "--state-dir", running_stack.state], running_stack.env, timeout=600)
    assert result.returncode == 1, explain(result, running_stack.state)

    runs = running_stack.runs_by_flow(store_uri)
    assert sorted(runs) == ["dspo", "dspo-ingest"]
    (parent,), (ingest,) = runs["dspo"], runs["dspo-ingest"]
    assert parent["state_type"] == "FAILED" and ingest["state_type"] == "FAILED"
    ui = stack.status(str(running_stack.state))["ui_url"]
    assert (f"created flow run '{parent['name']}' ({parent['id']}, {ui}/runs/flow-run/{parent['id']}) of "
            "dspo/full-pipeline") in result.stdout
    assert f"runs, logs and artifacts: {ui}/runs" in result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    expected = f"error: stage ingest failed in flow run '{ingest['name']}' ({ingest['id']}, {ui}/runs/flow-run/{ingest['id']}): "
    assert errors[0].startswith(expected), errors[0]
    assert str(source) in errors[0] and "is not a folder" in errors[0]
    assert errors[0].endswith(f"then pipeline run '{parent['name']}'")
    # The parent's own failed state, what the UI shows on the `dspo` run, names the child's page too.
    assert f"stage ingest: flow run {ingest['name']} ({ingest['id']}, {ui}/runs/flow-run/{ingest['id']})" in \
        parent["state"]["message"]
    assert store.datasets() == []


def test_the_ui_run_form_has_a_field_per_input(running_stack):
    """The custom-run page of `dspo-score/score` in the real Prefect UI (headless Chromium): one
    text field per dataset the stage reads, overrides as lines, each with its description."""
    from playwright.sync_api import sync_playwright

    from flows import stack

    deployment = next(item for item in api("POST", f"{running_stack.api_url}/deployments/filter", {"limit": 200})
                      if item["entrypoint"].endswith(":dspo_score"))
    ui = stack.status(str(running_stack.state))["ui_url"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
            "--disable-component-update", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(f"{ui}/deployments/deployment/{deployment['id']}/run")
        page.wait_for_selector("text=lq_pairs", timeout=60_000)
        text = page.inner_text("body")
        browser.close()
    for dataset in ("lq_pairs", "sr_candidates", "instances"):
        assert dataset in text
        assert f"The {dataset} version to read, e.g. {dataset}@v2 (or v2). Empty: the latest." in text
    assert "one KEY=VALUE per line as with `dspo --set`" in text or "one KEY=VALUE per line" in text
    assert "Property is type None" not in text
