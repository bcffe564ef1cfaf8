"""The stage DAG the parent flow runs: which stages each stage waits for, and the loop that starts
every stage as soon as all its producers have completed.

    upstream()                              # {"ingest": (), "degrade": ("ingest",), "sample": ("degrade",), ...}
    run = run_dag(upstream(), submit, next_done)
    run.results, run.failed, run.skipped    # by stage

Dependencies come from the stages' declared inputs (pipeline.stages.DECLARED): a stage waits
for the stages that publish its required inputs; optional inputs (human labels) are produced by
no stage and wait for nothing. No Prefect import: the parent flow plugs Prefect futures in.

When a stage fails, every stage that needs its output (directly or through another stage) is
skipped and named; stages that do not need it still run, and those already running finish, so
their outputs are published and a retry of the pipeline finds them as cache hits.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.stage import StageSpec
from pipeline.stages import DECLARED, PIPELINE_ORDER


def upstream(specs: tuple[StageSpec, ...] = DECLARED, order: tuple[str, ...] = PIPELINE_ORDER) -> dict[str, tuple[str, ...]]:
    """Per stage (in `order`), the stages publishing the datasets it requires, in `order`."""
    producer = {dataset: spec.name for spec in specs for dataset in spec.outputs}
    by_name = {spec.name: spec for spec in specs}
    position = {name: index for index, name in enumerate(order)}
    return {name: tuple(sorted({producer[dataset] for dataset in by_name[name].inputs}, key=position.__getitem__))
            for name in order}


@dataclass
class DagRun:
    """How a DAG run ended: each completed stage's result, each failed stage's error message, each
    skipped stage's failed (or skipped) producers, and the order stages were started and ended in."""

    results: dict[str, Any] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, tuple[str, ...]] = field(default_factory=dict)
    started: list[str] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)

    def failure(self) -> str | None:
        """None when every stage completed; else one line: each failure, then what was skipped."""
        if not (self.failed or self.skipped):
            return None
        lines = [self.failed[name] for name in self.ended if name in self.failed]
        if self.skipped:
            lines.append("not run, as they need a failed stage's output: " + ", ".join(
                f"{name} (needs {', '.join(needs)})" for name, needs in self.skipped.items()))
        return "; ".join(lines)


Handle = Hashable
#: submit(stage, results of its producers) -> a handle of the started stage
Submit = Callable[[str, Mapping[str, Any]], Handle]
#: next_done(running handles) -> (a handle that ended, its result, None) or (handle, None, error message)
NextDone = Callable[[list[Handle]], tuple[Handle, Any, str | None]]


def run_dag(needs: Mapping[str, tuple[str, ...]], submit: Submit, next_done: NextDone) -> DagRun:
    """Start each stage (in the order of `needs`) once all of its producers completed; wait for
    the next one to end; repeat until every stage completed, failed or was skipped."""
    run = DagRun()
    waiting = list(needs)
    running: dict[Handle, str] = {}
    while waiting or running:
        for name in list(waiting):
            blocked = tuple(need for need in needs[name] if need in run.failed or need in run.skipped)
            if blocked:
                waiting.remove(name)
                run.skipped[name] = blocked
            elif all(need in run.results for need in needs[name]):
                waiting.remove(name)
                running[submit(name, {need: run.results[need] for need in needs[name]})] = name
                run.started.append(name)
        if not running:
            if waiting:  # only with a `needs` naming a stage it does not list
                raise ValueError(f"stages {waiting} wait for stages that never run: {[needs[n] for n in waiting]}")
            break
        handle, result, error = next_done(list(running))
        name = running.pop(handle)
        run.ended.append(name)
        if error is None:
            run.results[name] = result
        else:
            run.failed[name] = error
    return run
