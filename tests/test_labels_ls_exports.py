"""Label Studio's flat export types (JSON_MIN, CSV, TSV) import to the same labels as its JSON
export of the same annotations."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pipeline.cli.labels import app
from pipeline.config import load_config
from pipeline.stage import run_stage
from pipeline.stages import STAGES
from storage import DatasetStore
from tests.test_labels import brush_result

torch.set_num_threads(1)
COMPARED = ("sample_id", "instance_id", "best", "worst", "hallucination", "description", "annotator", "labelled_at")


@pytest.fixture(scope="module")
def segmented(tmp_path_factory):
    root = tmp_path_factory.mktemp("ls-exports") / "store"
    store = DatasetStore(str(root))
    config = load_config("test")
    for name in ("ingest", "degrade", "sample", "segment"):
        run_stage(STAGES[name], store, config)
    candidates = store.read_arrow("sr_candidates@latest", columns=["candidate_id", "sample_id", "candidate_index"])
    by_sample: dict[str, list[str]] = {}
    for row in sorted(candidates.to_pylist(), key=lambda r: r["candidate_index"]):
        by_sample.setdefault(row["sample_id"], []).append(row["candidate_id"])
    instances = store.read_arrow("instances@latest", columns=["instance_id", "sample_id"]).to_pylist()
    store.close()
    return root, [(row["sample_id"], row["instance_id"], by_sample[row["sample_id"]]) for row in instances[:3]]


def flat_rows(targets) -> list[dict]:
    """JSON_MIN rows of three annotations as Label Studio 1.23 writes them."""
    drawn = np.zeros((30, 40), dtype=bool)
    drawn[5:20, 10:30] = True
    brush = brush_result(drawn)
    rows = []
    for number, (sample, instance, ids) in enumerate(targets):
        row = {"sample_id": sample, "instance_id": instance, "crop_box": [0, 0, 40, 30], "id": 80 + number,
               "annotator": 7 + number, "annotation_id": 90 + number, "created_at": "2025-03-01T10:00:00.000000Z",
               "updated_at": f"2025-03-0{number + 1}T11:00:00.000000Z", "lead_time": 12.5,
               "rank": [{"ranker": {"rank": [ids[1], ids[0], *ids[2:]]}}]}
        if number == 0:
            row["hallucination"] = "hallucination"
            row["description"] = "invented fur"
            row["region"] = [{**brush["value"], "original_width": 40, "original_height": 30}]
        elif number == 1:
            row["hallucination"] = "no hallucination"
        rows.append(row)
    return rows


def json_tasks(rows) -> list[dict]:
    """The same annotations in the JSON export's task shape."""
    tasks = []
    for row in rows:
        result = [{"type": "ranker", "from_name": "rank", "to_name": "candidates", "value": row["rank"][0]}]
        if "hallucination" in row:
            result.append({"type": "choices", "from_name": "hallucination", "value": {"choices": [row["hallucination"]]}})
        if "description" in row:
            result.append({"type": "textarea", "from_name": "description", "value": {"text": [row["description"]]}})
        if "region" in row:
            region = row["region"][0]
            result.append({"type": "brushlabels", "from_name": "region", "original_width": 40, "original_height": 30,
                           "value": {key: region[key] for key in ("format", "rle", "brushlabels")}})
        tasks.append({"id": row["id"], "data": {k: row[k] for k in ("sample_id", "instance_id", "crop_box")},
                      "annotations": [{"completed_by": row["annotator"], "created_at": row["created_at"],
                                       "updated_at": row["updated_at"], "result": result}]})
    return tasks


def write_delimited(path, rows, delimiter: str) -> None:
    columns = sorted({key for row in rows for key in row})
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([json.dumps(row[c]) if isinstance(row.get(c), (list, dict)) else row.get(c, "")
                             for c in columns])


def imported(root, tmp_path, name: str, path) -> dict:
    copy = tmp_path / f"store-{name}"
    shutil.copytree(root, copy)
    store = DatasetStore(str(copy))
    result = CliRunner().invoke(app, ["import", str(path), "--store", store.uri])
    assert result.exit_code == 0, result.output
    assert "3 accepted, 0 rejected" in result.stdout, result.stdout
    rows = {row["instance_id"]: row for row in store.read_arrow("human_labels@v1").to_pylist()}
    store.close()
    return rows


def test_json_min_csv_and_tsv_import_like_the_json_export(segmented, tmp_path):
    root, targets = segmented
    rows = flat_rows(targets)
    (tmp_path / "export.json").write_text(json.dumps(json_tasks(rows)))
    (tmp_path / "export-min.json").write_text(json.dumps(rows))
    write_delimited(tmp_path / "export.csv", rows, ",")
    write_delimited(tmp_path / "export.tsv", rows, "\t")
    reference = imported(root, tmp_path, "json", tmp_path / "export.json")
    first = reference[targets[0][1]]
    assert (first["best"], first["worst"], first["hallucination"], first["description"], first["annotator"]) == (
        targets[0][2][1], targets[0][2][-1], True, "invented fur", "7")
    assert first["mask"] is not None and reference[targets[1][1]]["mask"] is None
    for name in ("export-min.json", "export.csv", "export.tsv"):
        found = imported(root, tmp_path, name, tmp_path / name)
        assert set(found) == set(reference), name
        for instance, row in reference.items():
            assert {c: found[instance][c] for c in COMPARED} == {c: row[c] for c in COMPARED}, name
            assert found[instance]["mask"] == row["mask"], name
