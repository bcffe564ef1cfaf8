"""What the flows share: the store a run uses, knobs read from the environment, artifact keys.

No Prefect import here, so `dspo up/down/status` and tests can use it cheaply.

Environment knobs (read when a flow runs, so a worker's or a test's environment applies):

    DSPO_STORE                 default store URI (else <project>/.dspo/store)
    DSPO_TASK_RUNNER           what maps a stage's shards: `threads` (default) or `dask` (read at
                               import, as the task runner is fixed when the flow object is built)
    DSPO_DASK_ADDRESS          with `dask`: the scheduler of an existing cluster (tcp://host:8786);
                               empty: a temporary local cluster per flow run
    DSPO_SHARD_WORKERS         threads (or local Dask worker processes) per stage run (default 2;
                               read at import)
    DSPO_SHARD_RETRIES         retries of a shard task on transient storage errors (default 3)
    DSPO_SHARD_RETRY_DELAY     first retry delay in seconds, doubled each retry (default 2)
    DSPO_POLL_SECONDS          how often the parent polls a stage's deployment run (default 1)
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from datetime import datetime, timezone

from pipeline.paths import store_uri

FLOW_PREFIX = "dspo-"
PARENT_FLOW = "dspo"
PARENT_DEPLOYMENT = "full-pipeline"
WORK_POOL = "dspo-local"


def env_number(name: str, default: float, cast=float, minimum: float = 0):
    """A number from the environment; a malformed or out-of-range value is an error naming the variable."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return cast(default)
    try:
        value = cast(raw)
    except ValueError:
        raise ValueError(f"${name}={raw!r} is not a number") from None
    if value < minimum:
        raise ValueError(f"${name}={raw!r} must be >= {minimum}")
    return value


TASK_RUNNERS = ("threads", "dask")


def task_runner_kind() -> str:
    kind = os.environ.get("DSPO_TASK_RUNNER", "").strip() or "threads"
    if kind not in TASK_RUNNERS:
        raise ValueError(f"$DSPO_TASK_RUNNER={kind!r}: expected one of {', '.join(TASK_RUNNERS)}")
    return kind


def dask_address() -> str | None:
    return os.environ.get("DSPO_DASK_ADDRESS", "").strip() or None


def shard_workers() -> int:
    return env_number("DSPO_SHARD_WORKERS", 2, int, 1)


def shard_retries() -> int:
    return env_number("DSPO_SHARD_RETRIES", 3, int, 0)


def shard_retry_delays() -> list[float]:
    """Exponential backoff: d, 2d, 4d, ... one delay per retry."""
    first = env_number("DSPO_SHARD_RETRY_DELAY", 2.0)
    return [first * 2 ** attempt for attempt in range(shard_retries())]


def poll_seconds() -> float:
    return env_number("DSPO_POLL_SECONDS", 1.0, float, 0.1)


def resolve_store(store: str | None) -> str:
    """The store a run uses: the parameter, else $DSPO_STORE, else the project's local store
    (found from the working directory, which a deployment's pull step sets to the project)."""
    return store_uri(store or os.environ.get("DSPO_STORE") or None)


def flow_name(stage: str) -> str:
    return f"{FLOW_PREFIX}{stage}"


def stage_deployment(stage: str) -> str:
    """`prefect deployment run` name of a stage's deployment: dspo-<stage>/<stage>, e.g.
    dspo-segment/segment (flow `dspo-segment`, deployment `segment`; until Dec 2026 every stage
    deployment was named `stage`)."""
    return f"{flow_name(stage)}/{stage}"


def run_name(label: str, profile: str) -> str:
    """"<label>-<profile>-<MMDD-HHMMSS UTC>", e.g. "segment-demo-1208-142501": the runs list says
    what ran, on which profile, when (Prefect's default is random words)."""
    return f"{label}-{profile}-{datetime.now(timezone.utc):%m%d-%H%M%S}"


def run_namer(label: str) -> Callable[[], str]:
    """A flow's `flow_run_name`: `run_name` of the run's profile, keeping a name of that form the
    run already has (`dspo pipeline` names the run when it creates it, and prints that name)."""

    def name() -> str:
        from prefect.runtime import flow_run

        profile = (flow_run.parameters or {}).get("profile") or "demo"
        if (flow_run.name or "").startswith(f"{label}-{profile}-"):
            return flow_run.name
        return run_name(label, profile)

    return name


def artifact_key(stage: str, kind: str) -> str:
    """A stable artifact key, e.g. dspo-degrade-result (keys: lowercase letters, digits, dashes)."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{flow_name(stage)}-{kind}".lower()).strip("-")
