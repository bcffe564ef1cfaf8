"""`dspo labels ...`: import human labels into `human_labels`, export labelling tasks.

    dspo labels import FILE [--format auto|csv|parquet|label-studio] [--annotator NAME]
                            [--candidates REF] [--instances REF] [--dry-run] [--store URI]
    dspo labels export --to DIR [--format label-studio|folder] [--limit N] [--url-prefix URL]
                            [--candidates REF] [--instances REF] [--force] [--store URI]

`import` exits 0 when at least one label was accepted, 1 when every label was rejected (or
the file held none), 2 when the file or the store cannot be used. Rejected labels are
printed one per line on stderr: `rejected <line/row/task>: <id>: <reason>`.
"""
from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer
from rich.text import Text

from pipeline.cli.common import (
    ERROR_EXIT, ReportingGroup, StoreOption, console, error_message, opened_store, report_error,
)
from pipeline.labels import EXPORT_FORMATS, FORMATS, LabelFileError, export_tasks, import_labels

ImportFormat = Enum("ImportFormat", {name.replace("-", "_"): name for name in FORMATS}, type=str)
ExportFormat = Enum("ExportFormat", {name.replace("-", "_"): name for name in EXPORT_FORMATS}, type=str)

app = typer.Typer(cls=ReportingGroup, no_args_is_help=True,
                  help="Import human labels (best/worst candidate, hallucination) and export labelling tasks.")

CandidatesOption = Annotated[str, typer.Option("--candidates", metavar="REF",
                                               help="Candidates the labels may name.")]
InstancesOption = Annotated[str, typer.Option("--instances", metavar="REF", help="Instances the labels may name.")]


IMPORT_HELP = (
    "Check a label file against the store and publish a new human_labels version with the labels so far "
    "plus the valid new ones; print every rejected label with its reason.\n\n"
    "CSV / Parquet columns: sample_id, instance_id (empty: the whole image), best, worst (candidate ids), "
    "hallucination (true/false/1/0/yes/no), description, annotator; optional mask (COCO RLE JSON) and "
    "labelled_at. Label Studio JSON exports: ranker, pairwise, choices, textarea and brush results "
    "(see pipeline.labels.label_studio).\n\n"
    "Exit status: 0 if a label was accepted, 1 if none was, 2 if the file or the store cannot be used."
)
EXPORT_HELP = (
    "Write labelling tasks, one per instance (by sample, then instance index): crops of the instance from "
    "every candidate, the upscaled LQ and the HR, with the mask outlined.\n\n"
    "Image paths in tasks.json are relative to DIR: serve DIR (or upload it) and pass its URL as "
    "--url-prefix so Label Studio can load them."
)


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
    counts = (f"{report.read} read, {report.accepted} accepted, {len(report.rejected)} rejected"
              + (f", {report.skipped} skipped" if report.skipped else "")
              + (f"; {report.hallucination_without_description} hallucination flag(s) without a description"
                 if report.hallucination_without_description else ""))
    if not report.accepted:
        errors.print(Text(f"no label accepted from {report.source_file} ({counts}); nothing published"),
                     soft_wrap=True, highlight=False)
        raise typer.Exit(1)
    out = console()
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
    url_prefix: Annotated[str, typer.Option("--url-prefix", metavar="URL",
                                            help="Prefix of the image paths in tasks.json (where DIR is served).")
                          ] = "",
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
    console().print(Text(f"exported {report.tasks} tasks ({report.images} images) from "
                         f"{', '.join(report.inputs)} to {report.folder}: {', '.join(report.files)}"), soft_wrap=True)
