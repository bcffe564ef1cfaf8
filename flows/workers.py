"""The stack's process workers: start those of a WorkerLayout (flows/gpu_pools.py), reuse the
ones whose record is unchanged, stop the ones the layout no longer has.

A worker is reused when it runs, was started by this state folder and its record in stack.json
(pool, limit, Prefect worker name, CUDA_VISIBLE_DEVICES, the digest of the DSPO_* / AWS_*
variables it passes on) is what the layout asks now; otherwise it is restarted. A started worker
counts as up once the server lists it ONLINE in its pool.
"""
from __future__ import annotations

from pathlib import Path

from flows.environment import interpreter, passed_on_digest
from flows.gpu_pools import GPU_WORKER_PREFIX, LOCAL_WORKER, WorkerLayout, WorkerSpec
from flows.prefect_api import online_workers
from flows.stack_state import Paths, save_state
from flows.supervisor import Say, is_ours, read_pidfile, spawn, stop, tail, wait_for

ONLINE_TIMEOUT = 90


class WorkerStartError(RuntimeError):
    """A worker exited or did not come online; the message quotes its log."""


def worker_names(paths: Paths) -> list[str]:
    """Pid file names of the workers this state folder has: the GPU pool's (sorted), then the local one."""
    gpu = sorted(path.stem for path in paths.root.glob(f"{GPU_WORKER_PREFIX}*.pid"))
    return [*gpu, LOCAL_WORKER]


def _record(spec: WorkerSpec) -> dict:
    return {**spec.record(), "passed_on": passed_on_digest()}


def _described(spec: WorkerSpec) -> str:
    device = "" if spec.device is None else f", CUDA_VISIBLE_DEVICES={spec.device!r}"
    return f"pool {spec.pool}, limit {spec.limit}{device}"


def run_workers(layout: WorkerLayout, port: int, env: dict, paths: Paths, project: Path, saved: dict,
                say: Say) -> dict[str, dict]:
    """Start or reuse every worker of `layout` (stopping the GPU workers it no longer has); their
    pid records by name. WorkerStartError when one exits or is not online within ONLINE_TIMEOUT."""
    records: dict = saved.setdefault("workers", {})
    wanted = {spec.name for spec in layout.workers}
    for name in worker_names(paths):
        if name not in wanted:
            stop(name, paths, 15, say)
            records.pop(name, None)
    running: dict[str, dict] = {}
    started: list[WorkerSpec] = []
    for spec in layout.workers:
        pid_record = read_pidfile(paths.pidfile(spec.name))
        if is_ours(pid_record) and records.get(spec.name) == _record(spec):
            say(f"{spec.name}: reusing pid {pid_record['pid']}")
            running[spec.name] = pid_record
            continue
        if is_ours(pid_record):
            say(f"{spec.name}: environment, pool, limit or GPU changed; restarting it")
            stop(spec.name, paths, 15, say)
        running[spec.name] = spawn(spec.name, spec.argv(interpreter(project)), spec.env(env), paths, project)
        records[spec.name] = _record(spec)
        save_state(paths, saved)
        say(f"{spec.name}: started pid {running[spec.name]['pid']} ({_described(spec)})")
        started.append(spec)

    def online() -> bool:
        pools = {spec.pool for spec in started}
        listed = set().union(*(online_workers(port, pool) for pool in pools)) if pools else set()
        return all(spec.worker_name in listed for spec in started) or any(
            not is_ours(running[spec.name]) for spec in started)

    wait_for(online, ONLINE_TIMEOUT, 0.5)
    for spec in started:
        listed = online_workers(port, spec.pool)
        if not is_ours(running[spec.name]) or spec.worker_name not in listed:
            alive = is_ours(running[spec.name])
            for other in started:
                stop(other.name, paths, 10, say)
                records.pop(other.name, None)
            save_state(paths, saved)
            raise WorkerStartError(
                f"the worker {spec.name} ({_described(spec)}) "
                f"{'did not come online within %ds' % ONLINE_TIMEOUT if alive else 'exited'}; last lines of "
                f"{paths.log(spec.name)}:\n{tail(paths.log(spec.name))}")
    return running
