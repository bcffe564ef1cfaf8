"""`dspo models ls | verify | fetch`: the weights the active profile uses.

`fetch` downloads every weight the profile names from its public source (the catalog's URLs
with their checksums, Hugging Face repos at pinned revisions, s3:// URIs) into the caches
`ls` reports; it stops at the first failure with one `error:` line, and a rerun resumes."""
from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from pipeline.cli.common import CommandError, console, format_bytes
from pipeline.cli.stages import ProfileOption, SetOption
from pipeline.config import load_config
from pipeline.weights import fetch_item, plan_fetch, profile_models, verify_use

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


def _url_overrides(values: list[str] | None) -> dict[str, str]:
    """--url FILE=URL pairs as a dict; CommandError naming a value without '='."""
    overrides = {}
    for value in values or []:
        name, sep, url = value.partition("=")
        if not sep or not name or not url:
            raise CommandError(f"--url {value!r}: expected FILE=URL, e.g. osediff.pkl=https://mirror.example.org/osediff.pkl")
        overrides[name] = url
    return overrides


@app.command("fetch")
def fetch(profile: ProfileOption = "demo", overrides: SetOption = None,
          only: Annotated[list[str] | None, typer.Option(
              "--only", metavar="NAME", help="Fetch only this model id, file name, repo id or URI (repeatable).")] = None,
          dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be fetched, download nothing.")] = False,
          refresh: Annotated[bool, typer.Option("--refresh", help="Download again even if cached.")] = False,
          mirror: Annotated[str | None, typer.Option(
              "--mirror", metavar="URL", envvar="DSPO_WEIGHTS_MIRROR",
              help="Base URL holding the URL-sourced files under their own names (default $DSPO_WEIGHTS_MIRROR); "
                   "Hugging Face repos follow $HF_ENDPOINT.")] = None,
          urls: Annotated[list[str] | None, typer.Option(
              "--url", metavar="FILE=URL", help="Fetch FILE from URL instead (repeatable).")] = None,
          progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars on stderr.")] = True,
          ) -> None:
    """Download every weight the profile names from its public source into the caches `dspo models ls`
    reports: URLs checked against their published checksums (resumable), Hugging Face repos at their
    pinned revisions, s3:// URIs into $DSPO_MODELS."""
    try:
        items = plan_fetch(profile_models(load_config(profile, overrides)), only or (), mirror, _url_overrides(urls))
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    out = console()
    if dry_run:
        for item in items:
            checked = f" [{item.checksum}]" if item.checksum else ""
            note = f" ({item.note})" if item.note else ""
            out.print(f"{item.model}: {item.name} <- {item.source or '-'}{checked} -> {item.target or '-'}{note}",
                      markup=False, highlight=False, soft_wrap=True)
        return
    for item in items:
        status = fetch_item(item, refresh=refresh, progress=progress)
        out.print(f"{item.model}: {item.name} -> {item.target or '-'}: {status}", markup=False, highlight=False,
                  soft_wrap=True)
