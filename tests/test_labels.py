"""Human labels: CSV / Parquet / Label Studio import into `human_labels`, validation against a
store built by the real stages (test profile), and the labelling-task export round trip."""
from __future__ import annotations

import base64
import csv
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from dspo_core.pairs import HumanLabel, InstanceRewards, make_pairs
from dspo_core.segment import rle
from pipeline.cli.labels import app
from pipeline.config import load_config
from pipeline.labels import decode_rle, import_labels, import_rows, label_id
from pipeline.labels.export import OUTLINE
from pipeline.schemas import HUMAN_LABELS
from pipeline.stage import run_stage
from pipeline.stages import STAGES
from storage import DatasetStore

COLUMNS = ["sample_id", "instance_id", "best", "worst", "hallucination", "description", "annotator"]


@dataclass
class World:
    root: Path
    samples: list[str]                    # sorted sample ids
    candidates: dict[str, list[str]]      # sample -> candidate ids by candidate_index
    instances: dict[str, list[dict]]      # sample -> instance rows by index


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    """ingest -> degrade -> sample -> segment with the test profile, once per module."""
    root = tmp_path_factory.mktemp("labels") / "store"
    store = DatasetStore(str(root))
    config = load_config("test")
    for name in ("ingest", "degrade", "sample", "segment"):
        run_stage(STAGES[name], store, config)
    candidates: dict[str, list[str]] = {}
    for row in sorted(store.read_arrow("sr_candidates@latest", columns=["candidate_id", "sample_id",
                                                                         "candidate_index"]).to_pylist(),
                      key=lambda r: r["candidate_index"]):
        candidates.setdefault(row["sample_id"], []).append(row["candidate_id"])
    instances: dict[str, list[dict]] = {}
    for row in sorted(store.read_arrow("instances@latest", columns=["instance_id", "sample_id", "index", "bbox",
                                                                     "mask"]).to_pylist(),
                      key=lambda r: r["index"]):
        instances.setdefault(row["sample_id"], []).append(row)
    store.close()
    return World(root, sorted(candidates), candidates, instances)


@pytest.fixture
def store(world, tmp_path):
    """A private copy of the module's store, so each test starts without human_labels."""
    shutil.copytree(world.root, tmp_path / "store")
    opened = DatasetStore(str(tmp_path / "store"))
    yield opened
    opened.close()


def invoke(store: DatasetStore, *args: str):
    return CliRunner().invoke(app, [*args, "--store", store.uri])


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({column: row.get(column, "") for column in COLUMNS})
    return path


def good_rows(world: World, count: int, annotator: str = "alice", start: int = 0) -> list[dict]:
    """`count` valid labels on distinct instances (worst = last candidate, best = first)."""
    rows = []
    pairs = [(s, i) for s in world.samples for i in world.instances[s]]
    for sample, instance in pairs[start:start + count]:
        ids = world.candidates[sample]
        rows.append({"sample_id": sample, "instance_id": instance["instance_id"], "best": ids[0],
                     "worst": ids[-1], "hallucination": "no", "description": "", "annotator": annotator})
    return rows


def rejected_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("rejected ")]


def test_csv_import_publishes_v1(world, store, tmp_path):
    s0, s1 = world.samples[:2]
    c0, c1 = world.candidates[s0], world.candidates[s1]
    i0 = world.instances[s0][0]["instance_id"]
    rows = [
        {"sample_id": s0, "instance_id": i0, "best": c0[1], "worst": c0[2], "hallucination": "YES",
         "description": "invented fur", "annotator": "alice"},
        {"sample_id": s1, "instance_id": "", "best": c1[0], "worst": c1[3], "hallucination": "0"},
        {"sample_id": s0, "instance_id": i0, "best": c0[0], "worst": c0[3], "hallucination": "true",
         "annotator": "bob"},
    ]
    result = invoke(store, "import", str(write_csv(tmp_path / "labels.csv", rows)), "--annotator", "carol")
    assert result.exit_code == 0, result.output
    assert "human_labels@v1" in result.stdout and "3 accepted, 0 rejected" in result.stdout
    assert "1 hallucination flag(s) without a description" in result.stdout
    table = store.read_arrow("human_labels@v1")
    assert table.schema.names == HUMAN_LABELS.names
    got = {(r["annotator"], r["sample_id"], r["instance_id"]): r for r in table.to_pylist()}
    assert set(got) == {("alice", s0, i0), ("carol", s1, None), ("bob", s0, i0)}
    alice = got[("alice", s0, i0)]
    assert (alice["best"], alice["worst"], alice["hallucination"], alice["description"]) == (c0[1], c0[2], True,
                                                                                             "invented fur")
    assert alice["label_id"] == label_id("alice", s0, i0) and alice["source"] == "csv" and alice["mask"] is None
    assert got[("carol", s1, None)]["hallucination"] is False
    manifest = store.manifest("human_labels@v1")
    assert manifest["inputs"] == ["sr_candidates@v1", "instances@v1"]
    assert manifest["metadata"]["source_file"] == "labels.csv"
    assert manifest["metadata"]["counts"]["read"] == 3 and manifest["metadata"]["counts"]["accepted"] == 3


def test_bad_rows_are_reported_and_good_rows_kept(world, store, tmp_path):
    good = good_rows(world, 45) + good_rows(world, 45, annotator="bob")  # 10% bad
    s0, s1 = world.samples[:2]
    i0, i1 = world.instances[s0][0]["instance_id"], world.instances[s1][0]["instance_id"]
    c0, c1 = world.candidates[s0], world.candidates[s1]
    first = good[0]
    bad = [  # (row, offending id, reason fragment)
        ({**first, "sample_id": "nosuchsample"}, "nosuchsample", "unknown sample"),
        ({**first, "best": "nosuchcandidate"}, "nosuchcandidate", "unknown best candidate"),
        ({**first, "worst": c1[1]}, c1[1], f"worst candidate belongs to sample {s1}"),
        ({**first, "worst": first["best"]}, first["best"], "same candidate"),
        ({**first, "best": c0[2]}, i0, (f"conflicts with the label by alice in line 2: best {c0[0]!r} there, "
                                        f"{c0[2]!r} here")),
        ({**first, "instance_id": "nosuchinstance"}, "nosuchinstance", "unknown instance"),
        ({**first, "instance_id": i1}, i1, f"instance of sample {s1}"),
        ({**first, "hallucination": "maybe"}, i0, "hallucination must be true/false"),
        ({**first, "annotator": "", "instance_id": world.instances[s0][1]["instance_id"]},
         world.instances[s0][1]["instance_id"], "no annotator"),
    ]
    # An exact repeat (blank description written as spaces) is a duplicate: kept once, not rejected.
    rows = good[:1] + [{**first, "description": "  "}] + [row for row, _, _ in bad] + good[1:]
    result = invoke(store, "import", str(write_csv(tmp_path / "mixed.csv", rows)))
    assert result.exit_code == 0, result.output
    lines = rejected_lines(result)
    assert len(lines) == len(bad)
    for number, (line, (_, item, reason)) in enumerate(zip(lines, bad), start=4):
        assert line.startswith(f"rejected line {number}: {item}: "), line
        assert reason in line, (line, reason)
    table = store.read_arrow("human_labels@latest").to_pylist()
    assert len(table) == len(good)
    assert {(r["annotator"], r["instance_id"]) for r in table} == {(r["annotator"], r["instance_id"]) for r in good}
    metadata = store.manifest("human_labels@v1")["metadata"]
    assert metadata["counts"] == {"read": len(rows), "accepted": len(good), "rejected": len(bad), "duplicates": 1,
                                  "revisions": 0, "skipped": 0, "hallucination_without_description": 0, "total": len(good)}
    assert [item["id"] for item in metadata["rejected"]] == [item for _, item, _ in bad]
    assert metadata["duplicates"] == [{"where": "line 3", "id": i0,
                                       "reason": "duplicate of the label by alice in line 2"}]


def test_second_import_adds_to_the_first(world, store, tmp_path):
    first = good_rows(world, 5)
    assert invoke(store, "import", str(write_csv(tmp_path / "a.csv", first))).exit_code == 0
    s0 = first[0]["sample_id"]
    contradiction = {**first[0], "best": world.candidates[s0][1]}
    second = good_rows(world, 4, start=5) + [contradiction]
    result = invoke(store, "import", str(write_csv(tmp_path / "b.csv", second)))
    assert result.exit_code == 0, result.output
    [line] = rejected_lines(result)
    standing = label_id("alice", s0, first[0]["instance_id"])
    assert line == (f"rejected line 6: {first[0]['instance_id']}: conflicts with the label by alice in human_labels@v1 "
                    f"(label {standing}): best {first[0]['best']!r} there, {contradiction['best']!r} here")
    v1, v2 = store.read_arrow("human_labels@v1").to_pylist(), store.read_arrow("human_labels@v2").to_pylist()
    assert v2[:5] == v1 and len(v2) == 9
    assert {r["instance_id"] for r in v2[5:]} == {r["instance_id"] for r in second[:4]}
    assert store.manifest("human_labels@v2")["inputs"] == ["sr_candidates@v1", "instances@v1", "human_labels@v1"]


def test_importing_the_same_labels_again_changes_nothing(world, store, tmp_path):
    rows = good_rows(world, 4)
    rows[0].update(hallucination="yes", description="invented fur")
    region = next(i for s in world.samples for i in world.instances[s] if i["instance_id"] == rows[2]["instance_id"])
    rows[2]["mask"] = json.dumps(region["mask"])
    assert import_rows(store, rows).ref == "human_labels@v1"
    again = import_rows(store, [{**rows[0], "description": " invented fur "}, *rows[1:]])
    assert (again.ref, again.accepted, again.rejected, again.total) == (None, 0, [], 4)
    assert [(item.where, item.id) for item in again.duplicates] == [
        (f"row {number}", row["instance_id"]) for number, row in enumerate(rows, start=1)]
    standing = label_id("alice", rows[0]["sample_id"], rows[0]["instance_id"])
    assert again.duplicates[0].reason == f"duplicate of the label by alice in human_labels@v1 (label {standing})"
    assert store.versions("human_labels") == [1]
    # Another hallucination flag or description from the same annotator conflicts.
    changed = import_rows(store, [{**rows[0], "description": "invented feathers"}, {**rows[1], "hallucination": "yes"},
                                  {**rows[2], "mask": ""}])
    assert changed.ref is None and changed.duplicates == []
    assert [item.reason.split(": ", 1)[1] for item in changed.rejected] == [
        "description 'invented fur' there, 'invented feathers' here", "hallucination False there, True here",
        "a mask there only"]


def test_importer_and_make_pairs_apply_the_same_label_rules(world, store):
    """The same labels through both paths (dspo_core.label_rules): the same ones stand, the
    same ones are duplicates, the same ones are rejected, with the same reasons."""
    sample = world.samples[0]
    instance = world.instances[sample][0]["instance_id"]
    ids = world.candidates[sample]

    def row(annotator: str, best: int, worst: int, **extra) -> dict:
        return {"sample_id": sample, "instance_id": instance, "best": ids[best], "worst": ids[worst],
                "hallucination": False, "description": "", "annotator": annotator, **extra}

    rows = [row("alice", 0, 3), row("alice", 0, 3, description="  "), row("alice", 1, 3),
            row("alice", 0, 3, hallucination=True, description="fur"),
            row("bob", 0, 3, hallucination=True, description="fur"),
            row("bob", 0, 3, hallucination=True, description=" fur "),
            row("bob", 0, 3, hallucination=True, description="feathers"), row("carol", 2, 2)]
    imported = import_rows(store, rows)

    def position(where: str) -> str:   # the importer's "row 3" is make_pairs' labels[2]
        return re.sub(r"\brow (\d+)", lambda match: f"labels[{int(match[1]) - 1}]", where)

    labels = [HumanLabel(**item) for item in rows]
    rewards = InstanceRewards(sample_id=sample, instance_id=instance, weight=1.0,
                              rewards={candidate: float(rank) for rank, candidate in enumerate(ids)})
    (pair,), paired = make_pairs([rewards], labels)
    assert ([position(f"{item.where}: {item.reason}") for item in imported.duplicates]
            == [f"labels[{item.position}]: {item.reason}" for item in paired.duplicate_labels]
            == ["labels[1]: duplicate of the label by alice in labels[0]",
                "labels[5]: duplicate of the label by bob in labels[4]"])
    assert ([position(f"{item.where}: {item.reason}") for item in imported.rejected]
            == [f"labels[{item.position}]: {item.reason}" for item in paired.label_errors])
    assert [item.code for item in paired.label_errors] == ["conflicting"] * 3 + ["best_equals_worst"]
    standing = [(r["annotator"], r["best"], r["worst"], r["hallucination"], r["description"])
                for r in imported.labels.to_pylist()]
    assert standing == [("alice", ids[0], ids[3], False, ""), ("bob", ids[0], ids[3], True, "fur")]
    assert (pair.annotators, pair.winner_id, pair.loser_id, pair.human_description) == (
        ["alice", "bob"], ids[0], ids[3], "fur")


def test_parquet_import(world, store, tmp_path):
    rows = good_rows(world, 3)
    for row in rows:
        row["hallucination"] = True
        row["description"] = "extra windows"
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "labels.parquet")
    dry = import_labels(store, tmp_path / "labels.parquet", dry_run=True)
    assert (dry.ref, dry.accepted) == (None, 3) and "human_labels" not in store.datasets()
    report = import_labels(store, tmp_path / "labels.parquet")
    assert (report.format, report.ref, report.accepted, report.rejected) == ("parquet", "human_labels@v1", 3, [])
    table = store.read_arrow("human_labels@v1").to_pylist()
    assert all(r["hallucination"] and r["source"] == "parquet" for r in table)


def test_all_bad_file_exits_1(world, store, tmp_path):
    rows = [{**row, "best": "nosuch"} for row in good_rows(world, 3)]
    result = invoke(store, "import", str(write_csv(tmp_path / "bad.csv", rows)))
    assert result.exit_code == 1
    assert len(rejected_lines(result)) == 3 and "nothing published" in result.stderr
    assert "human_labels" not in store.datasets()


def test_unusable_files_exit_2(store, tmp_path):
    result = invoke(store, "import", str(tmp_path / "missing.csv"))
    assert result.exit_code == 2 and result.stderr.startswith("error: no such file")
    (tmp_path / "cols.csv").write_text("sample_id,best\nx,y\n")
    result = invoke(store, "import", str(tmp_path / "cols.csv"))
    assert result.exit_code == 2 and "missing column(s) worst" in result.stderr
    (tmp_path / "broken.json").write_text("[{")
    assert invoke(store, "import", str(tmp_path / "broken.json")).exit_code == 2


# ----------------------------------------------------------------- Label Studio
def ls_encode(values, word_size: int = 8, rle_sizes=(3, 4, 8, 16)) -> list[int]:
    """Label Studio's brush RLE of a flat array: the inverse of decode_rle, written independently."""
    values = [int(v) for v in values]
    bits = [f"{len(values):032b}", f"{word_size - 1:05b}", *(f"{size - 1:04b}" for size in rle_sizes)]
    longest = 2 ** max(rle_sizes)

    def run_length(count: int) -> str:
        selector = next(i for i, size in enumerate(rle_sizes) if count - 1 < 2 ** size)
        return f"{selector:02b}" + format(count - 1, f"0{rle_sizes[selector]}b")

    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[i] and j + 1 - i < longest:
            j += 1
        if j > i:
            bits += ["1", run_length(j - i + 1), format(values[i], f"0{word_size}b")]
            i = j + 1
            continue
        block = []
        while i < len(values) and len(block) < longest and not (i + 1 < len(values) and values[i + 1] == values[i]):
            block.append(values[i])
            i += 1
        bits += ["0", run_length(len(block)), *(format(v, f"0{word_size}b") for v in block)]
    text = "".join(bits)
    text += "0" * (-len(text) % 8)
    return [int(text[k:k + 8], 2) for k in range(0, len(text), 8)]


def brush_result(mask: np.ndarray) -> dict:
    """A brushlabels result of `mask` as Label Studio writes it (RGBA, alpha = the region)."""
    rgba = np.zeros((*mask.shape, 4), dtype=np.uint8)
    rgba[mask] = (255, 0, 255, 255)
    return {"type": "brushlabels", "from_name": "region", "to_name": "image",
            "original_width": mask.shape[1], "original_height": mask.shape[0],
            "value": {"format": "rle", "rle": ls_encode(rgba.ravel()), "brushlabels": ["hallucination"]}}


def test_ls_rle_decoder():
    rng = np.random.default_rng(0)
    values = np.concatenate([np.zeros(1000), rng.integers(0, 256, 300), np.full(70000, 7), [1, 1, 2]]).astype(int)
    np.testing.assert_array_equal(decode_rle(ls_encode(values)), values)
    mask = np.zeros((37, 53), dtype=bool)
    mask[5:20, 10:40] = True
    mask[30, 50] = True
    from pipeline.labels import brush_mask

    np.testing.assert_array_equal(brush_mask(brush_result(mask)["value"]["rle"], 53, 37), mask)
    with pytest.raises(ValueError, match="expected"):
        decode_rle(ls_encode(values), expected=5)
    with pytest.raises(ValueError, match="truncated"):
        decode_rle(ls_encode(values)[:40])


def annotation(*results, who="ann@example.org", **extra) -> dict:
    return {"completed_by": who, "result": list(results), "created_at": "2025-01-02T03:04:05Z", **extra}


def ranker(value) -> dict:
    return {"type": "ranker", "from_name": "rank", "to_name": "candidates", "value": {"ranker": value}}


def test_label_studio_import(world, store, tmp_path):
    pairs = [(s, row["instance_id"]) for s in world.samples for row in world.instances[s]][:9]
    inst = [instance for _, instance in pairs]
    cands = [world.candidates[sample] for sample, _ in pairs]
    data = [{"sample_id": sample, "instance_id": instance} for sample, instance in pairs]
    frame = tuple(world.instances[pairs[5][0]][0]["mask"]["size"])
    drawn = np.zeros((60, 80), dtype=bool)           # drawn on a 2x-zoomed 40x30 crop at (20, 15)
    drawn[10:30, 20:60] = True
    expected_crop = np.zeros(tuple(world.instances[pairs[4][0]][0]["mask"]["size"]), dtype=bool)
    expected_crop[20:30, 30:50] = True
    whole = np.zeros(frame, dtype=bool)
    yy, xx = np.mgrid[:frame[0], :frame[1]]
    whole[(yy - 60) ** 2 + (xx - 50) ** 2 < 300] = True
    hallucination = {"type": "choices", "from_name": "hallucination", "value": {"choices": ["hallucination"]}}
    c0, c1, c2, c3, c4, c5 = cands[:6]
    tasks = [
        {"id": 11, "data": data[0], "annotations": [annotation(
            ranker([c0[2], c0[0], c0[1], c0[3]]), hallucination,
            {"type": "textarea", "from_name": "description", "value": {"text": ["fur that is not there"]}},
            who={"id": 7, "email": "ann@example.org"})]},
        {"data": data[1], "annotations": [annotation(
            ranker({"rank": [c1[1], c1[2], c1[3], c1[0]]}),
            {"type": "choices", "from_name": "hallucination", "value": {"choices": ["no hallucination"]}}, who=12)]},
        {"data": data[2], "annotations": [annotation(ranker({"best": [c2[3]], "worst": [c2[2]], "_": c2[:2]}))]},
        {"data": {**data[3], "left_candidate_id": c3[0], "right_candidate_id": c3[1]}, "annotations": [annotation(
            {"type": "pairwise", "from_name": "pw", "to_name": "left,right", "value": {"selected": "right"}})]},
        {"data": {**data[4], "crop_box": [20, 15, 40, 30]}, "annotations": [annotation(
            ranker(c4), brush_result(drawn))]},
        {"data": data[5], "annotations": [annotation(ranker([c5[1], c5[0]]), brush_result(whole))]},
        {"data": data[6], "annotations": [annotation(ranker(cands[6][:2]), was_cancelled=True)]},
        {"data": data[7]},
        {"data": data[8], "annotations": [annotation(hallucination)]},
    ]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks))
    result = invoke(store, "import", str(path))
    assert result.exit_code == 0, result.output
    assert "6 accepted, 1 rejected, 2 skipped" in result.stdout
    assert rejected_lines(result) == [
        f"rejected task 9: {inst[8]}: no ranker or pairwise result: nothing says which candidate is best"]
    rows = {r["instance_id"]: r for r in store.read_arrow("human_labels@v1").to_pylist()}
    assert set(rows) == set(inst[:6])
    first = rows[inst[0]]
    assert (first["best"], first["worst"], first["hallucination"], first["description"], first["annotator"],
            first["source"]) == (c0[2], c0[3], True, "fur that is not there", "ann@example.org", "label-studio")
    assert first["labelled_at"].isoformat() == "2025-01-02T03:04:05+00:00"
    assert (rows[inst[1]]["best"], rows[inst[1]]["worst"], rows[inst[1]]["annotator"]) == (c1[1], c1[0], "12")
    assert not rows[inst[1]]["hallucination"]
    assert (rows[inst[2]]["best"], rows[inst[2]]["worst"]) == (c2[3], c2[2])
    assert (rows[inst[3]]["best"], rows[inst[3]]["worst"]) == (c3[1], c3[0])
    np.testing.assert_array_equal(rle.decode(rows[inst[4]]["mask"]), expected_crop)
    np.testing.assert_array_equal(rle.decode(rows[inst[5]]["mask"]), whole)
    assert rows[inst[2]]["mask"] is None


# ----------------------------------------------------------------- export
def test_export_round_trip(world, store, tmp_path):
    folder = tmp_path / "tasks"
    result = invoke(store, "export", "--to", str(folder), "--limit", "5")
    assert result.exit_code == 0, result.output
    tasks = json.loads((folder / "tasks.json").read_text())
    assert (folder / "label_config.xml").read_text().count("<Image name=\"candidate_") == 4
    expected = [(s, row["instance_id"]) for s in world.samples for row in world.instances[s]][:5]
    assert [(t["data"]["sample_id"], t["data"]["instance_id"]) for t in tasks] == expected
    from PIL import Image

    for task in tasks:
        data = task["data"]
        sample = data["sample_id"]
        assert data["candidate_ids"] == world.candidates[sample] == [item["id"] for item in data["items"]]
        x, y, w, h = data["crop_box"]
        size = (w * data["zoom"], h * data["zoom"])
        paths = data["files"]["candidates"] + [data["files"]["lq"], data["files"]["hr"]]
        shown = [data[f"candidate_{i}"] for i in range(4)] + [data["lq"], data["hr"]]
        assert not any(p.startswith("/") for p in paths)
        for relative, uri in zip(paths, shown):
            image = Image.open(folder / relative)
            assert image.size == size and image.mode == "RGB"
            assert (np.asarray(image) == OUTLINE).all(axis=2).any()  # the mask outline is drawn
            # The image itself is embedded in the task, so Label Studio needs no storage to show it.
            assert uri == "data:image/png;base64," + base64.b64encode((folder / relative).read_bytes()).decode()
    # Simulate an annotator in Label Studio: rank reversed, flag and draw on the first task.
    drawn_task = tasks[0]["data"]
    x, y, w, h = drawn_task["crop_box"]
    zoom = drawn_task["zoom"]
    drawn = np.zeros((h * zoom, w * zoom), dtype=bool)
    drawn[: 2 * zoom, : 3 * zoom] = True
    for index, task in enumerate(tasks):
        results = [ranker({"rank": task["data"]["candidate_ids"][::-1]})]
        if index == 0:
            results += [{"type": "choices", "from_name": "hallucination", "value": {"choices": ["hallucination"]}},
                        brush_result(drawn)]
        task["annotations"] = [annotation(*results)]
    (folder / "done.json").write_text(json.dumps(tasks))
    result = invoke(store, "import", str(folder / "done.json"))
    assert result.exit_code == 0, result.output
    rows = store.read_arrow("human_labels@v1").to_pylist()
    assert [(r["sample_id"], r["instance_id"]) for r in rows] == expected
    assert all((r["best"], r["worst"]) == (world.candidates[r["sample_id"]][-1], world.candidates[r["sample_id"]][0])
               for r in rows)
    full = np.zeros(tuple(drawn_task["frame_size"]), dtype=bool)
    full[y:y + 2, x:x + 3] = True
    np.testing.assert_array_equal(rle.decode(rows[0]["mask"]), full)
    assert rows[0]["hallucination"] and sum(r["hallucination"] for r in rows) == 1


def test_export_needs_lq_pairs_in_the_candidates_lineage(store, tmp_path):
    bare = store.publish("sr_candidates", store.read_arrow("sr_candidates@v1"))  # no inputs: no lineage
    result = invoke(store, "export", "--to", str(tmp_path / "tasks"), "--candidates", bare)
    assert result.exit_code == 2 and f"{bare} has no lq_pairs in its lineage" in result.stderr
    assert not (tmp_path / "tasks").exists()


def test_folder_export_template_imports(world, store, tmp_path):
    folder = tmp_path / "folder"
    assert invoke(store, "export", "--to", str(folder), "--format", "folder", "--limit", "3").exit_code == 0
    with open(folder / "tasks.csv", newline="") as handle:
        template = list(csv.DictReader(handle))
    assert list(template[0])[:7] == COLUMNS and len(template) == 3
    for row in template:
        letters = dict(item.split("=") for item in row["candidates"].split())
        row.update(best=letters["B"], worst=letters["D"], annotator="dora")
        assert (folder / row["images"] / "hr.png").is_file()
    with open(folder / "filled.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(template[0]))
        writer.writeheader()
        writer.writerows(template)
    report = import_labels(store, folder / "filled.csv")
    assert report.accepted == 3 and not report.rejected
    assert invoke(store, "export", "--to", str(folder)).exit_code == 2  # not empty


def test_concurrent_import_is_merged(world, store):
    assert import_rows(store, good_rows(world, 2)).ref == "human_labels@v1"
    target = good_rows(world, 1, annotator="bob", start=2)[0]
    sample = target["sample_id"]
    theirs = [target, *good_rows(world, 1, annotator="bob", start=3)]
    ours = [{**target, "best": world.candidates[sample][1]}, *good_rows(world, 1, annotator="carl", start=4),
            theirs[1]]
    real_publish, raced = store.publish, []

    def racing_publish(name, data, **kwargs):
        if name == "human_labels" and not raced:
            raced.append(True)
            other = DatasetStore(store.uri)
            assert import_rows(other, theirs).ref == "human_labels@v2"
            other.close()
        return real_publish(name, data, **kwargs)

    store.publish = racing_publish
    report = import_rows(store, ours)
    assert report.ref == "human_labels@v4" and report.merged == ["human_labels@v2"]
    assert report.accepted == 1 and [item.where for item in report.rejected] == ["(merge)"]
    assert report.rejected[0].reason.startswith("conflicts with the label by bob in a concurrently published version")
    bobs = label_id("bob", theirs[1]["sample_id"], theirs[1]["instance_id"])
    assert [item.reason for item in report.duplicates] == [
        f"duplicate of the label by bob in a concurrently published version (label {bobs})"]
    latest = store.read_arrow("human_labels@latest").to_pylist()
    keys = {(r["annotator"], r["instance_id"]): r["best"] for r in latest}
    assert len(latest) == 5 and keys[("bob", target["instance_id"])] == target["best"]
    assert ("carl", ours[1]["instance_id"]) in keys


# ----------------------------------------------------------------- malformed values, per format
OUT_OF_RANGE = "lies outside the years 1-9999 in UTC"
BIG = "x" * (1 << 20)                      # 1 MB: past csv's default field limit of 128 KiB
# (column, bad cell, what the reason must say) for the text formats (CSV, TSV).
TEXT_CELLS = [
    ("labelled_at", "0001-01-01T00:00:00+01:00", f"labelled_at '0001-01-01T00:00:00+01:00' {OUT_OF_RANGE}"),
    ("labelled_at", "9999-12-31T23:30:00-01:00", OUT_OF_RANGE),
    ("labelled_at", "yesterday", "labelled_at is not an ISO 8601 time: 'yesterday'"),
    ("hallucination", "maybe", "hallucination must be true/false/1/0/yes/no, got 'maybe'"),
    ("mask", "{not json", "mask is not a COCO RLE"),
    ("mask", "[1, 2]", "mask is not a COCO RLE"),
    ("mask", '{"size": [2, 2]}', "mask is not a COCO RLE"),
    ("mask", '{"size": [2, 2], "counts": [1, 2]}', "RLE counts sum to 3"),
    ("mask", '{"size": [2, 2], "counts": "\\u00e9"}', "mask is not a COCO RLE"),
    ("description", "y" * 2001, "description is 2001 characters long; the limit is 2000"),
    ("description", BIG, f"description is {len(BIG)} characters long; the limit is 2000"),
]
# (column, arrow type, bad value, what the reason must say): the other rows hold null there.
PARQUET_CELLS = [
    ("labelled_at", pa.timestamp("s", tz="UTC"), 253402300800 * 2, "labelled_at cannot be read"),
    ("labelled_at", pa.string(), "0001-01-01T00:00:00+01:00", OUT_OF_RANGE),
    ("labelled_at", pa.int64(), 5, "labelled_at is not an ISO 8601 time: '5'"),
    ("hallucination", pa.int64(), 7, "hallucination must be true/false/1/0/yes/no, got '7'"),
    ("hallucination", pa.string(), "maybe", "hallucination must be"),
    ("description", pa.string(), BIG, f"description is {len(BIG)} characters long; the limit is 2000"),
    ("description", pa.list_(pa.string()), ["fur"], "description must be text, got list"),
    ("annotator", pa.struct([("id", pa.int64())]), {"id": 3}, "annotator must be text, got dict"),
    ("mask", pa.struct([("size", pa.list_(pa.int64())), ("counts", pa.list_(pa.int64()))]),
     {"size": [2, 2], "counts": [1, 2]}, "RLE counts sum to 3"),
    ("mask", pa.string(), "{not json", "mask is not a COCO RLE"),
]


def check_one_bad_row(store, path: Path, where: str, fragment: str) -> None:
    """`path` holds a good label, a bad one at `where`, and another good one: the bad one is
    rejected with a reason containing `fragment`, the good ones are kept."""
    report = import_labels(store, path, annotator="alice", dry_run=True)
    assert report.accepted == 2, (path.name, fragment, report.rejected)
    assert [item.where for item in report.rejected] == [where], (fragment, report.rejected)
    reason = report.rejected[0].reason
    assert fragment in reason and len(reason) < 300, (fragment, reason[:400])


@pytest.mark.parametrize("delimiter", [",", "\t"], ids=["csv", "tsv"])
def test_malformed_text_cells_are_rejected_rows(world, store, tmp_path, delimiter):
    columns = [*COLUMNS, "mask", "labelled_at", "notes"]
    for number, (column, cell, fragment) in enumerate(TEXT_CELLS):
        rows = good_rows(world, 3, start=number * 3)
        rows[1][column] = cell
        rows[2]["notes"] = BIG                 # a long field in a column the importer ignores is no problem
        path = tmp_path / f"case{number}.{'csv' if delimiter == ',' else 'tsv'}"
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, delimiter=delimiter)
            writer.writeheader()
            writer.writerows({name: row.get(name, "") for name in columns} for row in rows)
        check_one_bad_row(store, path, "line 3", fragment)


def test_malformed_parquet_values_are_rejected_rows(world, store, tmp_path):
    for number, (column, kind, value, fragment) in enumerate(PARQUET_CELLS):
        rows = good_rows(world, 3, start=number * 3)
        for row in rows:
            row.pop("hallucination")
            row[column] = None
        rows[1][column] = value
        base = pa.Table.from_pylist([{name: row[name] for name in COLUMNS if name not in (column, "hallucination")}
                                     for row in rows])
        table = base.append_column(pa.field(column, kind), pa.array([row[column] for row in rows], kind))
        pq.write_table(table, tmp_path / f"case{number}.parquet")
        check_one_bad_row(store, tmp_path / f"case{number}.parquet", "row 2", fragment)


def ls_task(world, start: int, *results, **annotation_fields) -> dict:
    """A Label Studio task on the `start`-th instance; without results, a valid ranking."""
    sample, instance = [(s, i["instance_id"]) for s in world.samples for i in world.instances[s]][start]
    ids = world.candidates[sample]
    chosen = results or (ranker(ids),)
    return {"data": {"sample_id": sample, "instance_id": instance},
            "annotations": [annotation(*chosen, **annotation_fields)]}


def test_malformed_label_studio_values_are_rejected_rows(world, store, tmp_path):
    ids = world.candidates[world.samples[0]]
    choices = {"type": "choices", "from_name": "hallucination"}
    bad_tasks = [  # (what replaces part of a good task, what the reason must say)
        ({"annotations": 5}, "annotations must be a list, got int '5'"),
        ({"annotations": "abc"}, "annotations must be a list, got str 'abc'"),
        ({"annotations": [5]}, "annotation 1 is not an object: '5'"),
        ({"annotations": [annotation(ranker(ids), was_cancelled="perhaps")]}, "was_cancelled must be true/false"),
        ({"annotations": [{"result": 5}]}, "result must be a list, got int '5'"),
        ({"annotations": [{"result": [5]}]}, "result 1 is not an object"),
        ({"annotations": [annotation({"type": "ranker", "value": "oops"})]},
         "result 1 ('ranker'): value must be an object, got str 'oops'"),
        ({"annotations": [annotation({"type": 5, "value": {}})]}, "result 1 ('5'): type must be text"),
        ({"annotations": [annotation(ranker(5))]}, "ranker value is not a list of candidate ids"),
        ({"annotations": [annotation(ranker(ids[:1]))]}, "ranker ranks 1 candidate(s)"),
        ({"annotations": [annotation(ranker({"best": ids[0], "worst": ids[1]}))]}, "must be lists"),
        ({"annotations": [annotation(ranker([{"id": ids[0]}, ids[1]]))]}, "ranker item must be text, got dict"),
        ({"annotations": [annotation(ranker(ids), {"type": "textarea", "value": {"text": 5}})]},
         "result 2 ('textarea'): text must be a string or a list of strings, got int"),
        ({"annotations": [annotation(ranker(ids), {"type": "textarea", "value": {"text": "z" * 2001}})]},
         "textarea text is 2001 characters long; the limit is 2000"),
        ({"annotations": [annotation(ranker(ids), {"type": "textarea", "value": {"text": ["z" * 1000, "z" * 1000]}})]},
         "textarea text is 2001 characters long"),
        ({"annotations": [annotation(ranker(ids), {**choices, "value": {"choices": ["maybe"]}})]},
         "unknown hallucination choice 'maybe'"),
        ({"annotations": [annotation(ranker(ids), {**choices, "value": {"choices": 5}})]}, "choices must be a list"),
        ({"annotations": [annotation(ranker(ids), updated_at="0001-01-01T00:00:00+01:00")]},
         f"updated_at '0001-01-01T00:00:00+01:00' {OUT_OF_RANGE}"),
        ({"annotations": [annotation(ranker(ids), created_at=5)]}, "created_at is not an ISO 8601 time: '5'"),
        ({"annotations": [annotation(ranker(ids), who=[1, 2])]}, "completed_by must be text, got list"),
        ({"annotations": [annotation({"type": "pairwise", "to_name": "left,right", "value": {"selected": ["left"]}})]},
         "selected must be text, got list"),
        ({"annotations": [annotation(ranker(ids), {**brush_result(np.ones((2, 2), bool)), "original_width": float("inf")})]},
         "result 2 ('brushlabels'): brush mask"),
        ({"annotations": [annotation(ranker(ids), {**brush_result(np.ones((2, 2), bool)), "value": {"rle": "abc"}})]},
         "brush mask"),
        ({"data": {"sample_id": {"a": 1}}}, "data.sample_id must be text, got dict"),
        ({"data": {"crop_box": "abcd"}, "annotations": [annotation(ranker(ids), brush_result(np.ones((2, 2), bool)))]},
         "crop_box must be [x, y, w, h]"),
    ]
    for number, (change, fragment) in enumerate(bad_tasks):
        first = number * 3 % 30                      # each case is a file of its own: instances may repeat
        bad = ls_task(world, first + 1)
        bad["data"].update(change.pop("data", {}))
        bad.update(change)
        tasks = [ls_task(world, first), bad, ls_task(world, first + 2)]
        path = tmp_path / f"case{number}.json"
        path.write_text(json.dumps(tasks))           # json writes inf as Infinity, which Python's json reads back
        check_one_bad_row(store, path, "task 2", fragment)
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    result = invoke(store, "import", str(tmp_path / "deep.json"))
    assert result.exit_code == 2 and result.stderr.startswith("error: deep.json nests JSON too deeply")


def test_label_studio_textarea_text_may_be_one_string(world, store, tmp_path):
    sample = world.samples[0]
    ids = world.candidates[sample]
    task = ls_task(world, 0, ranker(ids), {"type": "textarea", "from_name": "description",
                                          "value": {"text": "fur that is not there"}})
    (tmp_path / "export.json").write_text(json.dumps([task]))
    report = import_labels(store, tmp_path / "export.json")
    assert report.rejected == [] and report.labels.column("description").to_pylist() == ["fur that is not there"]


def test_long_description_rejects_its_row_only(world, store, tmp_path):
    rows = good_rows(world, 3)
    rows[1]["description"] = BIG
    rows[2]["description"] = "w" * 2000               # at the limit: kept whole
    result = invoke(store, "import", str(write_csv(tmp_path / "labels.csv", rows)))
    assert result.exit_code == 0, result.output
    assert rejected_lines(result) == [(f"rejected line 3: {rows[1]['instance_id']}: description is {len(BIG)} "
                                       "characters long; the limit is 2000")]
    stored = store.read_arrow("human_labels@v1").column("description").to_pylist()
    assert sorted(stored, key=len) == ["", "w" * 2000]


def test_a_later_dated_edit_is_a_revision_on_both_paths(world, store):
    """Latest stated time wins on the importer and make_pairs alike; an edit that is not later
    (or has no time) is still a conflict."""
    sample = world.samples[0]
    instance = world.instances[sample][0]["instance_id"]
    ids = world.candidates[sample]

    def row(annotator: str, best: int, worst: int, at: str | None) -> dict:
        stamp = {"labelled_at": at} if at else {}
        return {"sample_id": sample, "instance_id": instance, "best": ids[best], "worst": ids[worst],
                "hallucination": False, "description": "", "annotator": annotator, **stamp}

    rows = [row("alice", 0, 3, "2025-03-01T10:00:00Z"), row("alice", 1, 3, "2025-03-02T10:00:00Z"),
            row("alice", 2, 3, "2025-03-01T12:00:00Z"), row("bob", 0, 3, None), row("bob", 1, 3, None)]
    imported = import_rows(store, rows)
    labels = [HumanLabel(**item) for item in rows]
    rewards = InstanceRewards(sample_id=sample, instance_id=instance, weight=1.0,
                              rewards={candidate: float(rank) for rank, candidate in enumerate(ids)})
    (pair,), paired = make_pairs([rewards], labels)

    def position(where: str) -> str:
        return re.sub(r"\brow (\d+)", lambda match: f"labels[{int(match[1]) - 1}]", where)

    assert ([position(f"{item.where}: {item.reason}") for item in imported.revisions]
            == [f"labels[{item.position}]: {item.reason}" for item in paired.revised_labels]
            == [("labels[1]: revises the label by alice in labels[0] (2025-03-01T10:00:00+00:00 -> "
                 f"2025-03-02T10:00:00+00:00): best {ids[0]!r} there, {ids[1]!r} here")])
    assert ([position(f"{item.where}: {item.reason}") for item in imported.rejected]
            == [f"labels[{item.position}]: {item.reason}" for item in paired.label_errors])
    assert [item.where for item in imported.rejected] == ["row 3", "row 5"]
    standing = {r["annotator"]: r["best"] for r in imported.labels.to_pylist()}
    assert standing == {"alice": ids[1], "bob": ids[0]}
    assert sorted(pair.annotators) == ["alice", "bob"]


def test_reimported_label_studio_edit_becomes_a_new_revision(world, store, tmp_path):
    task = ls_task(world, 0, updated_at="2025-04-01T09:00:00Z")
    ids = task["annotations"][0]["result"][0]["value"]["ranker"]
    (tmp_path / "v1.json").write_text(json.dumps([task]))
    assert invoke(store, "import", str(tmp_path / "v1.json")).exit_code == 0
    edited = ls_task(world, 0, ranker([ids[-1], *ids[1:-1], ids[0]]), updated_at="2025-04-02T09:00:00Z")
    (tmp_path / "v2.json").write_text(json.dumps([edited]))
    result = invoke(store, "import", str(tmp_path / "v2.json"))
    assert result.exit_code == 0, result.output
    assert "1 revision(s)" in result.stdout and "revised task 1" in result.stderr
    before, after = (store.read_arrow(f"human_labels@v{n}").to_pylist() for n in (1, 2))
    assert [(r["best"], r["worst"]) for r in before] == [(ids[0], ids[-1])]
    assert [(r["best"], r["worst"]) for r in after] == [(ids[-1], ids[0])]
    revisions = store.manifest("human_labels@v2")["metadata"]["revisions"]
    assert len(revisions) == 1 and "revises the label by ann@example.org in human_labels@v1" in revisions[0]["reason"]
    assert store.manifest("human_labels@v2")["metadata"]["counts"]["revisions"] == 1
