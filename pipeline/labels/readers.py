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

Label Studio JSON: see pipeline.labels.label_studio. Label Studio JSON_MIN, CSV and TSV exports
(one flat row per annotation, told apart by the `rank` control column): pipeline.labels.ls_flat.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.labels.label_studio import read_tasks
from pipeline.labels.ls_flat import is_flat_header, is_flat_row, json_cell, task_of
from pipeline.labels.records import LabelFileError, Problem, RawLabel, from_mapping

FORMATS = ("auto", "csv", "parquet", "label-studio")
REQUIRED_COLUMNS = ("sample_id", "best", "worst")
TEMPLATE_COLUMNS = ("sample_id", "instance_id", "best", "worst", "hallucination", "description", "annotator")
READ_COLUMNS = (*TEMPLATE_COLUMNS, "mask", "labelled_at")
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
    """{normalised name: name in the file}; raises if a required column is missing or a column
    the importer reads appears twice (which of the two to believe cannot be told)."""
    names = {str(column).strip().lower(): column for column in columns if column is not None}
    read = [str(column).strip().lower() for column in columns if str(column).strip().lower() in READ_COLUMNS]
    twice = sorted({name for name in read if read.count(name) > 1})
    if twice:
        raise LabelFileError(f"{path.name}: column(s) {', '.join(twice)} appear more than once")
    missing = [column for column in REQUIRED_COLUMNS if column not in names]
    if missing:
        raise LabelFileError(f"{path.name}: missing column(s) {', '.join(missing)} "
                             f"(expected {', '.join(TEMPLATE_COLUMNS)})")
    return names


def read_csv(path: Path, annotator: str | None = None) -> list[RawLabel]:
    """Labels of a CSV (comma, semicolon or tab separated; UTF-8, with or without BOM).
    `where` is the file's line number (the header is line 1), or its lines ("lines 4-6") for a
    row with quoted line breaks. A row the csv module cannot split is a label with `problem`."""
    try:
        content = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LabelFileError(f"{path.name} is not UTF-8 text: {exc}") from None
    header = content.split("\n", 1)[0]
    delimiter = max(",;\t", key=header.count)
    # csv refuses fields over 128 KiB by default and stops there; the file is in memory already,
    # so no field of it is too long to read (a description over the limit is rejected by its row).
    csv.field_size_limit(max(csv.field_size_limit(), len(content) + 1))
    reader = csv.reader(io.StringIO(content, newline=""), delimiter=delimiter)
    try:
        columns = next(reader)
    except StopIteration:
        raise LabelFileError(f"{path.name} is empty") from None
    except csv.Error as exc:
        raise LabelFileError(f"{path.name}: {exc}") from None
    if is_flat_header(columns):
        return _read_flat_csv(reader, columns, annotator, path.name)
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
            labels.append(RawLabel(f"line {start}", problem=Problem(f"not a CSV row: {exc}", "-")))
            continue
        if not any(cell.strip() for cell in cells):
            continue
        # A quoted field may span lines (or, unterminated, swallow the rest of the file): say so.
        where = f"line {start}" if reader.line_num == start else f"lines {start}-{reader.line_num}"
        row = {name: cells[index] if index < len(cells) else None for name, index in position.items()}
        labels.append(from_mapping(where, row, annotator))
    return labels


def _read_flat_csv(reader, columns: list[str], annotator: str | None, name: str) -> list[RawLabel]:
    """Labels of a Label Studio CSV / TSV export; `where` names the file line."""
    labels = []
    for cells in reader:
        if not any(cell.strip() for cell in cells):
            continue
        row = {column.strip(): json_cell(cells[index]) if index < len(cells) else None
               for index, column in enumerate(columns)}
        found, _ = read_tasks([task_of(row)], annotator, name=name)
        for label in found:
            label.where = f"line {reader.line_num}"
        labels.extend(found)
    return labels


def read_parquet(path: Path, annotator: str | None = None) -> list[RawLabel]:
    """Labels of a Parquet file; `where` is the 1-based row number."""
    try:
        table = pq.read_table(path)
    except pa.ArrowException as exc:
        raise LabelFileError(f"{path.name} is not a readable Parquet file: {exc}") from None
    names = _check_columns(table.column_names, path)
    columns, problems = {}, {}
    for name, original in names.items():
        columns[name] = _column_values(table.column(original), name, problems)
    labels = []
    for index in range(table.num_rows):
        label = from_mapping(f"row {index + 1}", {name: values[index] for name, values in columns.items()}, annotator)
        label.problem = problems.get(index, label.problem)
        labels.append(label)
    return labels


def _column_values(column: pa.ChunkedArray, name: str, problems: dict[int, Problem]) -> list:
    """The Python values of a Parquet column; a cell Python cannot hold (a timestamp past the
    year 9999) is None there and a Problem of its row in `problems`."""
    try:
        return column.to_pylist()
    except (ArithmeticError, ValueError, pa.ArrowException):
        pass
    values = []
    for index in range(len(column)):
        try:
            values.append(column[index].as_py())
        except (ArithmeticError, ValueError, pa.ArrowException) as exc:
            problems.setdefault(index, Problem(f"{name} cannot be read: {exc}"))
            values.append(None)
    return values


def read_label_studio(path: Path, annotator: str | None = None) -> tuple[list[RawLabel], int]:
    """(labels, annotations skipped) of a Label Studio JSON export."""
    try:
        tasks = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LabelFileError(f"{path.name} is not JSON: {exc}") from None
    except RecursionError:
        raise LabelFileError(f"{path.name} nests JSON too deeply to be a Label Studio export") from None
    if (isinstance(tasks, list) and any(is_flat_row(row) for row in tasks)
            and all(isinstance(row, dict) and "data" not in row for row in tasks)):
        labels, skipped = read_tasks([task_of(row) for row in tasks], annotator, name=path.name)
        for number, label in enumerate(labels, start=1):
            label.where = f"row {number}" + (f" (id {str(tasks[number - 1].get('id'))[:40]})"
                                             if tasks[number - 1].get("id") is not None else "")
        return labels, skipped
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
