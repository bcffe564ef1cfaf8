"""The stack on PostgreSQL with two GPU workers, forced on this CPU machine, as a user starts it:

    DSPO_DATABASE_URL=postgresql://dspo:PW@127.0.0.1:PORT/prefect dspo up --gpus 2 --port 0
        a throwaway PostgreSQL cluster (tests/support/postgres.py), the server migrated onto it;
        the worker of dspo-local and gpu-worker-0/1 of dspo-gpu, CUDA_VISIBLE_DEVICES 0 and 1
    the segment stage's deployment (dspo-gpu) on the test profile, 4 small images (its input
        made in this process): its flow run, task runs, logs and artifacts recorded in PostgreSQL
    dspo up --gpus 1           the server and workers reused, gpu-worker-1 stopped
    dspo down                  every process it started is gone

The password is in no log, state or pid file, nor in what `dspo up` prints. One stage run
rather than the whole pipeline keeps this short (each flow run imports the pipeline: ~12 s of
CPU); the full pipeline through the deployments runs on SQLite in tests/test_e2e_prefect.py.
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from PIL import Image
from support.stack_processes import processes_of

from flows import prefect_api, stack, supervisor
from flows.common import stage_deployment
from flows.gpu_pools import GPU_POOL, LOCAL_POOL
from flows.pipeline_run import TERMINAL, create_run
from pipeline.config import load_config
from pipeline.stage import run_stage
from pipeline.stages import STAGES
from storage import DatasetStore
from tests.support.postgres import ThrowawayPostgres, postgres_bin

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
DSPO = ROOT / ".venv" / "bin" / "dspo"
# One shard per stage: the 4 images of the test.
SMALL = ["degrade.shard_size=4", "segment.shard_size=4"]
LOGS = ("server", "worker", "gpu-worker-0", "gpu-worker-1", "deploy")


def run(argv: list, env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([str(part) for part in argv], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def explain(result: subprocess.CompletedProcess, state: Path) -> str:
    logs = "\n".join(f"--- {name}.log\n{supervisor.tail(state / 'logs' / f'{name}.log', 30)}" for name in LOGS)
    return f"exit {result.returncode}\nstdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}\n{logs}"


@pytest.fixture(scope="module")
def postgres():
    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (/usr/lib/postgresql/*/bin/initdb): `make system-deps` as root "
                    "installs Debian's postgresql")
    cluster = ThrowawayPostgres(bin_dir)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def environ_of(pid: int) -> dict[str, str]:
    """The environment a running process was started with, read back from /proc."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def wait_for_run(port: int, run_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, record = prefect_api.http("GET", f"{prefect_api.api_url(port)}/flow_runs/{run_id}", timeout=30)
        assert status == 200, record
        if record["state_type"] in TERMINAL or time.monotonic() > deadline:
            return record
        time.sleep(1)


def test_gpu_workers_and_stage_runs_on_a_postgresql_server(postgres, tmp_path):
    state = tmp_path / "stack"
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PREFECT_", "DSPO_", "CUDA_VISIBLE_DEVICES"))}
    env["DSPO_DATABASE_URL"] = postgres.url
    records: list[dict] = []
    outputs: list[str] = []
    # The segment stage's input made here, in this process (two flow runs would cost ~25 s of CPU).
    store_uri = (tmp_path / "store").as_uri()
    store = DatasetStore(store_uri)
    rng = np.random.default_rng(0)
    (tmp_path / "photos").mkdir()
    for index in range(4):
        Image.fromarray(rng.integers(0, 256, (160, 160, 3), dtype=np.uint8)).save(tmp_path / "photos" / f"{index}.png")
    config = load_config("test", [f"ingest.source={tmp_path / 'photos'}", *SMALL])
    assert run_stage(STAGES["ingest"], store, config).ref == "hr_images@v1"
    assert run_stage(STAGES["degrade"], store, config).ref == "lq_pairs@v1"
    try:
        started = time.monotonic()
        result = run([DSPO, "up", "--port", "0", "--state-dir", state, "--gpus", "2", "--limit", "2"], env,
                     timeout=600)
        outputs.append(result.stdout + result.stderr)
        assert result.returncode == 0, explain(result, state)
        print(f"dspo up on PostgreSQL with 2 GPU workers: {time.monotonic() - started:.1f}s")
        assert "database:     postgresql://***@127.0.0.1:" in result.stdout
        assert "--gpus 2 forced" in result.stdout
        for name in ("server", "worker", "gpu-worker-0", "gpu-worker-1"):
            records.append(supervisor.read_pidfile(state / f"{name}.pid"))
            assert supervisor.is_ours(records[-1]), f"{name} is not running:\n{explain(result, state)}"
        server, local, *gpu = records
        assert environ_of(server["pid"])["PREFECT_API_DATABASE_CONNECTION_URL"] == \
            postgres.url.replace("postgresql://", "postgresql+asyncpg://")
        assert "CUDA_VISIBLE_DEVICES" not in environ_of(local["pid"])
        for index, record in enumerate(gpu):
            worker_env = environ_of(record["pid"])
            assert worker_env["CUDA_VISIBLE_DEVICES"] == str(index)
            assert "PREFECT_API_DATABASE_CONNECTION_URL" not in worker_env and "DSPO_DATABASE_URL" not in worker_env
            assert record["argv"][record["argv"].index("--pool") + 1] == GPU_POOL
        report = stack.status(str(state))
        assert report["work_pools"] == {LOCAL_POOL: "READY", GPU_POOL: "READY"}, report
        assert report["database"] == f"postgresql://***@127.0.0.1:{postgres.port}/prefect"
        port = report["port"]
        assert len(prefect_api.online_workers(port, GPU_POOL)) == 2

        # A GPU stage through its deployment: the GPU pool's worker runs it, PostgreSQL records it.
        started = time.monotonic()
        flow_run = create_run(port, stage_deployment("segment"), {
            "store": store_uri, "profile": "test", "lq_pairs": "v1", "overrides": SMALL})
        segment = wait_for_run(port, flow_run.id, timeout=300)
        assert segment["state_type"] == "COMPLETED", (segment["state"], explain(result, state))
        print(f"{stage_deployment('segment')} on PostgreSQL: {time.monotonic() - started:.1f}s")
        assert segment["work_pool_name"] == GPU_POOL
        assert store.manifest("instances@v1")["inputs"] == ["lq_pairs@v1"]
        assert store.manifest("instances@v1")["run_id"] == segment["id"]
        # The worker ships a run's last log lines after the run has ended: wait for the publish line.
        deadline = time.monotonic() + 60
        while True:
            status, logs = prefect_api.http("POST", f"{prefect_api.api_url(port)}/logs/filter", {
                "logs": {"flow_run_id": {"any_": [segment["id"]]}}, "sort": "TIMESTAMP_DESC", "limit": 200},
                timeout=30)
            found = status == 200 and any("instances@v1" in line["message"] for line in logs)
            if found or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert found, logs
        status, artifacts = prefect_api.http("POST", f"{prefect_api.api_url(port)}/artifacts/filter", {
            "artifacts": {"flow_run_id": {"any_": [segment["id"]]}}}, timeout=30)
        assert status == 200 and "dspo-segment-result" in {item["key"] for item in artifacts}, artifacts

        # A smaller layout: the server (same database) and the first workers stay, gpu-worker-1 stops.
        again = run([DSPO, "up", "--state-dir", state, "--gpus", "1", "--limit", "2"], env, timeout=300)
        outputs.append(again.stdout + again.stderr)
        assert again.returncode == 0, explain(again, state)
        for line in ("server: reusing pid", "worker: reusing pid", "gpu-worker-0: reusing pid",
                     "stopped gpu-worker-1"):
            assert line in again.stdout, again.stdout
        assert not supervisor.is_ours(gpu[1]) and not (state / "gpu-worker-1.pid").exists()
    finally:
        store.close()
        alive_before = processes_of(records)
        result = run([DSPO, "down", "--state-dir", state], env, timeout=120)
        outputs.append(result.stdout + result.stderr)
        left = [process for process in alive_before if _alive(process)]
        for process in left:
            process.kill()
    assert result.returncode == 0, explain(result, state)
    assert not left, f"still running after dspo down: {[process.pid for process in left]}"
    assert not list(state.glob("*.pid"))
    # The password never reached a file of the stack, nor what `dspo up` / `dspo down` printed.
    for path in [*state.rglob("*")]:
        if path.is_file() and path.suffix in (".log", ".json", ".pid", ".toml", ""):
            assert postgres.password not in path.read_text(errors="replace"), path
    assert all(postgres.password not in text for text in outputs)


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
