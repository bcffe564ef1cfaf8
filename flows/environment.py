"""What the stack's processes run with: the interpreter and the environment variables.

The server, worker and Prefect CLI get the caller's environment minus its own Prefect settings
(the stack has its own home, database and API), plus the stack's. A worker passes DSPO_* and
AWS_* on to its flow runs, so `dspo up` restarts it when those change (`passed_on_digest`).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from flows.prefect_api import api_url, ui_url
from flows.stack_state import Paths

# Variables of the caller's environment that must not leak into the stack (it has its own).
PREFECT_OWN = ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE", "PREFECT_HOME", "PREFECT_PROFILES_PATH",
               "PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL",
               "PREFECT_RESULTS_LOCAL_STORAGE_PATH", "PREFECT_LOCAL_STORAGE_PATH")
# What a worker hands to flow runs and `dspo up` watches for changes.
PASSED_ON = ("DSPO_", "AWS_")


def interpreter(project: Path) -> str:
    """The project venv's Python (flow runs use the worker's interpreter), else this one."""
    venv = project / ".venv" / "bin" / "python"
    return str(venv) if venv.is_file() else sys.executable


def stack_env(paths: Paths, port: int, project: Path) -> dict[str, str]:
    """The environment of the stack's processes: the caller's without PREFECT_OWN, plus the
    stack's Prefect home, database and API on `port`, and DSPO_PROJECT_DIR=`project`."""
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
