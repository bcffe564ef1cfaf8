"""The parent flow `dspo`: every stage in pipeline order, each stage's output feeding the next.

    dspo(store="", profile="demo", overrides=(), force=False, mode="auto", allow_empty=False) -> {"hr_images": "hr_images@v1", ...}

Each stage gets as inputs the refs of all earlier outputs it accepts (by dataset name); inputs
no earlier stage produced (e.g. `human_labels` for rank) are used at @latest when present.

Two modes:
  deployments  each stage runs as its own flow run of `dspo-<stage>/stage` (run_deployment), so it
               can be retried alone from the UI and can go to another work pool. Chosen when the
               parent itself runs from a deployment (`prefect deployment run dspo/full-pipeline`)
               or with mode="deployments". run_deployment does not raise when the child fails: its
               final state is checked and a failed stage fails the parent, naming the child run.
  subflows     the stage flows run in this process as subflows (`dspo pipeline --in-process`, tests,
               bench). `dspo run` stays Prefect-free.

Retrying the parent (same flow run, e.g. "Retry" in the UI):
  deployments  each stage is launched by a task (`stage-run`) whose cache key is its inputs + the
               parent flow run id (Prefect's DEFAULT policy: INPUTS + TASK_SOURCE + RUN_ID) with
               its result persisted: a retried parent gets completed stages from the cache and
               launches no child run for them; only the failed stage and those after it run again.
               (The cache lives in the parent's result storage, PREFECT_HOME/storage by default: a
               retry on another machine misses it, and then the stage fingerprint cache applies.)
  subflows     stages run again but are fingerprint cache hits (found in the store, no compute).
"""
import json
import logging
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import DEFAULT
from prefect.deployments import run_deployment
from prefect.runtime import deployment as current_deployment
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
from flows.pipeline_run import one_line
from flows.stage_flows import STAGE_FLOWS
from pipeline.config import load_config
from pipeline.stages import PIPELINE_ORDER, STAGE_SPECS, pinned_inputs

log = logging.getLogger("dspo.flows")


class StageRunFailed(RuntimeError):
    """A stage's deployment run ended in a state other than Completed."""


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
    """Run `dspo-<stage>/stage` as its own flow run, wait for it, return its output ref."""
    logger = get_run_logger()
    name = stage_deployment(stage)
    child = run_deployment(name, parameters=parameters, timeout=None, poll_interval=poll_seconds())
    state = child.state
    if state is None or not state.is_completed():
        raise StageRunFailed(stage_failure(stage, name, child))
    ref = child_ref(child, stage)
    logger.info("%s: %s (flow run %s)", stage, ref, child.name)
    return ref


@flow(name=PARENT_FLOW, persist_result=True, flow_run_name=run_namer("pipeline"),
      description="The whole DSPO pipeline: every stage in order, each output feeding the next.")
def dspo(store: str = "", profile: str = "demo", overrides: tuple[str, ...] = (),
         force: bool = False, mode: Literal["auto", "deployments", "subflows"] = "auto",
         allow_empty: bool = False) -> dict[str, str]:
    """Run every stage in pipeline order.

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
    logger.info("dspo: store %s, profile %s, stages %s, %s", uri, profile, ", ".join(pipeline_stages()),
                "each stage as a deployment run" if use_deployments else "stages as subflows in this process")
    outputs: dict[str, str] = {}
    rows = []
    for name in pipeline_stages():
        parameters = {"store": uri, **pinned_inputs(name, outputs), "profile": profile,
                      "overrides": list(overrides), "force": force, "allow_empty": allow_empty}
        if use_deployments:
            ref = run_stage_deployment(name, parameters)
        else:
            ref = STAGE_FLOWS[name](**parameters)
        outputs[STAGE_SPECS[name].output] = ref
        rows.append({"stage": name, "flow": flow_name(name), "ref": ref})
    create_table_artifact(rows, key=artifact_key("pipeline", "summary"),
                          description=f"dspo ({profile}) on {uri}: {outputs.get(STAGE_SPECS[pipeline_stages()[-1]].output)}")
    return outputs
