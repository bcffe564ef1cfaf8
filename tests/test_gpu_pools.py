"""The GPU work pool without a GPU: which stages it serves (the declarations, and prefect.yaml
agreeing with them), the workers `dspo up` lays out for a machine, their environment, the GPU
count found from CUDA_VISIBLE_DEVICES or nvidia-smi, and a GPU stage's Dask cluster pinning one
GPU per worker. A real `dspo up --gpus 2` runs in tests/test_postgres_server.py."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml

from flows import gpu_pools
from flows.gpu_pools import GPU_POOL, LOCAL_POOL, VisibleGpus, worker_layout
from pipeline.stages import STAGE_SPECS

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_stages_come_from_the_declarations():
    assert gpu_pools.gpu_stages() == ("sample", "segment", "score", "train", "evaluate")
    assert gpu_pools.gpu_stages() == tuple(name for name, spec in STAGE_SPECS.items() if spec.gpu)


def test_prefect_yaml_sends_exactly_the_gpu_stages_to_the_gpu_pool():
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    pools = {item["entrypoint"].rpartition(":")[2]: item["work_pool"]["name"] for item in config["deployments"]}
    assert pools.pop("dspo") == LOCAL_POOL, "the parent flow runs on the local pool"
    expected = {f"dspo_{name}": GPU_POOL if spec.gpu else LOCAL_POOL for name, spec in STAGE_SPECS.items()}
    assert pools == expected
    for item in config["deployments"]:  # both pools hand the pipeline's loggers to flow runs
        assert item["work_pool"]["job_variables"]["env"]["PREFECT_LOGGING_EXTRA_LOGGERS"] == "dspo,storage"


def test_one_worker_per_visible_gpu_each_pinned_to_it():
    layout = worker_layout(4, visible=VisibleGpus(("3", "5"), "CUDA_VISIBLE_DEVICES='3,5'"))
    local, *gpu = layout.workers
    assert (local.name, local.pool, local.limit, local.device) == ("worker", LOCAL_POOL, 4, None)
    assert [(spec.name, spec.pool, spec.limit, spec.device) for spec in gpu] == [
        ("gpu-worker-0", GPU_POOL, 1, "3"), ("gpu-worker-1", GPU_POOL, 1, "5")]
    assert len({spec.worker_name for spec in layout.workers}) == 3
    assert "2 GPU worker(s)" in layout.note and "CUDA_VISIBLE_DEVICES='3,5'" in layout.note
    assert [spec.device for spec in worker_layout(4, 1, visible=VisibleGpus(("3", "5"), "x")).workers] == [None, "3"]

    spec = gpu[1]
    base = {"PATH": "/usr/bin", "CUDA_VISIBLE_DEVICES": "0,1,2,3", "DSPO_STORE": "s3://b/p"}
    assert spec.env(base) == {**base, "CUDA_VISIBLE_DEVICES": "5"} and base["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    assert local.env(base) == base
    argv = spec.argv("/venv/bin/python")
    assert argv[:5] == ["/venv/bin/python", "-m", "prefect", "worker", "start"]
    assert argv[argv.index("--pool") + 1] == GPU_POOL and argv[argv.index("--limit") + 1] == "1"
    assert argv[argv.index("--name") + 1] == spec.worker_name


def test_without_a_gpu_one_cpu_worker_serves_the_gpu_pool():
    for layout, why in [(worker_layout(3, visible=VisibleGpus((), "no nvidia-smi on PATH")), "no GPU visible"),
                        (worker_layout(3, 0, visible=VisibleGpus(("0",), "nvidia-smi -L")), "--gpus 0")]:
        local, cpu = layout.workers
        assert local.pool == LOCAL_POOL
        assert (cpu.name, cpu.pool, cpu.limit, cpu.device) == ("gpu-worker-cpu", GPU_POOL, 3, "")
        assert cpu.env({"CUDA_VISIBLE_DEVICES": "0"})["CUDA_VISIBLE_DEVICES"] == ""  # the GPU hidden
        assert why in layout.note and "run on the CPU" in layout.note


def test_forced_and_remote_layouts():
    forced = worker_layout(4, 2, visible=VisibleGpus((), "no nvidia-smi on PATH"))
    assert [spec.device for spec in forced.workers[1:]] == ["0", "1"] and "forced" in forced.note
    remote = worker_layout(4, None, remote_gpu_workers=True)
    assert [spec.pool for spec in remote.workers] == [LOCAL_POOL] and "--remote-gpu-workers" in remote.note
    with pytest.raises(gpu_pools.GpuLayoutError, match="pass one"):
        worker_layout(4, 2, remote_gpu_workers=True)
    assert [gpu_pools.parse_gpus(text) for text in (None, "", "auto", "0", "4")] == [None, None, None, 0, 4]
    with pytest.raises(gpu_pools.GpuLayoutError, match="--gpus 'two': expected a number"):
        gpu_pools.parse_gpus("two")


def test_visible_gpus_from_the_environment_or_nvidia_smi(tmp_path, monkeypatch):
    assert gpu_pools.visible_gpus({"CUDA_VISIBLE_DEVICES": "2,GPU-8f3e,-1,4"}).devices == ("2", "GPU-8f3e")
    assert gpu_pools.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}).devices == ()
    # A stand-in for the driver's tool, printing what `nvidia-smi -L` prints on a two-GPU machine.
    tool = tmp_path / "nvidia-smi"
    tool.write_text("#!/bin/sh\n[ \"$1\" = -L ] || exit 9\n"
                    "echo 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1b2c)'\n"
                    "echo '  MIG 1g.10gb Device 0: (UUID: MIG-77aa)'\n"
                    "echo 'GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-3d4e)'\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    gpu_pools._nvidia_smi_gpus.cache_clear()
    try:
        assert gpu_pools.visible_gpus({}) == VisibleGpus(("0", "1"), "nvidia-smi -L")
        tool.write_text("#!/bin/sh\nexit 6\n")
        gpu_pools._nvidia_smi_gpus.cache_clear()
        assert gpu_pools.visible_gpus({}) == VisibleGpus((), "nvidia-smi -L exited 6")
    finally:
        gpu_pools._nvidia_smi_gpus.cache_clear()


def test_a_gpu_stage_on_dask_gets_one_pinned_worker_per_gpu(monkeypatch):
    """The runner a GPU stage's flow gets with DSPO_TASK_RUNNER=dask, started for real: each Dask
    worker process sees one GPU id of the flow run's; a CPU stage keeps the plain local cluster."""
    from distributed import Client

    from flows.stage_flows import shard_task_runner

    monkeypatch.setenv("DSPO_TASK_RUNNER", "dask")
    monkeypatch.delenv("DSPO_DASK_ADDRESS", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert shard_task_runner("degrade").cluster_kwargs["n_workers"] >= 1
    runner = shard_task_runner("sample")
    cluster = runner.resolved_cluster_class(**runner.cluster_kwargs)
    try:
        with Client(cluster) as client:
            seen = client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
            resources = {info["id"]: info["resources"] for info in client.scheduler_info()["workers"].values()}
        assert sorted(seen.values()) == ["4", "6"]
        assert sorted(resources) == ["gpu-4", "gpu-6"] and all(item == {"GPU": 1} for item in resources.values())
    finally:
        cluster.close()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert "n_workers" in shard_task_runner("sample").cluster_kwargs  # no GPU: the plain cluster


def test_dspo_up_refuses_a_bad_gpu_count_or_database_before_starting_anything(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    state = tmp_path / "stack"
    env = {"COLUMNS": "200", "DSPO_GPUS": None, "DSPO_DATABASE_URL": None}
    for args, fragment in [(["--gpus", "two"], "--gpus 'two': expected a number of GPUs"),
                           (["--gpus", "2", "--remote-gpu-workers"], "pass one"),
                           (["--database", "mysql://prefect:s3cr3t-pw@db.example.org/prefect"],
                            "--database mysql://***@db.example.org/prefect: expected postgresql://")]:
        result = CliRunner().invoke(app, ["up", "--state-dir", str(state), *args], env=env)
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
        assert fragment in lines[0] and "s3cr3t" not in result.output and "Traceback" not in result.output
    assert not state.exists(), "nothing may be started or written for a refused `dspo up`"
