"""`dspo models ls | verify | fetch`: the weights the active profile uses."""
from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from pipeline.cli.common import console, format_bytes
from pipeline.cli.stages import ProfileOption, SetOption
from pipeline.config import load_config
from pipeline.weights import fetch_weights, profile_models, verify_use

app = typer.Typer(no_args_is_help=True, help="Model weights the profile uses: list, verify, prefetch.")


def _table(uses, checks: list[str] | None = None) -> Table:
    """The uses, one row each; with `checks` (one per use), a last column showing them."""
    table = Table("used by", "model", "present", "size", "expected at", "if missing",
                  *(["check"] if checks is not None else []))
    for index, use in enumerate(uses):
        row = [use.used_by, use.model, "yes" if use.present else "[red]no[/]",
               format_bytes(use.size) if use.present else "-", use.path or "-", use.if_missing]
        if checks is not None:
            row.append(checks[index])
        table.add_row(*row)
    return table


@app.command("ls")
def list_models(profile: ProfileOption = "demo", overrides: SetOption = None) -> None:
    """List every model the profile's stages load, where it is expected and whether it is there."""
    console().print(_table(profile_models(load_config(profile, overrides))))


@app.command("verify")
def verify(profile: ProfileOption = "demo", overrides: SetOption = None) -> None:
    """Hash the present weights (checking torch-hub style hash prefixes in file names); exit 1
    if a model without a fallback is missing or any file fails its check."""
    uses = profile_models(load_config(profile, overrides))
    checks = [verify_use(use) for use in uses]
    console().print(_table(uses, [check.result for check in checks]))
    if any(check.failed for check in checks):
        raise typer.Exit(1)


@app.command("fetch")
def fetch(profile: ProfileOption = "demo", overrides: SetOption = None,
          refresh: Annotated[bool, typer.Option("--refresh", help="Download again even if cached.")] = False) -> None:
    """Download every s3:// weight the profile names into $DSPO_MODELS, for offline runs."""
    for use in profile_models(load_config(profile, overrides)):
        if use.model.startswith("s3://"):
            console().print(f"{use.used_by}: {use.model} -> {fetch_weights(use.model, refresh=refresh)}")
