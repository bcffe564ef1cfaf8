"""The two work pools and the workers that serve them: which GPUs a machine has, one worker per GPU.

    dspo-local   the parent flow and the CPU stages (ingest, degrade, rank, caption): one process
                 worker, `dspo up --limit` concurrent flow runs
    dspo-gpu     the GPU stages, those whose StageSpec says `gpu=True` (sample, segment, score,
                 train, evaluate; prefect.yaml's deployments name this pool, tests/test_gpu_pools.py
                 checks that they agree): one process worker per GPU, started with
                 CUDA_VISIBLE_DEVICES=<that GPU> and a limit of one flow run (a stage's models take
                 the whole card), so each GPU stage run sees exactly one GPU, as cuda:0

Without a GPU (none visible, or `--gpus 0`) the GPU stage runs are still served: one worker of
dspo-gpu with CUDA_VISIBLE_DEVICES="" and the local limit, so they run on the CPU as before (each
stage names its CPU fallback in its manifest). The deployments never change with the machine:
a GPU host that joins later (`prefect worker start --pool dspo-gpu`) gets the GPU runs. With
`--remote-gpu-workers` this machine starts no dspo-gpu worker at all (GPU hosts serve it).

Visible GPUs: $CUDA_VISIBLE_DEVICES when set (its entries are the ids handed out), else the lines
of `nvidia-smi -L`; torch is not imported. `--gpus N` (or $DSPO_GPUS) overrides the count; asking
for more than are visible is allowed (forced) and said in the layout's note.

Shards of a GPU stage on a temporary Dask cluster (DSPO_TASK_RUNNER=dask, no DSPO_DASK_ADDRESS)
run on one Dask worker per GPU visible to the flow run, each pinned with CUDA_VISIBLE_DEVICES:
`dask_gpu_runner_options`. No Prefect import here.
"""
from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass, field

from flows.common import WORK_POOL

LOCAL_POOL = WORK_POOL
GPU_POOL = "dspo-gpu"
POOLS = (LOCAL_POOL, GPU_POOL)
#: Flow runs at once per GPU worker: a stage's models fill one card.
GPU_WORKER_LIMIT = 1
#: Pid file names (flows/supervisor.py) of the workers: the local one, and the GPU pool's.
LOCAL_WORKER = "worker"
GPU_WORKER_PREFIX = "gpu-worker-"
CPU_SERVED_GPU_WORKER = f"{GPU_WORKER_PREFIX}cpu"


class GpuLayoutError(ValueError):
    """`--gpus` / $DSPO_GPUS cannot be used as asked; the message says what to pass."""


def gpu_stages() -> tuple[str, ...]:
    """The stages served by the GPU pool, in pipeline order: those declared with `gpu=True`."""
    from pipeline.stages import STAGE_SPECS

    return tuple(name for name, spec in STAGE_SPECS.items() if spec.gpu)


@dataclass(frozen=True)
class VisibleGpus:
    """The GPUs this process may use: `devices` are the ids to hand out one per worker (what
    CUDA_VISIBLE_DEVICES of that worker will be), `source` says how they were found."""

    devices: tuple[str, ...]
    source: str


def visible_gpus(environ: dict[str, str] | None = None) -> VisibleGpus:
    """$CUDA_VISIBLE_DEVICES when set ("" or "-1": none), else one per `GPU n:` line of
    `nvidia-smi -L`, else none (no nvidia-smi, or it failed: the source says which)."""
    environ = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in environ:
        raw = environ["CUDA_VISIBLE_DEVICES"].strip()
        devices: list[str] = []
        for entry in (item.strip() for item in raw.split(",")):
            if not entry or entry.startswith("-"):  # CUDA stops at the first invalid id
                break
            devices.append(entry)
        return VisibleGpus(tuple(devices), f"CUDA_VISIBLE_DEVICES={raw!r}")
    return _nvidia_smi_gpus()


@functools.lru_cache(maxsize=1)
def _nvidia_smi_gpus() -> VisibleGpus:
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return VisibleGpus((), "no nvidia-smi on PATH")
    try:
        listed = subprocess.run([binary, "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return VisibleGpus((), f"nvidia-smi -L failed ({type(exc).__name__})")
    if listed.returncode != 0:
        return VisibleGpus((), f"nvidia-smi -L exited {listed.returncode}")
    count = sum(1 for line in listed.stdout.splitlines() if line.startswith("GPU "))
    return VisibleGpus(tuple(str(index) for index in range(count)), "nvidia-smi -L")


def parse_gpus(value: str | None) -> int | None:
    """`--gpus` / $DSPO_GPUS: a count >= 0, or empty / "auto" for every visible GPU (None)."""
    text = (value or "").strip().lower()
    if text in ("", "auto"):
        return None
    if not text.isdigit():
        raise GpuLayoutError(f"--gpus {value!r}: expected a number of GPUs (0: none, the GPU stages run on "
                             "the CPU) or auto")
    return int(text)


@dataclass(frozen=True)
class WorkerSpec:
    """One process worker `dspo up` runs: its pid file `name`, the pool it polls, its flow-run
    `limit`, the Prefect worker name it registers as, and `device`: the CUDA_VISIBLE_DEVICES it
    runs with (None: the caller's, unchanged; "": no GPU)."""

    name: str
    pool: str
    limit: int
    worker_name: str
    device: str | None = None

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """`base` (the stack's environment) with this worker's CUDA_VISIBLE_DEVICES; the process
        worker hands its own environment to each flow run it starts."""
        env = dict(base)
        if self.device is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.device
        return env

    def argv(self, python: str) -> list[str]:
        return [python, "-m", "prefect", "worker", "start", "--pool", self.pool, "--name", self.worker_name,
                "--limit", str(self.limit), "--type", "process"]

    def record(self) -> dict:
        """What stack.json keeps of it: a running worker whose record differs is restarted."""
        return {"pool": self.pool, "limit": self.limit, "worker_name": self.worker_name, "device": self.device}


@dataclass(frozen=True)
class WorkerLayout:
    """The workers of one `dspo up`, the local one first, and `note`: one line on the GPU pool
    (how many GPUs, found how, and any fallback: GPU stages on the CPU, or forced ids)."""

    workers: tuple[WorkerSpec, ...]
    note: str
    gpu_devices: tuple[str, ...] = field(default=())


def worker_layout(limit: int, gpus: int | None = None, remote_gpu_workers: bool = False,
                  visible: VisibleGpus | None = None) -> WorkerLayout:
    """The workers to run: the local pool's, then one per GPU (`gpus` of them, None: every visible
    one), or the CPU worker of the GPU pool when there is none, or nothing for the GPU pool with
    `remote_gpu_workers` (its workers run on other machines)."""
    host = socket.gethostname()
    local = WorkerSpec(LOCAL_WORKER, LOCAL_POOL, limit, f"{host}-local")
    if remote_gpu_workers:
        if gpus:
            raise GpuLayoutError(f"--gpus {gpus} and --remote-gpu-workers: pass one (remote: the GPU pool's "
                                 "workers run on other machines, none here)")
        return WorkerLayout((local,), f"{GPU_POOL}: no worker here (--remote-gpu-workers): GPU stage runs wait "
                                      f"for `prefect worker start --pool {GPU_POOL}` on a GPU machine")
    visible = visible_gpus() if visible is None else visible
    count = len(visible.devices) if gpus is None else gpus
    if count == 0:
        why = "--gpus 0" if gpus == 0 else f"no GPU visible ({visible.source})"
        cpu = WorkerSpec(CPU_SERVED_GPU_WORKER, GPU_POOL, limit, f"{host}-gpu-pool-on-cpu", device="")
        return WorkerLayout((local, cpu), f"{GPU_POOL}: {why}: one CPU worker serves it, the GPU stages "
                                          f"({', '.join(gpu_stages())}) run on the CPU")
    devices = visible.devices[:count]
    note = f"{GPU_POOL}: {count} GPU worker(s), one GPU each ({visible.source})"
    if count > len(visible.devices):
        devices = (*devices, *(str(index) for index in range(len(devices), count)))
        note = (f"{GPU_POOL}: --gpus {count} forced although {len(visible.devices)} visible "
                f"({visible.source}): worker ids {','.join(devices)}")
    gpu_workers = tuple(WorkerSpec(f"{GPU_WORKER_PREFIX}{index}", GPU_POOL, GPU_WORKER_LIMIT,
                                   f"{host}-gpu{index}", device=device) for index, device in enumerate(devices))
    return WorkerLayout((local, *gpu_workers), note, tuple(devices))


def dask_gpu_runner_options(devices: tuple[str, ...]) -> dict:
    """DaskTaskRunner keyword arguments for a temporary cluster of one single-threaded worker per
    GPU id in `devices`, each started with CUDA_VISIBLE_DEVICES=<its id> (and a `GPU` resource of 1),
    bound to 127.0.0.1, no dashboard."""
    return {
        "cluster_class": "distributed.SpecCluster",
        "cluster_kwargs": {
            "scheduler": {"cls": "distributed.Scheduler",
                          "options": {"host": "127.0.0.1", "dashboard": False}},
            "workers": {f"gpu-{device}": {"cls": "distributed.Nanny", "options": {
                "nthreads": 1, "host": "127.0.0.1", "resources": {"GPU": 1},
                "env": {"CUDA_VISIBLE_DEVICES": device}}} for device in devices},
        },
    }
