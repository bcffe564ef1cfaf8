"""Where a stage flow run's seconds go: the `s: ...` columns of its result artifact.

    clock = StageClock(fresh_process=True)      # a deployment run: its process was started for it
    with clock.phase("job set-up"): ...
    clock.columns()   # {"s: process start": 3.9, "s: flow imports": 1.8, ..., "s: fixed": 6.1}

The phases, in order (seconds; a cache hit has no shards or publish):
  process start   the process's start -> the flow modules begin to import: interpreter, Prefect
                  import, reading the flow run, the pull step (deployment runs only)
  flow imports    importing flows/stage_flows.py: the pipeline framework, storage, pyarrow
  engine start    the flow modules loaded -> the flow body starts: Prefect's flow run set-up
  stage import    the stage's module and the model libraries it imports (torch, ...)
  job set-up      config, store open, input refs, fingerprint, cache lookup, write probe, plan
  shards          the shard tasks, first submitted -> last done (model builds happen in them)
  model builds    of it, building the stage's models (pipeline.stage.MODEL_BUILD_SECONDS)
  publish         the one commit of the output datasets
  artifacts       the result, preview and progress artifacts and the reads they need
  fixed           everything but the shards and the stage import: what a stage run costs
                  beyond its models and its work

No Prefect import; flows/stage_flows.py imports it before its other project modules (Prefect is
already imported by then, by the engine), so MODULES_STARTED is when the flow modules began to import.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

MODULES_STARTED = time.time()
PHASES = ("process start", "flow imports", "engine start", "stage import", "job set-up", "shards",
          "model builds", "publish", "artifacts", "fixed")
#: Not part of "fixed": the work itself, and what loading the models costs.
NOT_FIXED = ("shards", "stage import", "model builds")

_modules_loaded: float | None = None
_start_up_claimed = False
_lock = threading.Lock()


def modules_loaded() -> None:
    """Called once the flow modules are imported (the end of flows/stage_flows.py)."""
    global _modules_loaded
    _modules_loaded = time.time()


def process_started() -> float:
    """This process's start (epoch seconds)."""
    import psutil

    return psutil.Process().create_time()


class StageClock:
    """The phases of one stage flow run. `fresh_process`: the run owns the process (a deployment
    run); the first such run in a process also reports the process start-up phases."""

    def __init__(self, fresh_process: bool) -> None:
        global _start_up_claimed
        self.laps: dict[str, float] = {}
        body_started = time.time()
        with _lock:
            first, _start_up_claimed = fresh_process and not _start_up_claimed, _start_up_claimed or fresh_process
        if first and _modules_loaded is not None:
            self.laps["process start"] = max(0.0, MODULES_STARTED - process_started())
            self.laps["flow imports"] = _modules_loaded - MODULES_STARTED
            self.laps["engine start"] = body_started - _modules_loaded

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.laps[name] = self.laps.get(name, 0.0) + time.perf_counter() - started

    def columns(self) -> dict[str, float]:
        """Every phase's seconds (0 for phases this run did not have), "fixed" last."""
        laps = dict(self.laps)
        laps["fixed"] = sum(seconds for name, seconds in laps.items() if name not in NOT_FIXED)
        return {f"s: {name}": round(laps.get(name, 0.0), 2) for name in PHASES}
