"""The parent flow `dspo`: every stage as soon as its inputs exist, each stage's output feeding the next.

    dspo(store="", profile="demo", overrides=(), force=False, mode="auto", allow_empty=False) -> {"hr_images": "hr_images@v1", ...}

The stages form a DAG (flows/dag.py, from the inputs each stage declares in pipeline.stages):

    ingest -> degrade -> sample  -> score -> rank -> caption -> train -> evaluate
                     `-> segment -`

A stage starts when every stage publishing its inputs has completed, so independent stages
(sample and segment) run at the same time. Each stage gets as inputs the refs its producers
published in this run (pinned); inputs no stage produces (`human_labels` for rank) are used at
@latest when present. A failed stage skips every stage that needs its output (the parent's
failure names them); stages already running finish and publish, so a retry finds them cached.

Two modes, the same DAG:
  deployments  each stage runs as its own flow run of `dspo-<stage>/<stage>` (run_deployment), so it
               can be retried alone from the UI and can go to another work pool. Chosen when the
               parent itself runs from a deployment (`prefect deployment run dspo/full-pipeline`)
               or with mode="deployments". run_deployment does not raise when the child fails: its
               final state is checked and a failed stage fails the parent, naming the child run.
  subflows     the stage flows run in this process as subflows (`dspo pipeline --in-process`, tests,
               bench), each from a task of the parent. `dspo run` stays Prefect-free.

Retrying the parent (same flow run, e.g. "Retry" in the UI):
  deployments  each stage is launched by a task (`stage-run`) whose cache key is its inputs + the
               parent flow run id (Prefect's DEFAULT policy: INPUTS + TASK_SOURCE + RUN_ID) with
               its result persisted: a retried parent gets completed stages from the cache and
               launches no child run for them; only the failed stage and those after it run again.
               (The cache lives in the parent's result storage, PREFECT_HOME/storage by default: a
               retry on another machine misses it, and then the stage fingerprint cache applies.)
  subflows     stages run again but are fingerprint cache hits (found in the store, no compute).

The worker must run the parent and two stage runs at once (`dspo up --limit`, default 4).
"""
import json
import logging
import time
from collections.abc import Mapping
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import DEFAULT, NO_CACHE
from prefect.deployments import run_deployment
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import deployment as current_deployment
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.urls import url_for

from flows.common import (
    PARENT_FLOW,
    artifact_key,
    flow_name,
    poll_seconds,
    resolve_store,
    run_namer,
    stage_deployment,
)
from flows.dag import DagRun, run_dag, upstream
from flows.pipeline_run import one_line
from flows.stage_flows import STAGE_FLOWS
from pipeline.config import load_config
from pipeline.stages import PIPELINE_ORDER, STAGE_SPECS, pinned_inputs

log = logging.getLogger("dspo.flows")


class StageRunFailed(RuntimeError):
    """A stage's run did not complete; the message names it (and, from the parent, the stages skipped)."""


def pipeline_stages() -> list[str]:
    """Every stage, in pipeline order."""
    return list(PIPELINE_ORDER)


def child_ref(child, stage: str) -> str:
    """The ref a completed stage run returned: its persisted result, else its result artifact
    (when the parent cannot read the child's result storage, e.g. a worker on another machine)."""
    try:
        value = child.state.result(raise_on_failure=True)
        if isinstance(value, str) and "@" in value:
            return value
        problem = f"its result is {type(value).__name__}, not a ref"
    except Exception as exc:  # result not persisted or not readable here: the artifact has it too
        problem = f"its result is not readable here ({type(exc).__name__}: {exc})"
    log.info("stage %s: %s; reading the ref from artifact %s of flow run %s", stage, problem,
             artifact_key(stage, "result"), child.id)
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[artifact_key(stage, "result")]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[child.id])))
    for artifact in artifacts:
        data = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
        if data and data[0].get("ref"):
            return data[0]["ref"]
    raise StageRunFailed(f"stage {stage}: flow run {child.name} ({child.id}) completed but its output ref "
                         "is neither in a readable result nor in its result artifact")


def stage_failure(stage: str, deployment: str, child) -> str:
    """One line for the parent's failed state (what the UI shows on the `dspo` run): the stage, its
    flow run (name, id, UI address when one is configured) and the reason that run ended with."""
    state = child.state
    reason = one_line(state.message if state else None)
    where = ", ".join(part for part in (str(child.id), url_for(child)) if part)
    return (f"stage {stage}: flow run {child.name} ({where}) of {deployment} ended "
            f"{state.type.value if state else 'without a state'}: {reason or 'no message'} "
            "-- fix the cause, retry that run alone from the UI, then retry this run")


@task(name="stage-run", task_run_name="{stage}", cache_policy=DEFAULT, persist_result=True)
def run_stage_deployment(stage: str, parameters: dict[str, Any]) -> str:
    """Run `dspo-<stage>/<stage>` as its own flow run, wait for it, return its output ref."""
    logger = get_run_logger()
    name = stage_deployment(stage)
    child = run_deployment(name, parameters=parameters, timeout=None, poll_interval=poll_seconds())
    state = child.state
    if state is None or not state.is_completed():
        raise StageRunFailed(stage_failure(stage, name, child))
    ref = child_ref(child, stage)
    logger.info("%s: %s (flow run %s)", stage, ref, child.name)
    return ref


@task(name="stage-subflow", task_run_name="{stage}", cache_policy=NO_CACHE, persist_result=False)
def run_stage_subflow(stage: str, parameters: dict[str, Any]) -> str:
    """Run the stage's flow in this process (a subflow of the parent); return its output ref."""
    return STAGE_FLOWS[stage](**parameters)


def future_outcome(future: PrefectFuture) -> tuple[Any, str | None]:
    """(the stage's ref, None) when its task completed, else (None, the reason it did not)."""
    future.wait()  # sets the future's final state (without it, .state asks the API and may lag)
    state = future.state
    if state.is_completed():
        return future.result(), None
    error = state.result(raise_on_failure=False)
    return None, one_line(str(error) if isinstance(error, BaseException) else state.message) or f"ended {state.name}"


def run_stages(launch, parameters_of, logger) -> tuple[DagRun, dict[str, dict]]:
    """Every stage through the DAG, each started by `launch.submit` once its producers completed;
    also, per stage, when it started and ended (seconds since the first stage started)."""
    origin = time.monotonic()
    times: dict[str, dict] = {}
    futures: dict[PrefectFuture, str] = {}

    def submit(name: str, produced: Mapping[str, str]) -> PrefectFuture:
        inputs = {STAGE_SPECS[producer].output: ref for producer, ref in produced.items()}
        future = launch.submit(name, parameters_of(name, inputs))
        futures[future] = name
        times[name] = {"started s": round(time.monotonic() - origin, 1)}
        logger.info("%s: started (its inputs: %s)", name, ", ".join(inputs.values()) or "none")
        return future

    def next_done(running: list[PrefectFuture]) -> tuple[PrefectFuture, Any, str | None]:
        future = next(as_completed(running))
        ref, error = future_outcome(future)
        name = futures[future]
        times[name]["ended s"] = round(time.monotonic() - origin, 1)
        if error is not None and not error.startswith(f"stage {name}"):
            error = f"stage {error}" if error.startswith(f"{name}: ") else f"stage {name}: {error}"
        return future, ref, error

    return run_dag(upstream(), submit, next_done), times


@flow(name=PARENT_FLOW, persist_result=True, flow_run_name=run_namer("pipeline"),
      task_runner=ThreadPoolTaskRunner(max_workers=len(STAGE_SPECS)),
      description="The whole DSPO pipeline: each stage as soon as its inputs exist, each output feeding the next.")
def dspo(store: str = "", profile: str = "demo", overrides: tuple[str, ...] = (),
         force: bool = False, mode: Literal["auto", "deployments", "subflows"] = "auto",
         allow_empty: bool = False) -> dict[str, str]:
    """Run every stage, each as soon as the stages it reads from have completed.

    Args:
        store: Dataset store URI (s3://bucket/prefix, file:///path). Empty: $DSPO_STORE, else
            .dspo/store in the project folder.
        profile: Profile in configs/ (demo, test, full) or a YAML path.
        overrides: Config overrides for every stage, one KEY=VALUE per line as with `dspo --set`,
            e.g. degrade.seed=3.
        force: Recompute every stage even if a version with its fingerprint exists.
        allow_empty: Let stages publish outputs with no rows (refused by default).
        mode: deployments (each stage its own flow run), subflows (in this process), or auto
            (deployments when this run comes from a deployment).
    """
    logger = get_run_logger()
    load_config(profile, list(overrides))  # a bad profile or override fails here, before any stage runs
    uri = resolve_store(store or None)  # resolved once, so every stage (wherever it runs) uses the same store
    use_deployments = mode == "deployments" or (mode == "auto" and current_deployment.id is not None)
    needs = upstream()
    logger.info("dspo: store %s, profile %s, %s; stages: %s", uri, profile,
                "each stage as a deployment run" if use_deployments else "stages as subflows in this process",
                ", ".join(f"{name} (after {', '.join(after)})" if after else name for name, after in needs.items()))

    def parameters_of(name: str, inputs: dict[str, str]) -> dict[str, Any]:
        return {"store": uri, **pinned_inputs(name, inputs), "profile": profile, "overrides": list(overrides),
                "force": force, "allow_empty": allow_empty}

    run, times = run_stages(run_stage_deployment if use_deployments else run_stage_subflow, parameters_of, logger)
    outputs = {STAGE_SPECS[name].output: run.results[name] for name in pipeline_stages() if name in run.results}
    rows = [{"stage": name, "flow": flow_name(name), "after": ", ".join(needs[name]),
             "ref": run.results.get(name) or ("failed" if name in run.failed else "skipped"),
             **times.get(name, {})} for name in pipeline_stages()]
    create_table_artifact(rows, key=artifact_key("pipeline", "summary"),
                          description=f"dspo ({profile}) on {uri}: {outputs.get(STAGE_SPECS[pipeline_stages()[-1]].output)}")
    problem = run.failure()
    if problem:
        raise StageRunFailed(problem)
    return outputs
