"""What the stack's processes run with: the interpreter and the environment variables.

The server, workers and Prefect CLI get the caller's environment minus its own Prefect settings
(the stack has its own home, database and API), plus the stack's. Only the server gets the
database URL (`server_env`: it may hold a password); $DSPO_DATABASE_URL reaches no other process.
A worker passes DSPO_* and AWS_* on to its flow runs, so `dspo up` restarts it when those change
(`passed_on_digest`); each worker's CUDA_VISIBLE_DEVICES comes from flows/gpu_pools.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from flows.database import Database
from flows.prefect_api import api_url, ui_url
from flows.stack_state import Paths

# Variables of the caller's environment that must not leak into the stack (it has its own).
PREFECT_OWN = ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE", "PREFECT_HOME", "PREFECT_PROFILES_PATH",
               "PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL",
               "PREFECT_RESULTS_LOCAL_STORAGE_PATH", "PREFECT_LOCAL_STORAGE_PATH")
# What a worker hands to flow runs and `dspo up` watches for changes.
PASSED_ON = ("DSPO_", "AWS_")
# The server's database URL (flows/database.py): given to the server alone.
DATABASE_URL_VARIABLE = "DSPO_DATABASE_URL"


def interpreter(project: Path) -> str:
    """The project venv's Python (flow runs use the worker's interpreter), else this one."""
    venv = project / ".venv" / "bin" / "python"
    return str(venv) if venv.is_file() else sys.executable


def stack_env(paths: Paths, port: int, project: Path) -> dict[str, str]:
    """The environment of the stack's processes: the caller's without PREFECT_OWN and the
    database URL, plus the stack's Prefect home and API on `port`, and DSPO_PROJECT_DIR=`project`."""
    env = {key: value for key, value in os.environ.items()
           if key not in PREFECT_OWN and key != DATABASE_URL_VARIABLE}
    env.update({
        "PREFECT_HOME": str(paths.home),
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


# PostgreSQL waits the server allows unless the caller sets them: Prefect's 5 s connection
# timeout ran out on a busy 2-core machine while the server started (asyncpg TimeoutError).
POSTGRES_TIMEOUTS = {"PREFECT_SERVER_DATABASE_CONNECTION_TIMEOUT": "30", "PREFECT_SERVER_DATABASE_TIMEOUT": "60"}


def server_env(paths: Paths, port: int, project: Path, database: Database) -> dict[str, str]:
    """`stack_env` plus the server's database (`database.connection_url`, secret) and, for
    PostgreSQL, POSTGRES_TIMEOUTS where the caller's environment does not set them."""
    env = {**stack_env(paths, port, project), "PREFECT_API_DATABASE_CONNECTION_URL": database.connection_url}
    if database.kind == "postgresql":
        for key, value in POSTGRES_TIMEOUTS.items():
            env.setdefault(key, value)
    return env


def passed_on_digest() -> str:
    """Hash of the variables a worker passes to flow runs (stores, credentials): restart it when they change."""
    items = sorted((key, value) for key, value in os.environ.items()
                   if key.startswith(PASSED_ON) and key != DATABASE_URL_VARIABLE)
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()
