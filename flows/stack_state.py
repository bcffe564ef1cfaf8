"""The stack's state folder: where it is, what lies in it, and who may change it.

    <state>/prefect/          PREFECT_HOME of the server and workers
    <state>/prefect.db        the server's SQLite database (unless it runs on PostgreSQL)
    <state>/logs/<name>.log   output of server, workers (worker, gpu-worker-<i>) and `prefect deploy`
    <state>/<name>.pid        pid file of a process `dspo up` started (flows/supervisor.py)
    <state>/stack.json        what `dspo up` last set up: port, URLs, the database as shown
                              (no credentials), deploy digest, each worker's record
    <state>/lock              held while `dspo up` / `dspo down` change the stack

The folder is --state-dir, else $DSPO_STATE_DIR, else <project>/.dspo/stack.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pipeline.paths import project_dir


@dataclass
class Paths:
    """The files of one state folder, `root`."""

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


@contextlib.contextmanager
def locked(paths: Paths) -> Iterator[None]:
    """Hold the state folder's lock (creating the folder), so concurrent `dspo up` / `dspo down` take turns."""
    paths.root.mkdir(parents=True, exist_ok=True)
    with open(paths.lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_state(paths: Paths) -> dict:
    """The saved stack.json, or {} when there is none or it cannot be read."""
    try:
        return json.loads(paths.state.read_text())
    except (OSError, ValueError):
        return {}


def save_state(paths: Paths, state: dict) -> None:
    # Temp file + os.replace: a concurrent `dspo status` never reads a half-written file.
    temporary = paths.state.with_suffix(".tmp")
    temporary.write_text(json.dumps(state, indent=2))
    os.replace(temporary, paths.state)
