"""Supervision of the stack's background processes (server, worker).

Each runs in its own session, so a Ctrl-C in the shell does not reach it and `stop` can signal its
whole process group (the worker's flow-run processes included). Its pid file records pid and start
time, so `stop` signals exactly the process that `spawn` started, never a recycled pid: SIGTERM,
then SIGKILL after a timeout.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

from flows.stack_state import Paths

Say = Callable[[str], None]

# Popen objects of the processes spawned by this process: polled so that one that dies while we
# wait does not linger as a zombie (a zombie would still look alive in its process group).
_children: dict[int, subprocess.Popen] = {}


def _process(pid: int):
    """The live psutil.Process of `pid`, or None when it is gone or a zombie."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process
    except psutil.Error:
        return None


def _reap() -> None:
    for pid, process in list(_children.items()):
        if process.poll() is not None:
            _children.pop(pid, None)


def read_pidfile(path: Path) -> dict | None:
    """The record `spawn` wrote (pid, pgid, create_time, argv, log), or None when absent or unreadable."""
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
    """Pids of the live (non-zombie) processes of a process group."""
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
    """Start a background process in its own session, logging to logs/<name>.log; write its pid file.
    Returns the pid file's record."""
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
    _children[process.pid] = process
    return record


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


def wait_for(check: Callable[[], bool], timeout: float, interval: float = 0.3) -> bool:
    """Poll `check` until it is true or `timeout` passes (reaping spawned processes that died);
    returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        _reap()
        time.sleep(interval)
    return check()


def tail(path: Path, lines: int = 20) -> str:
    """The last `lines` lines of a log file, or "(no log)"."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
