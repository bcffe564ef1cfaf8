"""Label Studio's flat exports (JSON_MIN, CSV, TSV) -> the task shape of its JSON export, so one
parser (pipeline.labels.label_studio) reads them all.

A flat row (Label Studio 1.23) is one annotation: the task's data fields side by side with the
annotation's `id`, `annotator` (a numeric user id; the flat exports carry no email), `annotation_id`,
`created_at`, `updated_at`, `lead_time`, and one key per control of the labelling config that
`dspo labels export` writes (CONTROLS). JSON_MIN holds the values as JSON; CSV / TSV hold the same
fields, lists and objects as JSON text. Control values:

    rank:          [{"ranker": {"rank": ["c1", "c3", ...]}}]     (a Ranker value, or a list of them)
    hallucination: "hallucination" | {"choices": [...]}
    description:   "text" | ["line", ...]
    region:        [{"format": "rle", "rle": [...], "brushlabels": [...], "original_width": W, "original_height": H}]
"""
from __future__ import annotations

import json

#: control name in the exported config -> its result type in the JSON export.
CONTROLS = {"rank": "ranker", "hallucination": "choices", "description": "textarea", "region": "brushlabels"}
#: the annotation's own fields in a flat row; everything else is the task's data.
ANNOTATION_FIELDS = ("id", "annotator", "annotation_id", "created_at", "updated_at", "lead_time",
                     "agreement", "annotations_results", "predictions_results")


def is_flat_row(row) -> bool:
    """True for one object of a JSON_MIN export: no `data`, and a control of the exported config."""
    return isinstance(row, dict) and "data" not in row and any(name in row for name in CONTROLS)


def is_flat_header(columns) -> bool:
    """True for the header of a Label Studio CSV / TSV export: the ranker control, no best/worst."""
    names = {str(column).strip().lower() for column in columns}
    return "rank" in names and not {"best", "worst"} <= names


def json_cell(cell):
    """A CSV cell as Label Studio wrote it: lists and objects are JSON text; other cells stay text."""
    if isinstance(cell, str) and cell.strip()[:1] in ("[", "{"):
        try:
            return json.loads(cell)
        except json.JSONDecodeError:
            return cell
    return None if cell == "" else cell


def _values(value) -> list:
    return value if isinstance(value, list) else [value]


def _results(name: str, value) -> list[dict]:
    """The JSON-export `result` items of one control's flat value."""
    kind = CONTROLS[name]
    if kind == "ranker":
        wrapped = isinstance(value, list) and value and all(isinstance(v, dict) and "ranker" in v for v in value)
        items = value if wrapped else [value if isinstance(value, dict) and "ranker" in value else {"ranker": value}]
        return [{"type": kind, "from_name": name, "value": item} for item in items]
    if kind == "choices":
        return [{"type": kind, "from_name": name,
                 "value": value if isinstance(value, dict) else {"choices": _values(value)}}]
    if kind == "textarea":
        return [{"type": kind, "from_name": name, "value": value if isinstance(value, dict) else {"text": value}}]
    results = []
    for item in _values(value):
        if isinstance(item, dict):
            results.append({"type": kind, "from_name": name, "value": item,
                            "original_width": item.get("original_width"),
                            "original_height": item.get("original_height")})
        else:
            results.append({"type": kind, "from_name": name, "value": item})
    return results


def task_of(row: dict) -> dict:
    """The JSON-export task of one flat row: {"id", "data", "annotations": [one annotation]}."""
    data = {key: value for key, value in row.items() if key not in CONTROLS and key not in ANNOTATION_FIELDS}
    result = [item for name in CONTROLS if row.get(name) not in (None, "") for item in _results(name, row[name])]
    annotation = {"completed_by": row.get("annotator"), "created_at": row.get("created_at"),
                  "updated_at": row.get("updated_at"), "result": result}
    return {"id": row.get("id"), "data": data, "annotations": [annotation]}
