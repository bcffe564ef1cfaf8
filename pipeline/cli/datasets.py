"""`dspo datasets ...`: list, inspect, pull, tag, verify and garbage-collect the versioned
datasets of a store. Every command is a thin layer over `storage.DatasetStore`."""
from __future__ import annotations

import io
import json
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from pipeline.cli.common import ReportingGroup, StoreOption, console, format_bytes, opened_store
from pipeline.materialize import pull_with_images
from pipeline.pickapic import to_pickapic
from storage import DatasetNotFoundError, DatasetStore, StoreError, image_columns

app = typer.Typer(cls=ReportingGroup, no_args_is_help=True,
                  help="Inspect and manage the versioned datasets of a store.")

# Longest value printed for one cell in `show`; whole rows are for `pull`.
CELL_CHARS = 120
FINGERPRINT_CHARS = 12


def _tags_by_ref(store: DatasetStore, name: str) -> dict[str, list[str]]:
    """{"name@vN": [tags...]} for the tags of `name`."""
    found: dict[str, list[str]] = {}
    for tag, ref in sorted(store.tags(name).items()):
        found.setdefault(ref, []).append(tag)
    return found


@app.command("ls")
def list_datasets(store: StoreOption = None) -> None:
    """List the datasets: latest version, rows, creation time, size, version count and tags."""
    with opened_store(store) as opened:
        names = opened.datasets()
        out = console()
        if not names:
            out.print(Text(f"no datasets in {opened.uri}"), soft_wrap=True)
            return
        # A heading line, not a table title: a title wraps at the table's width, splitting the URI.
        out.print(Text(f"datasets in {opened.uri}"), soft_wrap=True)
        table = Table()
        for column, justify in (("name", "left"), ("latest", "left"), ("rows", "right"), ("created_at", "left"),
                                ("size", "right"), ("versions", "right"), ("tags", "left")):
            table.add_column(column, justify=justify)
        for name in names:
            versions = opened.versions(name)
            manifest = opened.manifest(f"{name}@v{versions[-1]}")
            tags = ", ".join(f"{tag}->{ref.split('@', 1)[1]}" for tag, ref in sorted(opened.tags(name).items()))
            table.add_row(Text(name), f"v{versions[-1]}", str(manifest["rows"]), manifest["created_at"],
                          format_bytes(manifest["bytes"]), str(len(versions)), Text(tags))
        out.print(table)


@app.command("versions")
def list_versions(name: Annotated[str, typer.Argument(help="Dataset name.")], store: StoreOption = None) -> None:
    """List every version of a dataset with its lineage, run id and tags."""
    with opened_store(store) as opened:
        versions = opened.versions(name)
        if not versions:
            raise DatasetNotFoundError(f"dataset {name!r} has no published version in {opened.uri}")
        tags = _tags_by_ref(opened, name)
        out = console()
        out.print(Text(f"{name} in {opened.uri}"), soft_wrap=True)
        table = Table()
        for column, justify in (("version", "left"), ("created_at", "left"), ("rows", "right"), ("bytes", "right"),
                                ("fingerprint", "left"), ("inputs", "left"), ("run_id", "left"), ("tags", "left")):
            table.add_column(column, justify=justify)
        for version in versions:
            ref = f"{name}@v{version}"
            manifest = opened.manifest(ref)
            table.add_row(
                f"v{version}", manifest["created_at"], str(manifest["rows"]), str(manifest["bytes"]),
                Text((manifest.get("fingerprint") or "-")[:FINGERPRINT_CHARS]),
                Text(", ".join(manifest["inputs"]) or "-"), Text(manifest.get("run_id") or "-"),
                Text(", ".join(tags.get(ref, [])) or "-"),
            )
        out.print(table)


def _lineage_label(store: DatasetStore, ref: str) -> Text:
    """`name@vN  R rows, created_at` for one node of the lineage tree."""
    manifest = store.manifest(ref)
    return Text.assemble((ref, "bold"), f"  {manifest['rows']} rows, {manifest['created_at']}")


def _add_lineage(node: Tree, store: DatasetStore, ref: str, expanded: set[str]) -> None:
    """Add the inputs of `ref` under `node`, recursively down to datasets with no inputs.

    A version reached twice (a diamond in the lineage) is expanded once; a missing input
    (deleted, or from another store) is shown as such rather than failing the command.
    """
    expanded.add(ref)
    for parent in store.manifest(ref)["inputs"]:
        if parent in expanded:
            node.add(Text.assemble((parent, "bold"), ("  (shown above)", "dim")))
            continue
        try:
            child = node.add(_lineage_label(store, parent))
        except StoreError as exc:
            node.add(Text.assemble((parent, "bold red"), f"  missing: {exc}"))
            continue
        _add_lineage(child, store, parent, expanded)


def _image_summary(cell: dict | None) -> str:
    """`<image WxH png, N bytes>`: reads only the image header, never decodes pixels."""
    from PIL import Image, UnidentifiedImageError

    if cell is None:
        return "null"
    data = cell.get("bytes")
    if data is None:
        return f"<image at {cell.get('path')!r}>"
    try:
        with Image.open(io.BytesIO(data)) as image:
            return f"<image {image.width}x{image.height} {(image.format or '?').lower()}, {len(data)} bytes>"
    except (UnidentifiedImageError, OSError):
        return f"<undecodable image, {len(data)} bytes>"


def _cell_text(value, is_image: bool) -> str:
    """One cell as short text: images and bytes summarised, long values cut at CELL_CHARS."""
    if is_image:
        return _image_summary(value)
    if value is None:
        return "null"
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, (dict, list)):
        text = json.dumps(value, default=lambda item: f"<{len(item)} bytes>" if isinstance(item, bytes) else str(item))
    else:
        text = str(value)
    return text if len(text) <= CELL_CHARS else text[:CELL_CHARS - 1] + "…"


def _head(store: DatasetStore, ref: str, rows: int) -> tuple[list[str], list[dict]]:
    """(image column names, the first `rows` rows of `ref`), streamed so that only the first
    row group or two is read, however large the version."""
    batches = store.iter_batches(ref, batch_size=rows)
    head: list[dict] = []
    images: list[str] = []
    try:
        for batch in batches:
            images = image_columns(batch.schema)
            head.extend(batch.slice(0, rows - len(head)).to_pylist())
            if len(head) == rows:
                break
    finally:
        batches.close()
    return images, head


def _print_rows(store: DatasetStore, ref: str, rows: int) -> None:
    """Each row as a column/value grid: dataset rows are too wide for one table line."""
    images, head = _head(store, ref, rows)
    out = console()
    out.print(Text(f"first {len(head)} rows", style="bold"))
    for index, row in enumerate(head):
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="cyan", no_wrap=True)
        grid.add_column(overflow="fold")
        for column, value in row.items():
            grid.add_row(Text(column), Text(_cell_text(value, column in images)))
        out.print(Text(f"row {index}", style="dim"))
        out.print(grid)


@app.command("show")
def show(
    ref: Annotated[str, typer.Argument(help="name, name@vN, name@latest or name@<tag>.")],
    rows: Annotated[int, typer.Option("--rows", min=0, help="How many rows to print.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw manifest as JSON and nothing else.")] = False,
    store: StoreOption = None,
) -> None:
    """Show a version: manifest summary, lineage tree, schema and the first rows."""
    with opened_store(store) as opened:
        pinned = opened.resolve(ref)
        manifest = opened.manifest(pinned)
        if as_json:
            # Plain echo, not rich: the output must stay machine-readable (no markup, no wrapping).
            typer.echo(json.dumps(manifest, indent=1, sort_keys=True))
            return
        out = console()
        tags = _tags_by_ref(opened, manifest["name"]).get(pinned, [])
        summary = Table.grid(padding=(0, 2))
        summary.add_column(style="bold", no_wrap=True)
        summary.add_column(overflow="fold")
        for label, value in (
            ("ref", pinned if pinned == ref else f"{pinned}  (from {ref})"),
            ("store", opened.uri),
            ("created_at", manifest["created_at"]),
            ("rows", str(manifest["rows"])),
            ("size", f"{manifest['bytes']} bytes ({format_bytes(manifest['bytes'])}), {len(manifest['files'])} files"),
            ("fingerprint", manifest.get("fingerprint") or "-"),
            ("run_id", manifest.get("run_id") or "-"),
            ("tags", ", ".join(tags) or "-"),
            ("metadata", _cell_text(manifest.get("metadata") or {}, False)),
        ):
            summary.add_row(label, Text(value))
        out.print(summary)

        lineage = Tree(_lineage_label(opened, pinned), guide_style="dim")
        _add_lineage(lineage, opened, pinned, set())
        out.print(Text("lineage", style="bold"))
        out.print(lineage)

        schema = Table(title="schema", title_justify="left")
        schema.add_column("column")
        schema.add_column("type")
        for field in manifest["schema"]:
            schema.add_row(Text(field["name"]), Text(field["type"]))
        out.print(schema)
        if rows:
            _print_rows(opened, pinned, rows)


@app.command("pull")
def pull(
    ref: Annotated[str, typer.Argument(help="Version to copy.")],
    to: Annotated[str, typer.Option("--to", metavar="DIR", help="Destination folder (absent or empty).")],
    fmt: Annotated[str, typer.Option(
        "--format", help="parquet: data files + manifest.json; hf: a saved Hugging Face dataset + manifest.json; "
        "pickapic (preferences only): diffusers Diffusion-DPO / Pick-a-Pic columns jpg_0, jpg_1, label_0, caption.",
    )] = "parquet",
    with_images: Annotated[bool, typer.Option(
        "--with-images", help="preferences only: add the LQ, HR, winner, loser and mask images as Image columns.",
    )] = False,
    store: StoreOption = None,
) -> None:
    """Copy a version to a local folder."""
    with opened_store(store) as opened:
        # The store validates the format, so an unknown one is reported like any store error.
        pinned = opened.resolve(ref)
        if fmt == "pickapic":
            report = to_pickapic(opened, pinned, to)
            console().print(Text(f"pulled {pinned} to {to} (pickapic: {report['rows']} pairs, "
                                 f"{report['dropped_ties']} ties dropped)"))
            return
        if with_images:
            folder = pull_with_images(opened, pinned, to, format=fmt)
        else:
            folder = opened.pull(pinned, to, format=fmt)
        console().print(Text(f"pulled {pinned} to {folder} ({fmt}{', with images' if with_images else ''})"))


@app.command("tag")
def tag(
    ref: Annotated[str, typer.Argument(help="Version to name.")],
    name: Annotated[str, typer.Argument(metavar="TAG", help="Tag name (not 'latest' nor 'vN').")],
    force: Annotated[bool, typer.Option("--force", help="Move the tag if it points at another version.")] = False,
    store: StoreOption = None,
) -> None:
    """Name a version, e.g. `dspo datasets tag preferences@v3 paper-repro`."""
    with opened_store(store) as opened:
        pinned = opened.tag(ref, name, force=force)
        console().print(Text(f"tagged {pinned} as {pinned.split('@', 1)[0]}@{name}"))


@app.command("gc")
def collect_garbage(
    older_than: Annotated[float, typer.Option("--older-than", metavar="SECONDS", min=0,
                                              help="Only objects older than this.")] = 3600.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be deleted, delete nothing.")] = False,
    store: StoreOption = None,
) -> None:
    """Delete data files no manifest lists (crashed or losing publishes, stale temp files)."""
    with opened_store(store) as opened:
        keys = opened.gc(older_than=older_than, dry_run=dry_run)
        out = console()
        for key in keys:
            out.print(Text(key))
        verb = "would delete" if dry_run else "deleted"
        out.print(Text(f"{verb} {len(keys)} unreferenced objects in {opened.uri}"))


@app.command("verify")
def verify(ref: Annotated[str, typer.Argument(help="Version to check.")], store: StoreOption = None) -> None:
    """Re-read every data file of a version and check its size and sha256 against the manifest."""
    with opened_store(store) as opened:
        pinned = opened.resolve(ref)
        opened.verify(pinned)
        files = len(opened.manifest(pinned)["files"])
        console().print(Text(f"ok: {pinned}: {files} files match their manifest checksums"))
