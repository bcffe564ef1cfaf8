"""The embedded Prefect stack behind `dspo up`, `dspo down`, `dspo status` and `dspo pipeline`.

`dspo up` starts, in the state folder (default <project>/.dspo/stack, or --state-dir, or
$DSPO_STATE_DIR):

    prefect server start --host 127.0.0.1 --port PORT --analytics-off
        PREFECT_HOME=<state>/prefect, SQLite at <state>/prefect.db, log logs/server.log
    the process work pool `dspo-local` (created if missing)
    prefect --no-prompt deploy --all      (prefect.yaml; DSPO_PROJECT_DIR=<project>, log logs/deploy.log)
    prefect worker start --pool dspo-local --limit 4     (project venv interpreter, log logs/worker.log)

Server and worker run in their own sessions (so a Ctrl-C in the shell does not reach them and
`dspo down` can signal their whole process group: the worker's flow-run processes included),
with pid files recording pid and start time, so `dspo down` signals exactly the processes it
started (SIGTERM, then SIGKILL after --timeout) and never a recycled pid.

`dspo up` is idempotent: a healthy server and live worker are reused. It redeploys only when
prefect.yaml or flows/*.py changed since the last deploy, and restarts the worker when the
environment it would pass on (DSPO_*, AWS_* variables) changed. A lock file serialises
concurrent `dspo up` / `dspo down`.

No Prefect import: this talks to the server over HTTP and runs Prefect's CLI.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

from flows.common import PARENT_DEPLOYMENT, PARENT_FLOW, WORK_POOL
from pipeline.cli.common import project_dir

HOST = "127.0.0.1"
DEFAULT_PORT = 4200
WORKER_LIMIT = 4
PROCESSES = ("worker", "server")   # stop order
# Variables of the caller's environment that must not leak into the stack (it has its own).
PREFECT_OWN = ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE", "PREFECT_HOME", "PREFECT_PROFILES_PATH",
               "PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL",
               "PREFECT_RESULTS_LOCAL_STORAGE_PATH", "PREFECT_LOCAL_STORAGE_PATH")
# What a worker hands to flow runs and `dspo up` watches for changes.
PASSED_ON = ("DSPO_", "AWS_")


class StackError(RuntimeError):
    """The stack cannot be started, reached or stopped; the message says why and where to look."""


Say = Callable[[str], None]


@dataclass
class Paths:
    root: Path

    @property
    def home(self) -> Path:
        return self.root / "prefect"

    @property
    def database(self) -> Path:
        return self.root / "prefect.db"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def state(self) -> Path:
        return self.root / "stack.json"

    @property
    def lock(self) -> Path:
        return self.root / "lock"

    def pidfile(self, name: str) -> Path:
        return self.root / f"{name}.pid"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"


def state_dir(option: str | None = None) -> Path:
    """--state-dir, else $DSPO_STATE_DIR, else <project>/.dspo/stack."""
    chosen = option or os.environ.get("DSPO_STATE_DIR")
    return Path(chosen).expanduser().resolve() if chosen else project_dir() / ".dspo" / "stack"


def interpreter(project: Path) -> str:
    """The project venv's Python (flow runs use the worker's interpreter), else this one."""
    venv = project / ".venv" / "bin" / "python"
    return str(venv) if venv.is_file() else sys.executable


def api_url(port: int) -> str:
    return f"http://{HOST}:{port}/api"


def ui_url(port: int) -> str:
    return f"http://{HOST}:{port}"


# ----------------------------------------------------------------------------- processes
def _process(pid: int):
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process
    except psutil.Error:
        return None


def read_pidfile(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
        return record if isinstance(record.get("pid"), int) else None
    except (OSError, ValueError, AttributeError):
        return None


def is_ours(record: dict | None) -> bool:
    """The recorded process is alive and is the one we started (same start time: not a recycled pid)."""
    if not record:
        return False
    process = _process(record["pid"])
    if process is None:
        return False
    try:
        return abs(process.create_time() - record["create_time"]) < 0.05
    except Exception:
        return False


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    import psutil

    members = []
    for process in psutil.process_iter(["pid", "status"]):
        try:
            if process.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(process.pid) == pgid:
                members.append(process.pid)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return members


def spawn(name: str, argv: list[str], env: dict, paths: Paths, cwd: Path) -> dict:
    """Start a background process in its own session, logging to logs/<name>.log; write its pid file."""
    import psutil

    paths.logs.mkdir(parents=True, exist_ok=True)
    with open(paths.log(name), "ab") as log:
        log.write(f"\n---- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
        log.flush()
        process = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    record = {"pid": process.pid, "pgid": process.pid, "create_time": psutil.Process(process.pid).create_time(),
              "argv": argv, "log": str(paths.log(name))}
    paths.pidfile(name).write_text(json.dumps(record))
    # Popen's object is dropped: the process outlives this command. Reap it if it dies while we wait.
    _children[process.pid] = process
    return record


_children: dict[int, subprocess.Popen] = {}


def _reap() -> None:
    for pid, process in list(_children.items()):
        if process.poll() is not None:
            _children.pop(pid, None)


def stop(name: str, paths: Paths, timeout: float, say: Say) -> bool:
    """SIGTERM the process group we started as `name`, SIGKILL what is left after `timeout`.
    Returns whether something was stopped. A stale pid file (process gone or pid reused) is removed."""
    record = read_pidfile(paths.pidfile(name))
    if record is None:
        return False
    stopped = False
    if is_ours(record):
        pgid = record.get("pgid", record["pid"])
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while group_members(pgid) and time.monotonic() < deadline:
            _reap()
            time.sleep(0.2)
        left = group_members(pgid)
        if left:
            say(f"{name}: {len(left)} process(es) still running after {timeout:.0f}s; sending SIGKILL")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while group_members(pgid) and time.monotonic() < deadline:
                _reap()
                time.sleep(0.1)
        _reap()
        say(f"stopped {name} (pid {record['pid']})")
        stopped = True
    paths.pidfile(name).unlink(missing_ok=True)
    return stopped


# ----------------------------------------------------------------------------- HTTP
def http(method: str, url: str, body: dict | None = None, timeout: float = 5.0) -> tuple[int, object]:
    """(status, decoded JSON or text); status 0 when the server cannot be reached."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as exc:
        payload, status = exc.read().decode(errors="replace"), exc.code
    except (urllib.error.URLError, OSError):
        return 0, None
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, payload


def healthy(port: int) -> bool:
    status, _ = http("GET", f"{api_url(port)}/health", timeout=2)
    return status == 200


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ----------------------------------------------------------------------------- environment
def stack_env(paths: Paths, port: int, project: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in PREFECT_OWN}
    env.update({
        "PREFECT_HOME": str(paths.home),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{paths.database}",
        "PREFECT_API_URL": api_url(port),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_URL": ui_url(port),
        # Flow runs log the pipeline's own loggers (stage progress, fallbacks, storage retries).
        "PREFECT_LOGGING_EXTRA_LOGGERS": "dspo,storage",
        "PREFECT_WORKER_QUERY_SECONDS": env.get("PREFECT_WORKER_QUERY_SECONDS", "1"),
        "DSPO_PROJECT_DIR": str(project),
        "PYTHONUNBUFFERED": "1",
    })
    return env


def passed_on_digest() -> str:
    """Hash of the variables a worker passes to flow runs (stores, credentials): restart it when they change."""
    items = sorted((key, value) for key, value in os.environ.items() if key.startswith(PASSED_ON))
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


def deploy_digest(project: Path) -> str:
    """Hash of what `prefect deploy` reads: prefect.yaml and the flow modules."""
    digest = hashlib.sha256()
    for path in [project / "prefect.yaml", *sorted((project / "flows").glob("*.py"))]:
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@contextlib.contextmanager
def locked(paths: Paths) -> Iterator[None]:
    paths.root.mkdir(parents=True, exist_ok=True)
    with open(paths.lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_state(paths: Paths) -> dict:
    try:
        return json.loads(paths.state.read_text())
    except (OSError, ValueError):
        return {}


def save_state(paths: Paths, state: dict) -> None:
    temporary = paths.state.with_suffix(".tmp")
    temporary.write_text(json.dumps(state, indent=2))
    os.replace(temporary, paths.state)


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


# ----------------------------------------------------------------------------- up / down / status
@dataclass
class StackInfo:
    state_dir: str
    port: int
    api_url: str
    ui_url: str
    server_pid: int | None
    worker_pid: int | None
    deployments: list[str]
    reused: bool


def expected_deployments(project: Path) -> list[str]:
    """`flow/deployment` names of the deployments in the project's prefect.yaml.

    Read from the file rather than from `pipeline.stages`, whose import (torch, diffusers, peft)
    would add ~10 s to every `dspo up`; tests/test_flows.py checks that prefect.yaml has the
    pipeline and one `stage` deployment per stage. A flow's name is its entrypoint function's
    with dashes (`flows/stage_flows.py:dspo_degrade` -> `dspo-degrade`), as flows/ names them.
    """
    import yaml

    config = yaml.safe_load((project / "prefect.yaml").read_text()) or {}
    return sorted(f"{item['entrypoint'].rpartition(':')[2].replace('_', '-')}/{item['name']}"
                  for item in config.get("deployments") or [])


def deployed_names(port: int) -> list[str]:
    status, deployments = http("POST", f"{api_url(port)}/deployments/filter", {"limit": 200})
    status_flows, flows = http("POST", f"{api_url(port)}/flows/filter", {"limit": 200})
    if status != 200 or status_flows != 200:
        return []
    names = {flow["id"]: flow["name"] for flow in flows}
    return sorted(f"{names.get(item['flow_id'], '?')}/{item['name']}" for item in deployments)


def wait_for(check: Callable[[], bool], timeout: float, interval: float = 0.3) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        _reap()
        time.sleep(interval)
    return check()


def up(state: str | None = None, port: int | None = None, limit: int = WORKER_LIMIT, timeout: float = 120,
       redeploy: bool = False, say: Say = print) -> StackInfo:
    """Start (or reuse) server, work pool, deployments and worker; see the module docstring."""
    paths = Paths(state_dir(state))
    project = project_dir(Path(__file__).resolve().parent)
    if not (project / "prefect.yaml").is_file():
        raise StackError(f"no prefect.yaml in {project}: `dspo up` deploys from the project's source folder "
                         "(an editable install, `pip install -e .`)")
    with locked(paths):
        saved = load_state(paths)
        server = read_pidfile(paths.pidfile("server"))
        reused = False
        chosen = saved.get("port") if port is None else port
        if is_ours(server) and saved.get("port") and (port in (None, 0, saved["port"])) and healthy(saved["port"]):
            chosen, reused = saved["port"], True
            say(f"server: reusing pid {server['pid']} on port {chosen}")
        else:
            if is_ours(server):
                say("server: running but not healthy or on another port; restarting it")
                stop("worker", paths, 10, say)
                stop("server", paths, 10, say)
            chosen = chosen or DEFAULT_PORT
            if port == 0:
                chosen = free_port()
            if not port_free(chosen):
                raise StackError(f"port {chosen} on {HOST} is taken by another program; pass --port N (0: any free port)")
            paths.home.mkdir(parents=True, exist_ok=True)
            env = stack_env(paths, chosen, project)
            server = spawn("server", [interpreter(project), "-m", "prefect", "server", "start", "--host", HOST,
                                      "--port", str(chosen), "--analytics-off"], env, paths, project)
            say(f"server: started pid {server['pid']} on port {chosen}; waiting for {api_url(chosen)}/health")
            if not wait_for(lambda: healthy(chosen) or not is_ours(server), timeout) or not healthy(chosen):
                alive = is_ours(server)
                stop("server", paths, 10, say)
                raise StackError(f"the Prefect server {'did not become healthy within %.0fs' % timeout if alive else 'exited'}"
                                 f"; last lines of {paths.log('server')}:\n{tail(paths.log('server'))}")
            saved = {}
        env = stack_env(paths, chosen, project)
        saved.update({"port": chosen, "api_url": api_url(chosen), "ui_url": ui_url(chosen), "project": str(project)})
        save_state(paths, saved)

        status, _ = http("GET", f"{api_url(chosen)}/work_pools/{WORK_POOL}")
        if status == 404:
            result = prefect_cli(["--no-prompt", "work-pool", "create", WORK_POOL, "--type", "process"], env, paths,
                                 project, "deploy", timeout=120)
            if result.returncode != 0:
                raise StackError(f"could not create work pool {WORK_POOL}; see {paths.log('deploy')}:\n"
                                 f"{tail(paths.log('deploy'))}")
            say(f"work pool: created {WORK_POOL} (process)")
        elif status != 200:
            raise StackError(f"cannot read work pool {WORK_POOL} from {api_url(chosen)} (HTTP {status})")

        digest = deploy_digest(project)
        missing = sorted(set(expected_deployments(project)) - set(deployed_names(chosen)))
        if redeploy or missing or saved.get("deployed") != digest:
            say(f"deploying prefect.yaml ({'missing: ' + ', '.join(missing) if missing else 'changed'})")
            # Without DSPO_PROJECT_DIR: `prefect deploy` substitutes a {{ $VAR }} it can resolve, which
            # would bake this machine's path into the pull step; unset, it stays for the worker to resolve.
            deploy_env = {key: value for key, value in env.items() if key != "DSPO_PROJECT_DIR"}
            result = prefect_cli(["--no-prompt", "deploy", "--all"], deploy_env, paths, project, "deploy", timeout=600)
            if result.returncode != 0:
                raise StackError(f"`prefect --no-prompt deploy --all` failed; last lines of {paths.log('deploy')}:\n"
                                 f"{tail(paths.log('deploy'), 30)}")
            missing = sorted(set(expected_deployments(project)) - set(deployed_names(chosen)))
            if missing:
                raise StackError(f"`prefect deploy --all` did not create {', '.join(missing)}; see "
                                 f"{paths.log('deploy')}:\n{tail(paths.log('deploy'), 30)}")
            saved["deployed"] = digest
            save_state(paths, saved)

        worker = read_pidfile(paths.pidfile("worker"))
        if is_ours(worker) and saved.get("worker_env") == passed_on_digest() and saved.get("worker_limit") == limit:
            say(f"worker: reusing pid {worker['pid']}")
        else:
            if is_ours(worker):
                say("worker: environment or limit changed; restarting it")
                stop("worker", paths, 15, say)
            worker = spawn("worker", [interpreter(project), "-m", "prefect", "worker", "start", "--pool", WORK_POOL,
                                      "--limit", str(limit), "--type", "process"], env, paths, project)
            saved.update({"worker_env": passed_on_digest(), "worker_limit": limit})
            save_state(paths, saved)
            say(f"worker: started pid {worker['pid']} (pool {WORK_POOL}, limit {limit})")
            ready = wait_for(lambda: _pool_ready(chosen) or not is_ours(worker), 60, 0.5)
            if not is_ours(worker) or not ready:
                alive = is_ours(worker)
                stop("worker", paths, 10, say)
                raise StackError(f"the worker {'did not come online within 60s' if alive else 'exited'}; last lines of "
                                 f"{paths.log('worker')}:\n{tail(paths.log('worker'))}")
        return StackInfo(state_dir=str(paths.root), port=chosen, api_url=api_url(chosen), ui_url=ui_url(chosen),
                         server_pid=server["pid"], worker_pid=worker["pid"], deployments=deployed_names(chosen),
                         reused=reused)


def _pool_ready(port: int) -> bool:
    status, pool = http("GET", f"{api_url(port)}/work_pools/{WORK_POOL}")
    return status == 200 and isinstance(pool, dict) and pool.get("status") == "READY"


def down(state: str | None = None, timeout: float = 15, say: Say = print) -> list[str]:
    """Stop the worker, then the server, that `dspo up` started from this state folder."""
    paths = Paths(state_dir(state))
    if not paths.root.exists():
        return []
    with locked(paths):
        return [name for name in PROCESSES if stop(name, paths, timeout, say)]


def status(state: str | None = None) -> dict:
    """What runs from this state folder: processes, API health, UI URL, deployments."""
    paths = Paths(state_dir(state))
    saved = load_state(paths)
    report = {"state_dir": str(paths.root), "port": saved.get("port"), "ui_url": saved.get("ui_url"),
              "api_url": saved.get("api_url"), "processes": {}, "healthy": False, "deployments": [],
              "work_pool": None}
    for name in PROCESSES:
        record = read_pidfile(paths.pidfile(name))
        report["processes"][name] = {"pid": record["pid"] if record else None, "running": is_ours(record),
                                     "log": str(paths.log(name))}
    if saved.get("port") and report["processes"]["server"]["running"]:
        report["healthy"] = healthy(saved["port"])
        if report["healthy"]:
            report["deployments"] = deployed_names(saved["port"])
            status_code, pool = http("GET", f"{api_url(saved['port'])}/work_pools/{WORK_POOL}")
            report["work_pool"] = pool.get("status") if status_code == 200 and isinstance(pool, dict) else None
    return report


def require_running(state: str | None = None) -> dict:
    report = status(state)
    if not report["healthy"]:
        raise StackError(f"no healthy stack in {report['state_dir']}: run `dspo up` first")
    if not report["processes"]["worker"]["running"]:
        raise StackError(f"the worker of the stack in {report['state_dir']} is not running: run `dspo up` again")
    return report


def run_pipeline(parameters: dict, state: str | None = None, deployment: str | None = None,
                 timeout: float | None = None) -> int:
    """`prefect deployment run dspo/full-pipeline --watch` against the stack; returns its exit status.
    Output goes to this process's stdout/stderr."""
    report = require_running(state)
    paths = Paths(Path(report["state_dir"]))
    project = project_dir(Path(__file__).resolve().parent)
    env = stack_env(paths, report["port"], project)
    argv = [interpreter(project), "-m", "prefect", "deployment", "run",
            deployment or f"{PARENT_FLOW}/{PARENT_DEPLOYMENT}", "--params", json.dumps(parameters), "--watch"]
    if timeout:
        argv += ["--watch-timeout", str(int(timeout))]
    return subprocess.run(argv, env=env, cwd=project, check=False).returncode


def info_lines(info: StackInfo) -> list[str]:
    return [
        f"Prefect UI:   {info.ui_url}",
        f"API:          {info.api_url}",
        f"work pool:    {WORK_POOL} (process worker pid {info.worker_pid})",
        f"deployments:  {len(info.deployments)} ({', '.join(info.deployments)})",
        f"state:        {info.state_dir} (logs in {info.state_dir}/logs)",
        "run it:       dspo pipeline   (or: PREFECT_API_URL=" + info.api_url
        + f" prefect deployment run {PARENT_FLOW}/{PARENT_DEPLOYMENT} --watch)",
        "stop it:      dspo down",
    ]


__all__ = ["StackError", "StackInfo", "up", "down", "status", "run_pipeline", "info_lines", "asdict"]
