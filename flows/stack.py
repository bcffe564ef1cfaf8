"""The embedded Prefect stack behind `dspo up`, `dspo down`, `dspo status` and `dspo pipeline`.

`dspo up` starts, in the state folder (flows/stack_state.py):

    prefect server start --host 127.0.0.1 --port PORT --analytics-off
        PREFECT_HOME=<state>/prefect, log logs/server.log; database SQLite at <state>/prefect.db,
        or PostgreSQL with --database / $DSPO_DATABASE_URL (flows/database.py)
    the process work pools `dspo-local` and `dspo-gpu` (created if missing)
    prefect --no-prompt deploy --all      (prefect.yaml; DSPO_PROJECT_DIR=<project>, log logs/deploy.log)
    prefect worker start --pool dspo-local --limit 4     (project venv interpreter, log logs/worker.log)
    prefect worker start --pool dspo-gpu --limit 1       one per GPU, CUDA_VISIBLE_DEVICES=<i>
                                                         (logs/gpu-worker-<i>.log; flows/gpu_pools.py)

`dspo up` is idempotent: a healthy server on the same database and live workers are reused. It
redeploys only when prefect.yaml or flows/*.py changed since the last deploy, and restarts a
worker when the environment it would pass on (DSPO_*, AWS_* variables), its limit or its GPU
changed. A lock file serialises concurrent `dspo up` / `dspo down`; `dspo down` stops exactly
the processes `dspo up` started.

This module decides what to start, reuse or stop. The pieces it uses: flows/supervisor.py
(processes and pid files), flows/prefect_api.py (the server over HTTP, the port probe),
flows/environment.py (interpreter and variables), flows/stack_state.py (the state folder),
flows/gpu_pools.py and flows/workers.py (which workers, and running them), flows/database.py,
flows/pipeline_run.py (a pipeline run: created over the API, explained when it fails).
No Prefect import: it talks to the server over HTTP and runs Prefect's CLI.
"""
from __future__ import annotations

import hashlib
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from flows import database as databases
from flows.common import PARENT_DEPLOYMENT, PARENT_FLOW
from flows.database import Database
from flows.environment import interpreter, server_env, stack_env
from flows.gpu_pools import GPU_POOL, LOCAL_POOL, POOLS, worker_layout
from flows.prefect_api import (
    HOST, api_url, deployed_names, free_port, healthy, http, port_free, ui_url, work_pool, work_pool_status,
)
from flows.pipeline_run import FlowRunRef, RunError, create_run, failure
from flows.stack_state import Paths, load_state, locked, save_state, state_dir
from flows.supervisor import Say, is_ours, read_pidfile, spawn, stop, tail, wait_for
from flows.workers import WorkerStartError, run_workers, worker_names
from pipeline.config import load_config
from pipeline.paths import project_dir

DEFAULT_PORT = 4200
WORKER_LIMIT = 4


class StackError(RuntimeError):
    """The stack cannot be started, reached or stopped; the message says why and where to look."""


@dataclass
class StackInfo:
    """What `dspo up` set up (or found running): where it is and what it serves."""

    state_dir: str
    port: int
    api_url: str
    ui_url: str
    server_pid: int | None
    worker_pid: int | None
    deployments: list[str]
    reused: bool
    database: str = ""
    workers: dict[str, int] | None = None   # pid of each worker by name (worker, gpu-worker-0, ...)
    gpu_note: str = ""                       # how the GPU pool is served here (flows/gpu_pools.py)


def source_project() -> Path:
    """The project this code runs from (where prefect.yaml is), whatever the working directory."""
    return project_dir(Path(__file__).resolve().parent)


def expected_deployments(project: Path) -> list[str]:
    """`flow/deployment` names of the deployments in the project's prefect.yaml.

    Read from the file rather than from `pipeline.stages`, whose import (torch, diffusers, peft)
    would add ~10 s to every `dspo up`; tests/test_flows.py checks that prefect.yaml has the
    pipeline and one deployment per stage, named after it (`dspo-segment/segment`). A flow's name is its entrypoint function's
    with dashes (`flows/stage_flows.py:dspo_degrade` -> `dspo-degrade`), as flows/ names them.
    """
    import yaml

    config = yaml.safe_load((project / "prefect.yaml").read_text()) or {}
    return sorted(f"{item['entrypoint'].rpartition(':')[2].replace('_', '-')}/{item['name']}"
                  for item in config.get("deployments") or [])


def deploy_digest(project: Path) -> str:
    """Hash of what `prefect deploy` reads: prefect.yaml and the flow modules."""
    digest = hashlib.sha256()
    for path in [project / "prefect.yaml", *sorted((project / "flows").glob("*.py"))]:
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def prefect_cli(args: list[str], env: dict, paths: Paths, project: Path, log_name: str,
                timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m prefect ARGS` to completion, output appended to logs/<log_name>.log."""
    argv = [interpreter(project), "-m", "prefect", *args]
    paths.logs.mkdir(parents=True, exist_ok=True)
    with open(paths.log(log_name), "ab") as log:
        log.write(f"\n---- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
        log.flush()
        try:
            return subprocess.run(argv, env=env, cwd=project, stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise StackError(f"`prefect {' '.join(args)}` took more than {timeout:.0f}s; see {paths.log(log_name)}")


# ----------------------------------------------------------------------------- up
def up(state: str | None = None, port: int | None = None, limit: int = WORKER_LIMIT, timeout: float = 120,
       redeploy: bool = False, say: Say = print, gpus: int | None = None, remote_gpu_workers: bool = False,
       database: str | None = None) -> StackInfo:
    """Start (or reuse) server, work pools, deployments and workers; see the module docstring.
    `gpus`: GPU workers (None: one per visible GPU; flows/gpu_pools.py); `database`: a PostgreSQL
    URL for the server (None: SQLite in the state folder)."""
    paths = Paths(state_dir(state))
    project = source_project()
    if not (project / "prefect.yaml").is_file():
        raise StackError(f"no prefect.yaml in {project}: `dspo up` deploys from the project's source folder "
                         "(an editable install, `pip install -e .`)")
    chosen_database = databases.chosen(database, paths.database)
    layout = worker_layout(limit, gpus, remote_gpu_workers)
    with locked(paths):
        saved = load_state(paths)
        server, chosen, reused = _server(paths, project, saved, port, chosen_database, timeout, say)
        if not reused:  # a new server has none of the old one's deployments or workers
            saved = {}
        env = stack_env(paths, chosen, project)
        saved.update({"port": chosen, "api_url": api_url(chosen), "ui_url": ui_url(chosen), "project": str(project),
                      "database": chosen_database.shown, "gpu_note": layout.note})
        save_state(paths, saved)
        say(layout.note)
        _work_pools(chosen, env, paths, project, say)
        _deployments(chosen, env, paths, project, saved, redeploy, say)
        try:
            workers = run_workers(layout, chosen, env, paths, project, saved, say)
        except WorkerStartError as exc:
            raise StackError(str(exc)) from None
        return StackInfo(state_dir=str(paths.root), port=chosen, api_url=api_url(chosen), ui_url=ui_url(chosen),
                         server_pid=server["pid"], worker_pid=workers["worker"]["pid"],
                         deployments=deployed_names(chosen), reused=reused, database=chosen_database.shown,
                         workers={name: record["pid"] for name, record in workers.items()}, gpu_note=layout.note)


def _server(paths: Paths, project: Path, saved: dict, port: int | None, database: Database, timeout: float,
            say: Say) -> tuple[dict, int, bool]:
    """The server's pid record, its port and whether it was reused: the running one when it is
    ours, healthy, on the asked port and database, else a new one (the old server and workers stopped)."""
    server = read_pidfile(paths.pidfile("server"))
    same_database = saved.get("database", databases.sqlite(paths.database).shown) == database.shown
    if (is_ours(server) and saved.get("port") and (port in (None, 0, saved["port"])) and same_database
            and healthy(saved["port"])):
        say(f"server: reusing pid {server['pid']} on port {saved['port']} ({database.shown})")
        return server, saved["port"], True
    if is_ours(server):
        say("server: running but not healthy, or on another port or database; restarting it")
        for name in worker_names(paths):
            stop(name, paths, 10, say)
        stop("server", paths, 10, say)
    chosen = (saved.get("port") if port is None else port) or DEFAULT_PORT
    if port == 0:
        chosen = free_port()
    if not port_free(chosen):
        raise StackError(f"port {chosen} on {HOST} is taken by another program; pass --port N (0: any free port)")
    paths.home.mkdir(parents=True, exist_ok=True)
    server = spawn("server", [interpreter(project), "-m", "prefect", "server", "start", "--host", HOST,
                              "--port", str(chosen), "--analytics-off"],
                   server_env(paths, chosen, project, database), paths, project)
    say(f"server: started pid {server['pid']} on port {chosen} ({database.shown}); waiting for "
        f"{api_url(chosen)}/health")
    if not wait_for(lambda: healthy(chosen) or not is_ours(server), timeout) or not healthy(chosen):
        alive = is_ours(server)
        stop("server", paths, 10, say)
        raise StackError(f"the Prefect server {'did not become healthy within %.0fs' % timeout if alive else 'exited'}"
                         f"; last lines of {paths.log('server')}:\n{tail(paths.log('server'))}")
    return server, chosen, False


def _work_pools(port: int, env: dict, paths: Paths, project: Path, say: Say) -> None:
    """Create the process work pools (local, GPU) the server does not have. The first is made by
    `prefect work-pool create`, which fills in the process worker's job template; a second is
    copied from a pool that has it, over the API (one Prefect CLI start less)."""
    template = None
    for pool in POOLS:
        status, record = work_pool(port, pool)
        if status == 200 and isinstance(record, dict) and record.get("type") == "process":
            template = template or record.get("base_job_template") or None
        elif status != 404:
            answer = f"HTTP {status}" if status else "no answer within 15s"
            raise StackError(f"cannot read work pool {pool} from {api_url(port)} ({answer}); see "
                             f"{paths.log('server')}:\n{tail(paths.log('server'))}")
    for pool in POOLS:
        if work_pool(port, pool)[0] != 404:
            continue
        if template:
            status, record = http("POST", f"{api_url(port)}/work_pools/", {
                "name": pool, "type": "process", "base_job_template": template}, timeout=30)
            if status not in (200, 201):
                raise StackError(f"could not create work pool {pool} on {api_url(port)}: HTTP {status}: {record}")
        else:
            result = prefect_cli(["--no-prompt", "work-pool", "create", pool, "--type", "process"], env, paths,
                                 project, "deploy", timeout=120)
            if result.returncode != 0:
                raise StackError(f"could not create work pool {pool}; see {paths.log('deploy')}:\n"
                                 f"{tail(paths.log('deploy'))}")
            created = work_pool(port, pool)[1]
            template = (created.get("base_job_template") if isinstance(created, dict) else None) or None
        say(f"work pool: created {pool} (process)")


def _deployments(port: int, env: dict, paths: Paths, project: Path, saved: dict, redeploy: bool, say: Say) -> None:
    """`prefect deploy --all` when asked, when a deployment is missing or when what it reads changed."""
    digest = deploy_digest(project)
    missing = sorted(set(expected_deployments(project)) - set(deployed_names(port)))
    if not (redeploy or missing or saved.get("deployed") != digest):
        return
    say(f"deploying prefect.yaml ({'missing: ' + ', '.join(missing) if missing else 'changed'})")
    # Without DSPO_PROJECT_DIR: `prefect deploy` substitutes a {{ $VAR }} it can resolve, which
    # would bake this machine's path into the pull step; unset, it stays for the worker to resolve.
    deploy_env = {key: value for key, value in env.items() if key != "DSPO_PROJECT_DIR"}
    result = prefect_cli(["--no-prompt", "deploy", "--all"], deploy_env, paths, project, "deploy", timeout=600)
    if result.returncode != 0:
        raise StackError(f"`prefect --no-prompt deploy --all` failed; last lines of {paths.log('deploy')}:\n"
                         f"{tail(paths.log('deploy'), 30)}")
    missing = sorted(set(expected_deployments(project)) - set(deployed_names(port)))
    if missing:
        raise StackError(f"`prefect deploy --all` did not create {', '.join(missing)}; see "
                         f"{paths.log('deploy')}:\n{tail(paths.log('deploy'), 30)}")
    saved["deployed"] = digest
    save_state(paths, saved)


# ----------------------------------------------------------------------------- down / status / run
def down(state: str | None = None, timeout: float = 15, say: Say = print) -> list[str]:
    """Stop the workers (GPU pool's, local), then the server, that `dspo up` started from this
    state folder; returns the names of those that were running."""
    paths = Paths(state_dir(state))
    if not paths.root.exists():
        return []
    with locked(paths):
        return [name for name in [*worker_names(paths), "server"] if stop(name, paths, timeout, say)]


def status(state: str | None = None) -> dict:
    """What runs from this state folder: processes (server, each worker), API health, UI URL, the
    database (credentials removed), each work pool's status, deployments, how the GPU pool is served."""
    paths = Paths(state_dir(state))
    saved = load_state(paths)
    report = {"state_dir": str(paths.root), "port": saved.get("port"), "ui_url": saved.get("ui_url"),
              "api_url": saved.get("api_url"), "database": saved.get("database"), "processes": {},
              "healthy": False, "deployments": [], "work_pool": None, "work_pools": {},
              "gpu_note": saved.get("gpu_note")}
    for name in ["server", *sorted(set(worker_names(paths)) | set(saved.get("workers") or {}))]:
        record = read_pidfile(paths.pidfile(name))
        report["processes"][name] = {"pid": record["pid"] if record else None, "running": is_ours(record),
                                     "log": str(paths.log(name))}
    if saved.get("port") and report["processes"]["server"]["running"]:
        report["healthy"] = healthy(saved["port"])
        if report["healthy"]:
            report["deployments"] = deployed_names(saved["port"])
            report["work_pools"] = {pool: work_pool_status(saved["port"], pool) for pool in POOLS}
            report["work_pool"] = report["work_pools"][LOCAL_POOL]
    return report


def require_running(state: str | None = None) -> dict:
    """The status report of a stack whose server is healthy and whose workers run; StackError otherwise."""
    report = status(state)
    if not report["healthy"]:
        raise StackError(f"no healthy stack in {report['state_dir']}: run `dspo up` first")
    stopped = [name for name, process in report["processes"].items() if name != "server" and not process["running"]]
    if stopped:
        raise StackError(f"the worker(s) {', '.join(stopped)} of the stack in {report['state_dir']} are not "
                         "running: run `dspo up` again")
    return report


@dataclass
class PipelineOutcome:
    """How a `dspo pipeline` run ended: the exit status for the command, the parent flow run, and
    unless it completed the one line that says why (the failed stage, its flow run, the reason)."""

    code: int
    flow_run: FlowRunRef
    failure: str | None


def run_pipeline(parameters: dict, state: str | None = None, deployment: str | None = None,
                 timeout: float | None = None, say: Say = print) -> PipelineOutcome:
    """Run dspo/full-pipeline on the stack, as `prefect deployment run ... --watch` does, and explain
    a run that does not complete (flows/pipeline_run.py).

    The profile and overrides are checked here first (ConfigError, before the server is asked
    anything); then a flow run is created over the API and followed with `prefect flow-run watch`,
    whose live events and logs go to this process's stdout."""
    load_config(parameters.get("profile", "demo"), parameters.get("overrides") or {})
    report = require_running(state)
    port = report["port"]
    project = source_project()
    name = deployment or f"{PARENT_FLOW}/{PARENT_DEPLOYMENT}"
    try:
        run = create_run(port, name, parameters)
    except RunError as exc:
        raise StackError(str(exc)) from None
    say(f"created {run.label()} of {name}; watching it (Ctrl+C stops watching, not the run)")
    argv = [interpreter(project), "-m", "prefect", "flow-run", "watch", run.id]
    if timeout:
        argv += ["--timeout", str(int(timeout))]
    env = stack_env(Paths(Path(report["state_dir"])), port, project)
    try:
        code = subprocess.run(argv, env=env, cwd=project, check=False).returncode
    except KeyboardInterrupt:
        return PipelineOutcome(130, run, f"stopped watching; pipeline {run.label()} goes on (cancel it in the UI)")
    try:
        problem = failure(port, run)
    except RunError as exc:
        problem = f"pipeline {run.label()}: its final state cannot be read ({exc}); the watch exited {code}"
    return PipelineOutcome(0 if problem is None else code or 1, run, problem)


def info_lines(info: StackInfo) -> list[str]:
    """What `dspo up` prints once the stack runs: where the UI and API are, and how to use and stop it."""
    return [
        f"Prefect UI:   {info.ui_url}",
        f"API:          {info.api_url}",
        f"database:     {info.database}",
        f"work pools:   {LOCAL_POOL} (process worker pid {info.worker_pid}); {GPU_POOL}: "
        + (", ".join(f"{name} pid {pid}" for name, pid in (info.workers or {}).items() if name != "worker")
           or "no worker here"),
        f"GPUs:         {info.gpu_note}",
        f"deployments:  {len(info.deployments)} ({', '.join(info.deployments)})",
        f"state:        {info.state_dir} (logs in {info.state_dir}/logs)",
        "run it:       dspo pipeline   (or: PREFECT_API_URL=" + info.api_url
        + f" prefect deployment run {PARENT_FLOW}/{PARENT_DEPLOYMENT} --watch)",
        "stop it:      dspo down",
    ]
