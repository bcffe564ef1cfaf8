"""Readers of label files: CSV, Parquet and Label Studio JSON exports -> RawLabel records.

CSV / Parquet columns (header names are matched case-insensitively; other columns are ignored):

    sample_id      required
    instance_id    empty: a label about the whole image
    best, worst    required: candidate ids
    hallucination  true/false/1/0/yes/no (empty: false)
    description    free text
    annotator      empty: the --annotator default
    mask           optional COCO RLE as JSON text, in the sample's HR frame
    labelled_at    optional ISO 8601 time (default: the import time)

Label Studio JSON: see pipeline.labels.label_studio.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.labels.label_studio import read_tasks
from pipeline.labels.records import LabelFileError, RawLabel, from_mapping

FORMATS = ("auto", "csv", "parquet", "label-studio")
REQUIRED_COLUMNS = ("sample_id", "best", "worst")
TEMPLATE_COLUMNS = ("sample_id", "instance_id", "best", "worst", "hallucination", "description", "annotator")
_EXTENSIONS = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".parquet": "parquet", ".pq": "parquet",
               ".json": "label-studio"}


def detect_format(path: Path) -> str:
    """The format of a label file from its extension, else from its first bytes."""
    found = _EXTENSIONS.get(path.suffix.lower())
    if found:
        return found
    with open(path, "rb") as handle:
        head = handle.read(64)
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] in (b"[", b"{"):
        return "label-studio"
    return "csv"


def _check_columns(columns, path: Path) -> dict[str, str]:
    """{normalised name: name in the file}; raises if a required column is missing."""
    names = {str(column).strip().lower(): column for column in columns if column is not None}
    missing = [column for column in REQUIRED_COLUMNS if column not in names]
    if missing:
        raise LabelFileError(f"{path.name}: missing column(s) {', '.join(missing)} "
                             f"(expected {', '.join(TEMPLATE_COLUMNS)})")
    return names


def read_csv(path: Path, annotator: str | None = None) -> list[RawLabel]:
    """Labels of a CSV (comma, semicolon or tab separated; UTF-8, with or without BOM).
    `where` is the file's line number (the header is line 1)."""
    try:
        content = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LabelFileError(f"{path.name} is not UTF-8 text: {exc}") from None
    header = content.split("\n", 1)[0]
    delimiter = max(",;\t", key=header.count)
    reader = csv.reader(io.StringIO(content, newline=""), delimiter=delimiter)
    try:
        columns = next(reader)
    except StopIteration:
        raise LabelFileError(f"{path.name} is empty") from None
    except csv.Error as exc:
        raise LabelFileError(f"{path.name}: {exc}") from None
    names = _check_columns(columns, path)
    position = {name: columns.index(original) for name, original in names.items()}
    labels = []
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise LabelFileError(f"{path.name} line {start}: {exc}") from None
        if not any(cell.strip() for cell in cells):
            continue
        row = {name: cells[index] if index < len(cells) else None for name, index in position.items()}
        labels.append(from_mapping(f"line {start}", row, annotator))
    return labels


def read_parquet(path: Path, annotator: str | None = None) -> list[RawLabel]:
    """Labels of a Parquet file; `where` is the 1-based row number."""
    try:
        table = pq.read_table(path)
    except pa.ArrowException as exc:
        raise LabelFileError(f"{path.name} is not a readable Parquet file: {exc}") from None
    names = _check_columns(table.column_names, path)
    table = table.select(list(names.values())).rename_columns(list(names))
    return [from_mapping(f"row {index}", row, annotator) for index, row in enumerate(table.to_pylist(), start=1)]


def read_label_studio(path: Path, annotator: str | None = None) -> tuple[list[RawLabel], int]:
    """(labels, annotations skipped) of a Label Studio JSON export."""
    try:
        tasks = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LabelFileError(f"{path.name} is not JSON: {exc}") from None
    return read_tasks(tasks, annotator, name=path.name)


def read_labels(path: str | Path, format: str = "auto",
                annotator: str | None = None) -> tuple[str, list[RawLabel], int]:
    """(format used, labels, skipped) of a label file. Raises LabelFileError, FileNotFoundError."""
    path = Path(path)
    if format not in FORMATS:
        raise LabelFileError(f"unknown format {format!r}; one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise LabelFileError(f"no such file: {path}")
    if format == "auto":
        format = detect_format(path)
    if format == "csv":
        return format, read_csv(path, annotator), 0
    if format == "parquet":
        return format, read_parquet(path, annotator), 0
    labels, skipped = read_label_studio(path, annotator)
    return format, labels, skipped
