"""One Prefect flow per pipeline stage, `dspo-<stage>`, built from `pipeline.stages.STAGES`.

    dspo_degrade(store="", hr_images="hr_images@v1", profile="demo", overrides=["degrade.seed=3"],
                 force=False, allow_empty=False) -> "lq_pairs@v3"

A stage added to STAGES gets its flow here automatically (module attribute `dspo_<stage>`,
the entrypoint `flows/stage_flows.py:dspo_<stage>` of its deployment `dspo-<stage>/<stage>` in prefect.yaml).

What a stage flow does:
  1. loads the profile + dotted overrides, opens the store, builds the `StageJob` (pins the
     inputs, computes the fingerprint). A cached fingerprint returns the existing ref ("cache hit").
  2. otherwise submits one `run-shard` task per pending shard to the flow's task runner
     (threads by default, `DSPO_SHARD_WORKERS` of them; `DSPO_TASK_RUNNER=dask` maps shards
     over a Dask cluster, `DSPO_DASK_ADDRESS` or a temporary local one). A shard task retries with exponential
     backoff only on transient storage errors (`StorageUnavailableError`, connection errors);
     any other error fails it at once. Every shard is waited for, so finished shards stay
     staged for the next run even when one fails; then the flow fails, publishing nothing.
  3. publishes once (`publish` task, no retry: a publish that failed after its commit must
     not commit a second version), and records artifacts with stable keys:
     `dspo-<stage>-result` (table), `dspo-<stage>-preview` (thumbnails),
     `dspo-<stage>-progress` (shards done, updated as they finish).

Where shard tasks run. A shard task carries what it needs to rebuild the stage's job (store,
profile, overrides, pinned inputs: `JobContext`), so it runs in any process: on a Dask worker
the job is rebuilt once per process and flow run (same pinned inputs, so the same fingerprint
and scratch area). In the flow's own process (threads) it finds the flow's job in `JOBS`.

Threads and the StageJob. The job is built once in the flow and its shard tasks share it:
`StageJob.run_shard` is thread-safe, and the models a stage runs with come from the stage
framework's per-process cache (pipeline.stage_models), so this module knows nothing of them.
"""
import inspect
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.runtime import deployment as current_deployment
from prefect.runtime import flow_run as current_flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from flows.clock import StageClock, modules_loaded  # first of ours: it notes when our imports began
from flows.common import (
    artifact_key,
    dask_address,
    flow_name,
    resolve_store,
    run_namer,
    shard_retries,
    shard_retry_delays,
    shard_workers,
    task_runner_kind,
)
from flows.gpu_pools import dask_gpu_runner_options, visible_gpus
from pipeline.config import load_config, override_value
from pipeline.previews import manifest_summary, preview_markdown
from pipeline.stage import MODEL_BUILD_SECONDS, Shard, StageJob
from pipeline.stages import STAGE_SPECS, STAGES
from storage import DatasetStore, StorageUnavailableError
from storage.retry import is_transient

log = logging.getLogger("dspo.flows")

#: The StageJob of each flow run in progress in this process, by job id.
JOBS: dict[str, StageJob] = {}


@dataclass(frozen=True)
class JobContext:
    """What rebuilds a flow run's StageJob in another process: the inputs are pinned refs."""

    store: str
    profile: str
    overrides: dict[str, Any]
    inputs: dict[str, str]


#: Jobs rebuilt in this process for shard tasks of flow runs elsewhere (Dask workers), newest last.
REBUILT_JOBS: "OrderedDict[str, StageJob]" = OrderedDict()
REBUILT_JOBS_KEPT = 4
_REBUILT_LOCK = threading.Lock()


def running_job(job_id: str, stage: str, context: JobContext) -> StageJob:
    """The flow's job when the task runs in the flow's process, else one rebuilt from `context`."""
    if job_id in JOBS:
        return JOBS[job_id]
    with _REBUILT_LOCK:
        if job_id not in REBUILT_JOBS:
            REBUILT_JOBS[job_id] = StageJob(STAGES[stage], DatasetStore(context.store),
                                            load_config(context.profile, context.overrides), inputs=context.inputs)
            while len(REBUILT_JOBS) > REBUILT_JOBS_KEPT:
                REBUILT_JOBS.popitem(last=False)[1].store.close()
        REBUILT_JOBS.move_to_end(job_id)
        return REBUILT_JOBS[job_id]


def is_transient_storage_error(exc: BaseException | None) -> bool:
    """Worth retrying: the storage service was unreachable or overloaded (not a missing bucket)."""
    if isinstance(exc, StorageUnavailableError):
        return "bucket does not exist" not in str(exc)
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    return exc is not None and is_transient(exc)


def retry_on_transient(task, task_run, state) -> bool:
    """`retry_condition_fn` of the shard task: retry only transient storage errors."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            exc = state.result(raise_on_failure=False)
        except Exception:  # an unreadable result is no reason to retry
            return False
    return is_transient_storage_error(exc if isinstance(exc, BaseException) else None)


def compute_shard(job_id: str, stage: str, shard_key: str, items: tuple, context: JobContext) -> dict:
    """Compute one shard and stage it in the store's scratch area (see the module docstring)."""
    job = running_job(job_id, stage, context)
    started = time.perf_counter()
    report = job.run_shard(Shard(shard_key, tuple(items)))
    seconds = time.perf_counter() - started
    get_run_logger().info("%s %s: %d rows (%d items, %d quarantined) in %.2fs, %.2fs in run_shard (pid %d)",
                          stage, shard_key, report.rows, len(items), report.quarantined, seconds, report.seconds,
                          os.getpid())
    return {"shard": shard_key, "seconds": seconds, "compute_seconds": report.seconds, "rows": report.rows,
            "quarantined": report.quarantined}


# The task wraps a module-level function, so Dask pickles it by reference (a decorated function
# is not the module's attribute and would be pickled by value, with this module's locks).
run_shard = task(name="run-shard", task_run_name="{stage}-{shard_key}", retries=3, retry_delay_seconds=[2, 4, 8],
                 retry_jitter_factor=0.5, retry_condition_fn=retry_on_transient, cache_policy=NO_CACHE,
                 persist_result=False)(compute_shard)


@task(name="publish", task_run_name="publish-{stage}", cache_policy=NO_CACHE, persist_result=False)
def publish(job_id: str, stage: str) -> str:
    """Publish the staged shards as the next version of the stage's dataset (one commit)."""
    return JOBS[job_id].publish()


def _map_shards(job_id: str, name: str, job: StageJob, context: JobContext, logger) -> tuple[int, float]:
    """Run the pending shards on the task runner; (shards computed, seconds inside run_shard)."""
    pending = job.pending_shards()
    total = len(job.shards)
    staged = total - len(pending)
    if staged:
        logger.info("%s: %d of %d shards already staged by an earlier run; computing %d",
                    name, staged, total, len(pending))
    progress = create_progress_artifact(
        100.0 * staged / total if total else 100.0, key=artifact_key(name, "progress"),
        description=f"{name}: {staged}/{total} shards staged")
    shard_task = run_shard.with_options(retries=shard_retries(), retry_delay_seconds=shard_retry_delays() or 0)
    futures = [shard_task.submit(job_id, name, shard.key, shard.items, context) for shard in pending]
    failures, compute, done = [], 0.0, staged
    for future in as_completed(futures):
        future.wait()  # sets the future's final state (without it, .state asks the API and may lag)
        state = future.state
        if state.is_completed():
            done += 1
            compute += future.result()["compute_seconds"]
            update_progress_artifact(progress, 100.0 * done / total,
                                     description=f"{name}: {done}/{total} shards staged")
        else:
            failures.append((future, state))
    if failures:
        details = "; ".join(f"{state.name}: {state.message}" for _, state in failures[:3])
        cause = failures[0][1].result(raise_on_failure=False)
        raise RuntimeError(
            f"{name}: {len(failures)} of {len(pending)} shards failed ({details}); nothing was published, "
            f"the {done} finished shards stay staged for the next run"
        ) from (cause if isinstance(cause, BaseException) else None)
    return len(pending), compute


def run_stage_flow(name: str, store: str | None, inputs: dict[str, str], profile: str, overrides: list[str],
                   force: bool, allow_empty: bool = False) -> str:
    """The body of every stage flow (see the module docstring)."""
    logger = get_run_logger()
    clock = StageClock(fresh_process=current_deployment.id is not None)
    with clock.phase("stage import"):
        stage = STAGES[name]
    with clock.phase("job set-up"):
        parsed = dict(override_value(text) for text in overrides)
        config = load_config(profile, parsed)
        uri = resolve_store(store)
        opened = DatasetStore(uri)
    job_id = f"{current_flow_run.id or 'local'}-{name}-{id(opened)}"
    try:
        with clock.phase("job set-up"):
            job = StageJob(stage, opened, config, inputs=inputs, force=force, run_id=current_flow_run.id,
                           allow_empty=allow_empty)
        logger.info("%s: store %s, inputs %s, profile %s, fingerprint %s", name, opened.uri,
                    job.inputs or "none", profile, job.fingerprint[:12])
        computed, compute = 0, 0.0
        if job.cached:
            logger.info("%s: cache hit: %s already has fingerprint %s (force=True recomputes)",
                        name, job.cached_ref, job.fingerprint[:12])
        else:
            JOBS[job_id] = job
            context = JobContext(uri, profile, parsed, dict(job.inputs))
            builds = MODEL_BUILD_SECONDS.get(name, 0.0)
            with clock.phase("shards"):
                computed, compute = _map_shards(job_id, name, job, context, logger)
            clock.laps["model builds"] = MODEL_BUILD_SECONDS.get(name, 0.0) - builds  # this process's only
            with clock.phase("publish"):
                publish(job_id, name)
        artifacts_started = time.perf_counter()
        result = job.result()
        metadata = opened.manifest(result.ref).get("metadata", {})
        lines = manifest_summary(metadata)
        # The one warning of a fallback per run: stages themselves stay quiet about it.
        for line in lines or ["no model recorded in the manifest"]:
            (logger.warning if line.startswith("fallback") else logger.info)("%s: %s", name, line)
        create_table_artifact([{
            "stage": name, "ref": result.ref, "rows": result.rows, "cache hit": result.cache_hit,
            "shards computed": computed, "shards total": result.shards_total,
            "side outputs": ", ".join(result.side_outputs.values()),
            "identical to": result.identical_to or "",
            "quarantined": len(result.quarantined), "seconds": result.seconds,
            "seconds in run_shard": round(compute, 3), "fallback": metadata.get("fallback") or "",
            "store": opened.uri,
        }], key=artifact_key(name, "result"), description=f"{name}: {result.ref} ({'cache hit' if result.cache_hit else 'computed'})")
        if result.identical_to:
            logger.info("%s: forced rerun: %s is byte-identical to %s, so every downstream stage stays a cache hit",
                        name, result.ref, result.identical_to)
        for record in result.quarantined[:20]:
            logger.warning("%s: quarantined %s: %s", name, record.get("item"), record.get("reason"))
        try:
            preview = preview_markdown(opened, result.ref)
        except Exception as exc:  # a preview must never fail a stage that succeeded
            logger.warning("%s: no preview (%s: %s)", name, type(exc).__name__, exc)
            preview = None
        if preview:
            create_markdown_artifact(preview, key=artifact_key(name, "preview"), description=f"{name}: {result.ref}")
        clock.laps["artifacts"] = time.perf_counter() - artifacts_started
        timing = clock.columns()
        create_table_artifact([{"stage": name, **timing}], key=artifact_key(name, "timing"),
                              description=f"{name}: where this run's seconds went (flows/clock.py)")
        logger.info("%s: %.1fs fixed (%s)", name, timing["s: fixed"],
                    ", ".join(f"{key[3:]} {value:.1f}s" for key, value in timing.items() if value and key != "s: fixed"))
        logger.info("%s: %s, %d rows, %s", name, result.ref, result.rows,
                    "cache hit" if result.cache_hit else f"{computed}/{result.shards_total} shards computed")
        return result.ref
    finally:
        JOBS.pop(job_id, None)
        opened.close()


def shard_task_runner(stage: str | None = None):
    """The stage flows' task runner, chosen by the environment at import (see flows.common). A GPU
    stage's temporary Dask cluster has one worker per visible GPU, pinned to it (flows/gpu_pools.py)."""
    if task_runner_kind() == "dask":
        from prefect_dask import DaskTaskRunner

        address = dask_address()
        if address:
            return DaskTaskRunner(address=address)
        devices = visible_gpus().devices if stage and STAGE_SPECS[stage].gpu else ()
        if devices:
            return DaskTaskRunner(**dask_gpu_runner_options(devices))
        return DaskTaskRunner(cluster_kwargs={"n_workers": shard_workers(), "threads_per_worker": 1,
                                              "processes": True, "host": "127.0.0.1", "dashboard_address": None})
    return ThreadPoolTaskRunner(max_workers=shard_workers())


def stage_inputs(stage: str, given: dict[str, str]) -> dict[str, str]:
    """The refs a stage flow's input fields name ({} for empty fields: @latest). A field takes a
    ref of its own dataset ("lq_pairs@v3", "lq_pairs@latest") or just the version ("v3", "latest")."""
    refs = {}
    for dataset, value in given.items():
        value = (value or "").strip()
        if not value:
            continue
        ref = value if "@" in value else f"{dataset}@{value}"
        if ref.partition("@")[0] != dataset:
            raise ValueError(f"input {dataset}: {value!r} is not a {dataset} ref (e.g. {dataset}@v2, v2 or latest)")
        refs[dataset] = ref
    return refs


def make_stage_flow(name: str):
    """The Prefect flow `dspo-<name>` for the stage `STAGES[name]`, built from its spec (defining
    the flows imports no stage's models). Its parameters are what a person fills in the UI's run
    form: one optional text field per dataset the stage reads, overrides as `key=value` lines."""
    stage = STAGE_SPECS[name]
    accepted = [*stage.inputs, *stage.optional_inputs]

    def stage_flow(**parameters: Any) -> str:
        return run_stage_flow(name, parameters["store"] or None,
                              stage_inputs(name, {dataset: parameters[dataset] for dataset in accepted}),
                              parameters["profile"], list(parameters["overrides"] or []), parameters["force"],
                              parameters["allow_empty"])

    field = inspect.Parameter.KEYWORD_ONLY
    stage_flow.__signature__ = inspect.Signature([
        inspect.Parameter("store", field, default="", annotation=str),
        *(inspect.Parameter(dataset, field, default="", annotation=str) for dataset in accepted),
        inspect.Parameter("profile", field, default="demo", annotation=str),
        inspect.Parameter("overrides", field, default=[], annotation=list[str]),
        inspect.Parameter("force", field, default=False, annotation=bool),
        inspect.Parameter("allow_empty", field, default=False, annotation=bool),
    ], return_annotation=str)
    input_docs = "".join(
        f"            {dataset}: The {dataset} version to read, e.g. {dataset}@v2 (or v2). Empty: the latest"
        f"{' if the store has one' if dataset in stage.optional_inputs else ''}.\n" for dataset in accepted)
    stage_flow.__doc__ = f"""{stage.summary}

        Args:
            store: Dataset store URI (s3://bucket/prefix, file:///path). Empty: $DSPO_STORE, else
                .dspo/store in the project folder.
{input_docs}            profile: Profile in configs/ (demo, test, full) or a YAML path.
            overrides: Config overrides, one KEY=VALUE per line as with `dspo --set`, e.g. {name}.shard_size=8.
            force: Recompute even if a version with this fingerprint exists.
            allow_empty: Publish an output with no rows (refused by default, so an empty version never
                becomes the latest).
        """
    stage_flow.__name__ = stage_flow.__qualname__ = f"dspo_{name}"
    stage_flow.__module__ = __name__
    return flow(name=flow_name(name), task_runner=shard_task_runner(name), flow_run_name=run_namer(name),
                persist_result=True, description=stage.summary)(stage_flow)


#: Stage flows by stage name, in pipeline order; also module attributes `dspo_<stage>`.
STAGE_FLOWS = {name: make_stage_flow(name) for name in STAGE_SPECS}
globals().update({f"dspo_{name}": stage_flow for name, stage_flow in STAGE_FLOWS.items()})
modules_loaded()
