"""`dspo labels ...` (also `dspo label ...`): import human labels into `human_labels`, export
labelling tasks, and run the labelling web app.

    dspo labels import FILE [--format auto|csv|parquet|label-studio] [--annotator NAME]
                            [--candidates REF] [--instances REF] [--dry-run] [--store URI]
    dspo labels export --to DIR [--format label-studio|folder] [--limit N] [--url-prefix URL]
                            [--candidates REF] [--instances REF] [--force] [--store URI]
    dspo label serve [--host 127.0.0.1] [--port 8765] [--state-dir DIR] [--batch-size N]
                     [--batch-seconds S] [--candidates REF] [--instances REF] [--lq-pairs REF]
                     [--scores REF | --no-scores] [--hide-hr] [--store URI]
    dspo label add-annotator NAME [--replace] [--state-dir DIR]      prints the new token once

`import` exits 0 when at least one label was accepted or every label is a duplicate of one
already imported ("nothing new"), 1 when no label was accepted and some were rejected (or
the file held none), 2 when the file or the store cannot be used. Rejected and duplicate
labels are printed one per line on stderr: `rejected <line/row/task>: <id>: <reason>`,
`duplicate <line/row/task>: <id>: duplicate of ...`.
"""
from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from pipeline.cli.common import (
    ERROR_EXIT, ReportingGroup, StoreOption, console, error_message, opened_store, report_error,
)
from pipeline.labels import EXPORT_FORMATS, FORMATS, LabelFileError, export_tasks, import_labels
from pipeline.paths import project_dir

ImportFormat = Enum("ImportFormat", {name.replace("-", "_"): name for name in FORMATS}, type=str)
ExportFormat = Enum("ExportFormat", {name.replace("-", "_"): name for name in EXPORT_FORMATS}, type=str)

app = typer.Typer(cls=ReportingGroup, no_args_is_help=True,
                  help="Human labels (best/worst candidate, hallucination): import, export labelling tasks, "
                       "and the labelling web app (serve, add-annotator).")

CandidatesOption = Annotated[str, typer.Option("--candidates", metavar="REF",
                                               help="Candidates the labels may name.")]
InstancesOption = Annotated[str, typer.Option("--instances", metavar="REF", help="Instances the labels may name.")]


IMPORT_HELP = (
    "Check a label file against the store and publish a new human_labels version with the labels so far "
    "plus the valid new ones; print every rejected label with its reason.\n\n"
    "CSV / Parquet columns: sample_id, instance_id (empty: the whole image), best, worst (candidate ids), "
    "hallucination (true/false/1/0/yes/no), description, annotator; optional mask (COCO RLE JSON) and "
    "labelled_at. Label Studio exports (JSON, JSON_MIN, CSV, TSV): ranker, pairwise, choices, textarea and brush "
    "results (see pipeline.labels.label_studio); the annotator is Label Studio's user id.\n\n"
    "Exit status: 0 if a label was accepted or all are duplicates of imported ones (nothing new), 1 if none "
    "was accepted and some were rejected, 2 if the file or the store cannot be used."
)
EXPORT_HELP = (
    "Write labelling tasks, one per instance (by sample, then instance index): crops of the instance from "
    "every candidate, the upscaled LQ and the HR, with the mask outlined.\n\n"
    "Label Studio: tasks.json holds the images themselves (PNG data URIs), so they load with no storage to set "
    "up; import it with label_config.xml as the project's labelling config. For large sets pass --url-prefix "
    "to reference the PNGs under DIR instead, e.g. '/data/local-files/?d=<DIR relative to "
    "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT>/' with a Local Storage on the project (README \"Label Studio round "
    "trip\")."
)
# Above this tasks.json size the export suggests references (--url-prefix): Label Studio keeps task data in
# its database and sends it with every task it shows.
EMBEDDED_WARN_BYTES = 200 * 1024 * 1024


@app.command("import", help=IMPORT_HELP)
def import_command(
    file: Annotated[str, typer.Argument(metavar="FILE", help="CSV, Parquet or Label Studio JSON export.")],
    fmt: Annotated[ImportFormat, typer.Option("--format", help="File format; auto: from the extension, else the "
                                                               "content.")] = ImportFormat.auto,
    annotator: Annotated[str | None, typer.Option("--annotator", metavar="NAME",
                                                  help="Annotator of rows that name none.")] = None,
    candidates: CandidatesOption = "sr_candidates@latest",
    instances: InstancesOption = "instances@latest",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check and report, publish nothing.")] = False,
    store: StoreOption = None,
) -> None:
    """Import a label file into a new human_labels version (help text: IMPORT_HELP)."""
    try:
        with opened_store(store) as opened:
            report = import_labels(opened, file, fmt.value, annotator, candidates=candidates, instances=instances,
                                   dry_run=dry_run)
    except LabelFileError as exc:
        report_error(error_message(exc))
        raise typer.Exit(ERROR_EXIT) from None
    errors = console(stderr=True)
    for rejection in report.rejected:
        errors.print(Text(f"rejected {rejection}"), soft_wrap=True, highlight=False)
    for duplicate in report.duplicates:
        errors.print(Text(f"duplicate {duplicate}"), soft_wrap=True, highlight=False)
    for revision in report.revisions:
        errors.print(Text(f"revised {revision}"), soft_wrap=True, highlight=False)
    counts = (f"{report.read} read, {report.accepted} accepted, {len(report.rejected)} rejected"
              + (f", {len(report.duplicates)} duplicate(s)" if report.duplicates else "")
              + (f", {len(report.revisions)} revision(s)" if report.revisions else "")
              + (f", {report.skipped} skipped" if report.skipped else "")
              + (f"; {report.hallucination_without_description} hallucination flag(s) without a description"
                 if report.hallucination_without_description else ""))
    out = console()
    if not report.accepted and report.duplicates and not report.rejected:
        # Importing the same file again is idempotent, not a failure.
        out.print(Text(f"nothing new in {report.source_file} ({counts}): every label is already in "
                       f"{report.previous}; nothing published"), soft_wrap=True)
        return
    if not report.accepted:
        errors.print(Text(f"no label accepted from {report.source_file} ({counts}); nothing published"),
                     soft_wrap=True, highlight=False)
        raise typer.Exit(1)
    if report.ref is None:
        out.print(Text(f"dry run: {report.source_file} ({report.format}): {counts}; nothing published"),
                  soft_wrap=True)
        return
    merged = f" (merged concurrent {', '.join(report.merged)})" if report.merged else ""
    out.print(Text(f"imported {report.source_file} ({report.format}) into {report.ref}: {counts}; "
                   f"{report.ref} holds {report.total} labels{merged}"), soft_wrap=True)


@app.command("export", help=EXPORT_HELP)
def export_command(
    to: Annotated[str, typer.Option("--to", metavar="DIR", help="Destination folder (absent or empty).")],
    fmt: Annotated[ExportFormat, typer.Option("--format", help="label-studio: tasks.json + label_config.xml; "
                                                               "folder: tasks.csv.")] = ExportFormat.label_studio,
    limit: Annotated[int | None, typer.Option("--limit", min=1, metavar="N",
                                              help="Export the first N instances only.")] = None,
    url_prefix: Annotated[str | None, typer.Option(
        "--url-prefix", metavar="URL", show_default=False,
        help="Reference the images as URL + their path under DIR instead of embedding them in tasks.json.")
    ] = None,
    candidates: Annotated[str, typer.Option("--candidates", metavar="REF", help="Candidates to crop.")
                          ] = "sr_candidates@latest",
    instances: Annotated[str, typer.Option("--instances", metavar="REF", help="Instances to export.")
                         ] = "instances@latest",
    force: Annotated[bool, typer.Option("--force", help="Write into a folder that is not empty.")] = False,
    store: StoreOption = None,
) -> None:
    """Export labelling tasks (help text: EXPORT_HELP)."""
    with opened_store(store) as opened:
        report = export_tasks(opened, to, fmt.value, limit, candidates=candidates, instances=instances,
                              url_prefix=url_prefix, force=force)
    images = ("; images embedded in tasks.json" if report.embedded
              else f"; images referenced as {url_prefix}images/..." if url_prefix is not None else "")
    size = f" ({report.task_bytes / 1e6:.1f} MB)" if report.task_bytes else ""
    console().print(Text(f"exported {report.tasks} tasks ({report.images} images) from "
                         f"{', '.join(report.inputs)} to {report.folder}: {', '.join(report.files)}{size}{images}"),
                    soft_wrap=True)
    if report.embedded and report.task_bytes > EMBEDDED_WARN_BYTES:
        console(stderr=True).print(Text(
            f"warning: tasks.json is {report.task_bytes / 1e6:.0f} MB with the images embedded; for a set this "
            "large export with --url-prefix and serve DIR (README \"Label Studio round trip\")"), soft_wrap=True)


StateDirOption = Annotated[Path | None, typer.Option(
    "--state-dir", metavar="DIR", envvar="DSPO_LABEL_DIR", show_default=False,
    help="The labelling app's state: annotator token hashes, login sessions, the CSRF key and the journal of "
         "unpublished labels. Default: $DSPO_LABEL_DIR, else "
         ".dspo/label in the project folder.")]


def _state_dir(option: Path | None) -> Path:
    return (option or project_dir() / ".dspo" / "label").expanduser().resolve()


@app.command("serve")
def serve_command(
    host: Annotated[str, typer.Option("--host", help="Address to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port; 0: any free port (printed).")] = 8765,
    state_dir: StateDirOption = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Publish once this many labels wait.")] = 20,
    batch_seconds: Annotated[float, typer.Option("--batch-seconds", min=0.01,
                                                 help="... or once the oldest waiting label is this old (waiting "
                                                      "labels are journalled: a killed server loses none).")] = 30.0,
    candidates: Annotated[str, typer.Option("--candidates", metavar="REF", help="Candidates to show.")
                          ] = "sr_candidates@latest",
    instances: Annotated[str, typer.Option("--instances", metavar="REF", help="Instances to label.")
                         ] = "instances@latest",
    lq_pairs: Annotated[str | None, typer.Option("--lq-pairs", metavar="REF", show_default=False,
                                                 help="LQ/HR crops; default: the candidates' input.")] = None,
    scores: Annotated[str, typer.Option("--scores", metavar="REF", help="IQA rewards that order the queue.")
                      ] = "instance_scores@latest",
    no_scores: Annotated[bool, typer.Option("--no-scores", help="Serve tasks in sample order.")] = False,
    hide_hr: Annotated[bool, typer.Option("--hide-hr", help="Show the LQ input only, not the HR crop, for "
                                                            "reference.")] = False,
    store: StoreOption = None,
) -> None:
    """Serve the labelling web app until Ctrl+C / SIGTERM; waiting labels are published on the way out."""
    from pipeline.labels.app import LabelAppConfig, serve

    config = LabelAppConfig(host=host, port=port, state_dir=_state_dir(state_dir), candidates=candidates,
                            instances=instances, lq_pairs=lq_pairs, scores=None if no_scores else scores,
                            show_hr=not hide_hr, batch_size=batch_size, batch_seconds=batch_seconds)
    out = console()
    with opened_store(store) as opened:
        serve(opened, config, say=lambda line: (out.print(Text(line), soft_wrap=True), sys.stdout.flush()))


@app.command("add-annotator")
def add_annotator_command(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Annotator id, as it appears in human_labels.")],
    replace: Annotated[bool, typer.Option("--replace", help="Issue a new token for an existing annotator (the "
                                                            "old one stops working, its logins end).")] = False,
    state_dir: StateDirOption = None,
) -> None:
    """Register an annotator and print their token, once: only its hash is kept."""
    from pipeline.labels.app.auth import Annotators, AuthError

    folder = _state_dir(state_dir)
    try:
        token = Annotators(folder).add(name, replace=replace)
    except AuthError as exc:
        report_error(str(exc))
        raise typer.Exit(ERROR_EXIT) from None
    console(stderr=True).print(Text(f"annotator {name} added to {folder}; their token (shown once, keep it "
                                    "secret):"), soft_wrap=True)
    print(token)
