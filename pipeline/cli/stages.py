"""`dspo ingest`, `dspo stage NAME` and `dspo run`: stages run in-process, without Prefect."""
from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from pipeline.cli.common import CommandError, StoreOption, console, doing, opened_store
from pipeline.config import load_config
from pipeline.stage import StageResult, run_stage

ProfileOption = Annotated[str, typer.Option("--profile", "-p",
                                           help="Profile in configs/ (demo, test, full) or a YAML path.")]
SetOption = Annotated[list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE",
                                                     help="Config override, e.g. degrade.seed=3 (repeatable).")]
ForceOption = Annotated[bool, typer.Option("--force", help="Recompute even if a version with this fingerprint exists.")]
AllowEmptyOption = Annotated[bool, typer.Option(
    "--allow-empty", help="Publish a stage output that has no rows (refused by default, so an empty version "
                          "never becomes @latest).")]


def _print_results(results: list[StageResult]) -> None:
    from rich.table import Table

    table = Table("stage", "dataset", "rows", "cache", "shards computed", "quarantined", "seconds")
    for result in results:
        dataset = " + ".join([result.ref, *result.side_outputs.values()])
        table.add_row(result.stage, dataset, str(result.rows), "hit" if result.cache_hit else "miss",
                      f"{result.shards_computed}/{result.shards_total}", str(len(result.quarantined)),
                      f"{result.seconds:.1f}")
    console().print(table)
    for result in results:
        if result.fallback:
            console(stderr=True).print(f"warning: {result.stage}: fallback: {result.fallback}", markup=False,
                                       soft_wrap=True, highlight=False)
        if result.identical_to:
            console().print(f"{result.stage}: forced rerun: {result.ref} is byte-identical to {result.identical_to}; "
                            "downstream caches stay valid", markup=False)
        for record in result.quarantined:
            # Items are file names and reasons quote them: printed literally, never as markup.
            console(stderr=True).print(f"[yellow]quarantined[/] {result.stage}: {escape(str(record['item']))}: "
                                       f"{escape(str(record['reason']))}", soft_wrap=True, highlight=False)


def stage(
    name: Annotated[str, typer.Argument(help="A stage: ingest, degrade, sample, segment, score, rank, caption, ...")],
    inputs: Annotated[list[str] | None, typer.Option("--input", "-i", metavar="REF",
                                                     help="Input dataset ref (default: NAME@latest).")] = None,
    profile: ProfileOption = "demo",
    overrides: SetOption = None,
    force: ForceOption = False,
    allow_empty: AllowEmptyOption = False,
    store: StoreOption = None,
) -> None:
    """Run one stage on the latest (or given) input versions and publish its dataset."""
    from pipeline.stages import (
        STAGES,  # imports the ML stack: only for commands that run stages
    )

    if name not in STAGES:
        raise CommandError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    config = load_config(profile, overrides)  # before STAGES[name], which imports the stage's models
    chosen = STAGES[name]
    given = {ref.partition("@")[0]: ref for ref in inputs or []}
    doing(f"stage {name}")
    # A stage with inputs reads them first, so its store must exist; ingest may create one.
    with opened_store(store, publishing=not chosen.inputs) as opened:
        _print_results([run_stage(chosen, opened, config, inputs=given, force=force, allow_empty=allow_empty)])


def ingest(
    source: Annotated[str, typer.Argument(help="Folder, s3:// prefix, Parquet/HF dataset folder, or 'demo:'.")],
    profile: ProfileOption = "demo",
    overrides: SetOption = None,
    force: ForceOption = False,
    allow_empty: AllowEmptyOption = False,
    store: StoreOption = None,
) -> None:
    """Ingest source images into `hr_images` (bad files are reported and skipped)."""
    from pipeline.stages import STAGES

    config = load_config(profile, overrides)
    # Set as typed, not as a `--set` text: YAML would read "photos #2" as "photos" and 2024 as an int.
    config = config.model_copy(update={"ingest": config.ingest.model_copy(update={"source": source})})
    doing("stage ingest")
    with opened_store(store, publishing=True) as opened:
        _print_results([run_stage(STAGES["ingest"], opened, config, force=force, allow_empty=allow_empty)])


def run(
    profile: ProfileOption = "demo",
    overrides: SetOption = None,
    force: ForceOption = False,
    allow_empty: AllowEmptyOption = False,
    store: StoreOption = None,
) -> None:
    """Run every stage in order, in this process (cache hits where nothing changed). Each stage
    reads the versions the earlier stages of this run published, as the Prefect parent flow does."""
    from pipeline.stages import PIPELINE_ORDER, STAGES, pinned_inputs

    config = load_config(profile, overrides)
    results, outputs = [], {}
    with opened_store(store, publishing=True) as opened:
        for name in PIPELINE_ORDER:
            doing(f"stage {name} (in dspo run)")
            result = run_stage(STAGES[name], opened, config, inputs=pinned_inputs(name, outputs), force=force,
                               allow_empty=allow_empty)
            outputs[STAGES[name].output] = result.ref
            results.append(result)
    _print_results(results)
