"""`dspo ingest`, `dspo stage NAME` and `dspo run`: stages run in-process, without Prefect."""
from __future__ import annotations

from typing import Annotated

import typer

from pipeline.cli.common import StoreOption, console, opened_store
from pipeline.config import load_config
from pipeline.stage import StageResult, run_stage

ProfileOption = Annotated[str, typer.Option("--profile", "-p",
                                           help="Profile in configs/ (demo, test, full) or a YAML path.")]
SetOption = Annotated[list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE",
                                                     help="Config override, e.g. degrade.seed=3 (repeatable).")]
ForceOption = Annotated[bool, typer.Option("--force", help="Recompute even if a version with this fingerprint exists.")]


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
        for record in result.quarantined:
            console(stderr=True).print(f"[yellow]quarantined[/] {result.stage}: {record['item']}: {record['reason']}")


def stage(
    name: Annotated[str, typer.Argument(help="A stage: ingest, degrade, sample, segment, score, rank, caption, ...")],
    inputs: Annotated[list[str] | None, typer.Option("--input", "-i", metavar="REF",
                                                     help="Input dataset ref (default: NAME@latest).")] = None,
    profile: ProfileOption = "demo",
    overrides: SetOption = None,
    force: ForceOption = False,
    store: StoreOption = None,
) -> None:
    """Run one stage on the latest (or given) input versions and publish its dataset."""
    from pipeline.stages import STAGES  # imports the ML stack: only for commands that run stages

    if name not in STAGES:
        raise typer.BadParameter(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    given = {ref.partition("@")[0]: ref for ref in inputs or []}
    with opened_store(store) as opened:
        _print_results([run_stage(STAGES[name], opened, load_config(profile, overrides), inputs=given, force=force)])


def ingest(
    source: Annotated[str, typer.Argument(help="Folder, s3:// prefix, Parquet/HF dataset folder, or 'demo:'.")],
    profile: ProfileOption = "demo",
    overrides: SetOption = None,
    force: ForceOption = False,
    store: StoreOption = None,
) -> None:
    """Ingest source images into `hr_images` (bad files are reported and skipped)."""
    from pipeline.stages import STAGES

    config = load_config(profile, [*(overrides or []), f"ingest.source={source}"])
    with opened_store(store) as opened:
        _print_results([run_stage(STAGES["ingest"], opened, config, force=force)])


def run(
    profile: ProfileOption = "demo",
    overrides: SetOption = None,
    force: ForceOption = False,
    store: StoreOption = None,
) -> None:
    """Run every stage in order, in this process (cache hits where nothing changed). Each stage
    reads the versions the earlier stages of this run published, as the Prefect parent flow does."""
    from pipeline.stages import PIPELINE_ORDER, STAGES, pinned_inputs

    config = load_config(profile, overrides)
    results, outputs = [], {}
    with opened_store(store) as opened:
        for name in PIPELINE_ORDER:
            result = run_stage(STAGES[name], opened, config, inputs=pinned_inputs(name, outputs), force=force)
            outputs[STAGES[name].output] = result.ref
            results.append(result)
    _print_results(results)
