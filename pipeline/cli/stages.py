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
    source: Annotated[str | None, typer.Argument(
        help="Folder, s3:// prefix, Parquet/HF dataset folder, or 'demo:' (not with --paired).")] = None,
    paired: Annotated[str | None, typer.Option(
        "--paired", metavar="DIR", help="A real-world paired benchmark folder (RealSR, DRealSR, StableSR/OSEDiff "
                                        "test_HR + test_LR crops) -> lq_pairs, split test, degradation real.")] = None,
    layout: Annotated[str | None, typer.Option(
        "--layout", help="With --paired: realsr, drealsr or hr-lr-folders (default: detected from the names).")] = None,
    scale: Annotated[int, typer.Option("--scale", min=1, help="With --paired: the SR factor of the pairs.")] = 4,
    benchmark: Annotated[str | None, typer.Option(
        "--benchmark", help="With --paired: the benchmark's name in the manifest (default: the folder's name).",
    )] = None,
    lr_upsampled: Annotated[bool, typer.Option(
        "--lr-upsampled", help="With --paired: bicubic-downsample LR files stored at the HR size by --scale "
                               "(named in each row and the manifest); refused as the wrong scale otherwise.")] = False,
    profile: ProfileOption = "demo",
    overrides: SetOption = None,
    force: ForceOption = False,
    allow_empty: AllowEmptyOption = False,
    store: StoreOption = None,
) -> None:
    """Ingest source images into `hr_images` (bad files are reported and skipped), or with
    --paired a real-world paired benchmark into `lq_pairs`."""
    if (source is None) == (paired is None):
        raise CommandError("give either SOURCE (images for hr_images) or --paired DIR (a paired benchmark for "
                           "lq_pairs)")
    config = load_config(profile, overrides)
    if paired is not None:
        _ingest_paired(paired, layout, scale, benchmark, lr_upsampled, config.ingest.max_pixels, force, store)
        return
    if layout or benchmark or lr_upsampled or scale != 4:
        raise CommandError("--layout, --scale, --benchmark and --lr-upsampled apply to --paired DIR only")
    from pipeline.stages import STAGES

    # Set as typed, not as a `--set` text: YAML would read "photos #2" as "photos" and 2024 as an int.
    config = config.model_copy(update={"ingest": config.ingest.model_copy(update={"source": source})})
    doing("stage ingest")
    with opened_store(store, publishing=True) as opened:
        _print_results([run_stage(STAGES["ingest"], opened, config, force=force, allow_empty=allow_empty)])


def _ingest_paired(folder: str, layout: str | None, scale: int, benchmark: str | None, lr_upsampled: bool,
                   max_pixels: int, force: bool, store: str | None) -> None:
    from pipeline.paired import ingest_paired

    doing(f"ingest --paired {folder}")
    with opened_store(store, publishing=True) as opened:
        result = ingest_paired(opened, folder, layout=layout, scale=scale, benchmark=benchmark,
                               lr_upsampled=lr_upsampled, max_pixels=max_pixels, force=force)
    _print_results([StageResult("ingest --paired", result.ref, result.cache_hit, result.pairs,
                                quarantined=result.quarantined)])
    console().print(f"{result.ref}: {result.pairs} pairs of {result.benchmark} ({result.layout} layout, split test, "
                    f"degradation real), {len(result.quarantined)} files quarantined, {len(result.skipped)} skipped",
                    markup=False, highlight=False, soft_wrap=True)


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
