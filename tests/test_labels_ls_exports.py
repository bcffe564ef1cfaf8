"""Label Studio's flat export types (JSON_MIN, CSV, TSV) import to the same labels as its JSON
export of the same annotations; real Label Studio 1.23 exports (tests/fixtures/label_studio/)
import, and their edited re-export is a revision."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dspo_core.segment import rle
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


# Exports of a real Label Studio 1.23.2 server (tests/test_label_studio_server.py's round trip on the
# test profile's first three instances; image data URIs replaced by "REMOVED"): task 26 ranked
# C, A, D, B through the API with a hallucination, a description and a brush stroke over crop pixels
# [2:6, 3:9], task 27 submitted from the labelling page unreordered with "no hallucination", task 28
# ranked B, C, D, A; then task 26 edited to D, A, C, B, "invented fur and whiskers".
REAL_EXPORTS = Path(__file__).parent / "fixtures" / "label_studio"
REAL_TYPES = {"JSON": "export.json", "JSON_MIN": "export-min.json", "CSV": "export.csv"}
REAL_ORDERS = {26: [2, 0, 3, 1], 27: [0, 1, 2, 3], 28: [1, 2, 3, 0]}


def test_real_label_studio_exports_import_and_an_edit_is_a_revision(segmented, tmp_path):
    root, _ = segmented
    tasks = {task["id"]: task["data"] for task in json.loads((REAL_EXPORTS / "export.json").read_text())}
    expected = {data["instance_id"]: (data["candidate_ids"][REAL_ORDERS[number][0]],
                                      data["candidate_ids"][REAL_ORDERS[number][-1]])
                for number, data in tasks.items()}
    drawn = tasks[26]
    x, y = drawn["crop_box"][:2]
    region = np.zeros(tuple(drawn["frame_size"]), dtype=bool)
    region[y + 2:y + 6, x + 3:x + 9] = True
    reference = None
    for kind, name in REAL_TYPES.items():
        copy = tmp_path / f"store-{kind}"
        shutil.copytree(root, copy)
        store = DatasetStore(str(copy))
        result = CliRunner().invoke(app, ["import", str(REAL_EXPORTS / name), "--store", store.uri])
        assert result.exit_code == 0 and "3 accepted, 0 rejected" in result.stdout, (kind, result.output)
        rows = {row["instance_id"]: row for row in store.read_arrow("human_labels@v1").to_pylist()}
        assert {instance: (row["best"], row["worst"]) for instance, row in rows.items()} == expected, kind
        first = rows[drawn["instance_id"]]
        assert (first["hallucination"], first["description"]) == (True, "invented fur"), kind
        assert not rows[tasks[27]["instance_id"]]["hallucination"], kind
        # Label Studio 1.23 exports only the numeric user id: JSON's completed_by, JSON_MIN/CSV's annotator.
        assert {row["annotator"] for row in rows.values()} == {"1"}, kind
        np.testing.assert_array_equal(rle.decode(first["mask"]), region)
        compared = {instance: {c: row[c] for c in COMPARED} for instance, row in rows.items()}
        assert reference is None or compared == reference, kind
        reference = compared

        edited = CliRunner().invoke(app, ["import", str(REAL_EXPORTS / f"edited-{name}"), "--store", store.uri])
        assert edited.exit_code == 0, (kind, edited.output)
        assert "1 accepted, 0 rejected, 2 duplicate(s), 1 revision(s)" in edited.stdout, (kind, edited.stdout)
        revised = {row["instance_id"]: row for row in store.read_arrow("human_labels@v2").to_pylist()}
        new = revised[drawn["instance_id"]]
        assert (new["best"], new["worst"], new["description"]) == (
            drawn["candidate_ids"][3], drawn["candidate_ids"][1], "invented fur and whiskers"), kind
        assert new["labelled_at"] > first["labelled_at"] and len(revised) == 3, kind
        assert store.manifest("human_labels@v2")["metadata"]["revisions"][0]["id"] == drawn["instance_id"], kind
        store.close()


def test_export_embeds_images_or_references_them_with_a_url_prefix(segmented, tmp_path, monkeypatch):
    root, _ = segmented
    store = DatasetStore(str(root))
    monkeypatch.setattr("pipeline.cli.labels.EMBEDDED_WARN_BYTES", 1000)
    embedded = CliRunner().invoke(app, ["export", "--to", str(tmp_path / "embedded"), "--limit", "2",
                                        "--store", store.uri])
    assert embedded.exit_code == 0, embedded.output
    assert "images embedded in tasks.json" in embedded.stdout and "warning: tasks.json is" in embedded.stderr
    prefix = "/data/local-files/?d=exports/tasks/"
    referenced = CliRunner().invoke(app, ["export", "--to", str(tmp_path / "referenced"), "--limit", "2",
                                          "--url-prefix", prefix, "--store", store.uri])
    assert referenced.exit_code == 0 and "warning" not in referenced.stderr, referenced.output
    store.close()
    for task in json.loads((tmp_path / "embedded" / "tasks.json").read_text()):
        data = task["data"]
        assert all(data[name].startswith("data:image/png;base64,") for name in ("candidate_0", "lq", "hr", "image"))
        assert all("html" not in item for item in data["items"])
        _, _, w, h = data["crop_box"]
        frame_h, frame_w = data["frame_size"]   # a crop is at most twice as long as high (or the frame's size)
        assert h >= min(frame_h, -(-w // 2)) and w >= min(frame_w, -(-h // 2)), data["crop_box"]
    for task in json.loads((tmp_path / "referenced" / "tasks.json").read_text()):
        data = task["data"]
        assert data["candidate_0"] == prefix + data["files"]["candidates"][0] and data["hr"] == prefix + data["files"]["hr"]
        assert (tmp_path / "referenced" / data["files"]["hr"]).is_file()
        assert all(prefix in item["html"] for item in data["items"])
    # Every image fills a flex view of its own width range: in an auto-sized view Label Studio 1.23
    # shrinks it to a few pixels (tests/test_label_studio_server.py measures the real page).
    config = ElementTree.fromstring((tmp_path / "embedded" / "label_config.xml").read_text())
    parents = {child: parent for parent in config.iter() for child in parent}
    images = config.findall(".//Image")
    assert [image.get("name") for image in images] == [f"candidate_{i}" for i in range(4)] + ["lq", "image"]
    for image in images:
        style = parents[image].get("style")
        assert image.get("width") == "100%" and "flex: 1 1 0" in style and "min-width" in style, style
        assert "display: flex" in parents[parents[image]].get("style")
