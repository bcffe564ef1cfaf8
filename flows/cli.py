"""Entry point of the `dspo` console script (`dspo = flows.cli:main` in pyproject.toml).

Assembles the command line: the pipeline layer's commands (`datasets`, `doctor`, `run`, ...)
merged in as they are, plus the orchestration commands, which belong here because `pipeline/`
must not import Prefect:

    dspo up [--port N] [--state-dir DIR] [--limit 4] [--gpus N|auto] [--remote-gpu-workers]
            [--database postgresql://...] [--redeploy] [--run ...]                 embedded Prefect stack
    dspo down [--state-dir DIR] [--timeout S]
    dspo status [--state-dir DIR] [--json]
    dspo pipeline [--profile P] [--set k=v ...] [--store URI] [--force] [--in-process]

Prefect is imported only inside the commands that need it, so `dspo datasets ls` does not pay for it.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from pipeline.cli import app as pipeline_app
from pipeline.cli import labels as labels_cli
from pipeline.cli.common import ERROR_EXIT, ReportingGroup, StoreOption, console, report_error
from pipeline.cli.stages import ForceOption, ProfileOption, SetOption
from pipeline.config import load_config

app = typer.Typer(
    cls=ReportingGroup,
    name="dspo",
    no_args_is_help=True,
    help="DSPO super-resolution preference pipeline.",
    # As in pipeline.cli: no local variables (credentials, perhaps) in a traceback.
    pretty_exceptions_show_locals=False,
)


@app.callback()
def global_options(debug: Annotated[bool, typer.Option(
        "--debug", envvar="DSPO_DEBUG", help="On an error, print its traceback before the error line "
                                             "(also DSPO_DEBUG=1).")] = False) -> None:
    """Options before the command (`dspo --debug stage score`); ReportingGroup reads --debug
    from this root context when a command fails."""


# Mounted without a name, so its commands sit at the top level: `dspo datasets ls`, `dspo doctor`.
app.add_typer(pipeline_app)
app.add_typer(labels_cli.app, name="label", help="Alias of `dspo labels`: the labelling app, import, export.")

StateDirOption = Annotated[str | None, typer.Option(
    "--state-dir", metavar="DIR", envvar="DSPO_STATE_DIR", show_default=False,
    help="Folder of the embedded stack (pid files, logs, Prefect database). Default: $DSPO_STATE_DIR, else "
         ".dspo/stack in the project folder.")]


def _fail(exc: Exception) -> None:
    report_error(str(exc))
    raise typer.Exit(ERROR_EXIT)


def _pipeline_parameters(profile: str, overrides: list[str] | None, store: str | None, force: bool) -> dict:
    """The parent flow's parameters, once the profile and overrides passed load_config here: a bad
    name or key is one `error:` line at once, before any server is started or asked."""
    parameters = {"profile": profile, "force": force}
    if overrides:
        parameters["overrides"] = list(overrides)
    load_config(profile, parameters.get("overrides"))
    if store:
        parameters["store"] = store
    return parameters


def _say(line: str) -> None:
    console().print(line, soft_wrap=True, highlight=False, markup=False)


def _watch_pipeline(parameters: dict, state_dir: str | None, ui: str | None, store: str | None) -> None:
    """Run the parent deployment on the stack and follow it; a run that did not complete is one
    `error:` line naming the failed stage, its flow run and the reason. Exits with the run's status."""
    from flows import stack

    try:
        outcome = stack.run_pipeline(parameters, state_dir, say=_say)
    except stack.StackError as exc:
        _fail(exc)
    if outcome.failure:
        report_error(outcome.failure)
    _after_run(ui, store, outcome.code == 0)
    raise typer.Exit(outcome.code)


def write_report(store: str | None) -> Path | None:
    """The latest `eval_report` row as <project>/.dspo/report/v<N>/report.md + report.csv + grid.png
    (files to open, where the store holds a Parquet row); None when the store has no report yet."""
    from pipeline.paths import project_dir, store_uri
    from storage import DatasetStore, decode_image

    opened = DatasetStore(store_uri(store))
    try:
        if not opened.versions("eval_report"):
            return None
        ref = opened.resolve("eval_report@latest")
        row = opened.read_arrow(ref, columns=["markdown", "csv", "methods", "grid"]).slice(0, 1).to_pylist()[0]
        folder = project_dir() / ".dspo" / "report" / f"v{ref.rpartition('@v')[2]}"
        folder.mkdir(parents=True, exist_ok=True)
        markdown = f"# {ref}\n\n{row['markdown']}\n"
        if row["grid"]:
            decode_image(row["grid"]).save(folder / "grid.png")
            columns = ["LQ", *(method["name"] for method in json.loads(row["methods"])), "HR"]
            markdown += f"\n![{' | '.join(columns)}](grid.png)\n"
        (folder / "report.md").write_text(markdown)
        (folder / "report.csv").write_text(row["csv"])
        return folder / "report.md"
    finally:
        opened.close()


def _after_run(ui: str | None, store: str | None, succeeded: bool = True) -> None:
    out = console()
    if ui:
        out.print(f"runs, logs and artifacts: {ui}/runs", soft_wrap=True, highlight=False)
    out.print(f"datasets:                 dspo datasets ls{' --store ' + store if store else ''}",
              soft_wrap=True, highlight=False)
    if not succeeded:
        return
    try:
        report = write_report(store)
    except Exception as exc:  # the run is over; a report that cannot be written is worth a line, not a failure
        console(stderr=True).print(f"warning: no evaluation report written ({type(exc).__name__}: {exc})",
                                   soft_wrap=True, highlight=False)
        return
    if report:
        out.print(f"evaluation report:        {report}", soft_wrap=True, highlight=False)


@app.command("up")
def up_command(
    port: Annotated[int | None, typer.Option("--port", help="Server port (default 4200, or the running stack's; "
                                                            "0: any free port).")] = None,
    state_dir: StateDirOption = None,
    limit: Annotated[int, typer.Option("--limit", min=2, help="Concurrent flow runs of the worker (the parent "
                                                              "holds one while its stages run; sample and segment "
                                                              "run at once from 3).")] = 4,
    gpus: Annotated[str | None, typer.Option(
        "--gpus", metavar="N|auto", envvar="DSPO_GPUS", show_default=False,
        help="GPU workers of the dspo-gpu pool, one per GPU (CUDA_VISIBLE_DEVICES=<i> each). Default: auto, one "
             "per visible GPU ($CUDA_VISIBLE_DEVICES, else nvidia-smi -L); 0 or none visible: one CPU worker "
             "serves the GPU stages. Also $DSPO_GPUS.")] = None,
    remote_gpu_workers: Annotated[bool, typer.Option(
        "--remote-gpu-workers", help="Start no dspo-gpu worker here: GPU stage runs go to workers on other "
                                     "machines (README: several machines).")] = False,
    database: Annotated[str | None, typer.Option(
        "--database", metavar="URL", envvar="DSPO_DATABASE_URL", show_default=False,
        help="PostgreSQL for the Prefect server (postgresql://user:password@host:port/db); prefer "
             "$DSPO_DATABASE_URL, which keeps the password off the command line. Default: SQLite in the "
             "state folder.")] = None,
    redeploy: Annotated[bool, typer.Option("--redeploy", help="Deploy prefect.yaml even if unchanged.")] = False,
    run: Annotated[bool, typer.Option("--run", help="Then run the pipeline deployment and watch it "
                                                    "(as `dspo pipeline`).")] = False,
    profile: ProfileOption = "demo",
    overrides: SetOption = None,
    force: ForceOption = False,
    store: StoreOption = None,
) -> None:
    """Start (or reuse) a local Prefect server, the dspo-local and dspo-gpu work pools, the deployments of
    prefect.yaml and their process workers (one per GPU for dspo-gpu), all bound to 127.0.0.1; print where
    the UI is."""
    from flows import stack
    from flows.database import DatabaseError
    from flows.gpu_pools import GpuLayoutError, parse_gpus

    parameters = _pipeline_parameters(profile, overrides, store, force) if run else None
    try:
        info = stack.up(state_dir, port=port, limit=limit, redeploy=redeploy, say=_say, gpus=parse_gpus(gpus),
                        remote_gpu_workers=remote_gpu_workers, database=database)
    except (stack.StackError, DatabaseError, GpuLayoutError) as exc:
        _fail(exc)
    for line in stack.info_lines(info):
        console().print(line, soft_wrap=True, highlight=False)
    if parameters is not None:
        _watch_pipeline(parameters, state_dir, info.ui_url, store)


@app.command("down")
def down_command(
    state_dir: StateDirOption = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds between SIGTERM and SIGKILL.")] = 15,
) -> None:
    """Stop the worker and server that `dspo up` started (their process groups, flow runs included)."""
    from flows import stack, stack_state

    stopped = stack.down(state_dir, timeout=timeout, say=console().print)
    if not stopped:
        console().print(f"nothing to stop in {stack_state.state_dir(state_dir)}", soft_wrap=True, highlight=False)


@app.command("status")
def status_command(
    state_dir: StateDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """Show whether the embedded stack runs: processes, API health, UI address, deployments.
    Exit status 1 when it is not running and healthy."""
    from flows import stack

    report = stack.status(state_dir)
    out = console()
    if as_json:
        out.print_json(json.dumps(report))
    else:
        for name, process in report["processes"].items():
            state = f"running (pid {process['pid']})" if process["running"] else "not running"
            out.print(f"{name + ':':<13}{state}; log {process['log']}", soft_wrap=True, highlight=False)
        out.print(f"{'API:':<13}{report['api_url'] or '-'} ({'healthy' if report['healthy'] else 'not reachable'})",
                  soft_wrap=True, highlight=False)
        if report["healthy"]:
            out.print(f"{'Prefect UI:':<13}{report['ui_url']}", soft_wrap=True, highlight=False)
            for pool, pool_status in report["work_pools"].items():
                out.print(f"{'work pool:':<13}{pool} ({pool_status or 'missing'})", highlight=False)
            out.print(f"{'database:':<13}{report['database']}", soft_wrap=True, highlight=False, markup=False)
            if report["gpu_note"]:
                out.print(f"{'GPUs:':<13}{report['gpu_note']}", soft_wrap=True, highlight=False, markup=False)
            out.print(f"{'deployments:':<13}{', '.join(report['deployments']) or 'none'}", soft_wrap=True,
                      highlight=False)
    if not (report["healthy"] and all(process["running"] for process in report["processes"].values())):
        raise typer.Exit(1)


@app.command("pipeline")
def pipeline_command(
    profile: ProfileOption = "demo",
    overrides: SetOption = None,
    force: ForceOption = False,
    store: StoreOption = None,
    in_process: Annotated[bool, typer.Option("--in-process", help="Run the `dspo` flow in this process, stages as "
                                                                  "subflows (no worker needed; recorded in the "
                                                                  "stack's server when it runs, else in a temporary "
                                                                  "one).")] = False,
    state_dir: StateDirOption = None,
) -> None:
    """Run the whole pipeline as Prefect flows: by default a run of the deployment dspo/full-pipeline on the
    embedded stack (`dspo up` first), each stage its own flow run, watched as `prefect deployment run --watch`
    does; print where to look afterwards. The profile and overrides are checked before anything is submitted;
    when a stage fails, the error line names it, its flow run (name, id, UI address) and the reason."""
    from flows import stack

    parameters = _pipeline_parameters(profile, overrides, store, force)
    if not in_process:
        try:
            report = stack.require_running(state_dir)
        except stack.StackError as exc:
            _fail(exc)
        _watch_pipeline(parameters, state_dir, report["ui_url"], store)
    report = stack.status(state_dir)
    if report["healthy"]:
        os.environ["PREFECT_API_URL"] = report["api_url"]
    from flows.parent import dspo

    outputs = dspo(**parameters, mode="subflows")
    for dataset, ref in outputs.items():
        console().print(f"{dataset:<16} {ref}", highlight=False)
    _after_run(report["ui_url"] if report["healthy"] else None, store)


INTERRUPTED_EXIT = 130  # typer's status for Ctrl+C


def main() -> None:
    """The `dspo` console script: `app`, except that Ctrl+C ends the process at once. A normal
    interpreter exit joins every worker thread, and one still waiting on a silent S3 endpoint
    (botocore's read timeout is 60 s, then it retries) would keep the process alive long after
    the user pressed Ctrl+C."""
    try:
        app()
    except SystemExit as stop:
        if stop.code != INTERRUPTED_EXIT:
            raise
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(INTERRUPTED_EXIT)


__all__ = ["app", "main"]
