"""The Label Studio round trip against a real Label Studio 1.23 server (tests/label_studio_server.py):
`dspo labels export` -> a project with the exported labelling config -> the tasks imported ->
the labelling page in headless Chromium (every candidate image loaded and shown at a usable size;
one task submitted from the page) -> annotations through the REST API (ranker, choices, textarea,
brush) -> the JSON, JSON_MIN and CSV exports -> `dspo labels import` of each gives the same labels
-> an annotation edited in Label Studio, exported and imported again, is a revision.

Slow (the server's first start migrates a new database: minutes) and skipped without the server's
virtual environment; CI does not run it. tests/fixtures/label_studio/ holds exports of this round
trip, which tests/test_labels_ls_exports.py reads without a server."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from label_studio_server import EMAIL, EXECUTABLE, PASSWORD, LabelStudio, start
from playwright.sync_api import sync_playwright
from test_label_app_browser import CHROMIUM, CHROMIUM_ARGS
from test_labels import brush_result
from typer.testing import CliRunner

from dspo_core.segment import rle
from pipeline.cli.labels import app
from pipeline.config import load_config
from pipeline.stage import run_stage
from pipeline.stages import STAGES
from storage import DatasetStore

torch.set_num_threads(1)
pytestmark = [
    pytest.mark.slow, pytest.mark.timeout(2400),
    pytest.mark.skipif(not EXECUTABLE.exists(), reason=f"no Label Studio at {EXECUTABLE} (set $DSPO_LABEL_STUDIO to "
                                                       "its label-studio executable; README \"Label Studio round trip\")"),
]
TOKEN = "dspo-interop-token-0123456789"
MIN_SHOWN = 160          # px: the shortest a candidate's longer side may be shown (the page is 1440 x 900)
EXPORT_TYPES = {"JSON": "export.json", "JSON_MIN": "export-min.json", "CSV": "export.csv"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    started = start(tmp_path_factory.mktemp("label-studio"), TOKEN)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """(store with candidates and instances, folder of `dspo labels export --limit 3`)."""
    root = tmp_path_factory.mktemp("ls-round-trip")
    store = DatasetStore(str(root / "store"))
    config = load_config("test")
    for name in ("ingest", "degrade", "sample", "segment"):
        run_stage(STAGES[name], store, config)
    result = CliRunner().invoke(app, ["export", "--to", str(root / "tasks"), "--limit", "3", "--store", store.uri])
    assert result.exit_code == 0, result.output
    store.close()
    return root / "store", root / "tasks"


def shown_images(server: LabelStudio, project: int, task: int, screenshot: Path, submit_choice: str | None = None):
    """Log in, open `task` on the labelling page; the boxes of its images ({width, height,
    natural}) and a screenshot; with `submit_choice`, click that choice and submit."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(server.url + "/user/login/")
        page.fill("input[name=email]", EMAIL)
        page.fill("input[name=password]", PASSWORD)
        with page.expect_navigation():
            page.click("button[type=submit]")
        page.goto(f"{server.url}/projects/{project}/data?task={task}", timeout=120_000)
        page.wait_for_selector(".lsf-image img", timeout=120_000)
        images = []
        for _ in range(240):
            images = page.evaluate("""Array.from(document.querySelectorAll('.lsf-image img')).map(image => {
                const box = image.getBoundingClientRect();
                return {width: box.width, height: box.height, natural: image.naturalWidth, done: image.complete};
            })""")
            if len(images) >= 6 and all(image["done"] and image["natural"] > 0 for image in images):
                break
            page.wait_for_timeout(500)
        page.wait_for_timeout(1000)   # the canvases settle after the images decode
        page.screenshot(path=str(screenshot))
        if submit_choice is not None:
            page.locator(f"input[name={json.dumps(submit_choice)}]").click()
            with page.expect_response(lambda response: "/annotations" in response.url
                                      and response.request.method == "POST", timeout=120_000):
                page.get_by_role("button", name="Submit").first.click()
        browser.close()
    return images


def api_result(task: dict, order: list[int], drawn: np.ndarray | None = None, description: str = "") -> list[dict]:
    """A result as Label Studio's editor writes it: ranker order (indices of candidate_ids), then
    the hallucination choice, description and brush region when given."""
    ids = task["data"]["candidate_ids"]
    result = [{"id": "rank-1", "type": "ranker", "from_name": "rank", "to_name": "candidates",
               "value": {"ranker": {"rank": [ids[index] for index in order]}}}]
    if drawn is not None:
        result.append({"id": "hall-1", "type": "choices", "from_name": "hallucination", "to_name": "image",
                       "value": {"choices": ["hallucination"]}})
        result.append({"id": "desc-1", "type": "textarea", "from_name": "description", "to_name": "image",
                       "value": {"text": [description]}})
        result.append({**brush_result(drawn), "id": "brush-1"})
    return result


def imported(store_root: Path, path: Path) -> tuple[str, dict[str, dict]]:
    """(the import's output, human_labels@latest by instance) after `dspo labels import path`."""
    result = CliRunner().invoke(app, ["import", str(path), "--store", DatasetStore(str(store_root)).uri])
    assert result.exit_code == 0, result.output
    store = DatasetStore(str(store_root))
    rows = {row["instance_id"]: row for row in store.read_arrow("human_labels@latest").to_pylist()}
    store.close()
    return result.output, rows


def test_label_studio_round_trip(server, exported, tmp_path, record_property):
    started = time.monotonic()
    store_root, folder = exported
    project = server.create_project("dspo round trip", (folder / "label_config.xml").read_text())
    tasks = server.import_tasks(project, json.loads((folder / "tasks.json").read_text()))
    assert len(tasks) == 3
    assert all(task["data"][f"candidate_{i}"].startswith("data:image/png;base64,") for task in tasks for i in range(4))

    # Every image loads and every candidate is shown at a usable size, with no set-up.
    screenshot = tmp_path / "label-studio-task.png"
    images = shown_images(server, project, tasks[1]["id"], screenshot, submit_choice="no hallucination")
    record_property("screenshot", str(screenshot))
    print(f"Label Studio task screenshot: {screenshot}; images: {images}")
    assert len(images) == 6, images                      # 4 candidates, LQ, HR
    assert all(image["natural"] > 0 for image in images), images
    # The longer side at least MIN_SHOWN px, and at least one screen pixel per HR pixel of the crop.
    crop_width = tasks[1]["data"]["crop_box"][2]
    assert all(max(image["width"], image["height"]) >= MIN_SHOWN and image["width"] >= crop_width
               for image in images), (crop_width, images)

    # Annotate through the API: task 0 with a hallucination, description and a brush region.
    first = tasks[0]
    x, y, w, h = first["data"]["crop_box"]
    zoom = first["data"]["zoom"]
    drawn = np.zeros((h * zoom, w * zoom), dtype=bool)
    drawn[2 * zoom:6 * zoom, 3 * zoom:9 * zoom] = True
    annotation = server.annotate(first["id"], api_result(first, [2, 0, 3, 1], drawn, "invented fur"))
    server.annotate(tasks[2]["id"], api_result(tasks[2], [1, 2, 3, 0]))
    exports = {}
    for kind, name in EXPORT_TYPES.items():
        exports[kind] = tmp_path / name
        exports[kind].write_bytes(server.export(project, kind))
    ids = [task["data"]["candidate_ids"] for task in tasks]
    expected = {tasks[0]["data"]["instance_id"]: (ids[0][2], ids[0][1], True, "invented fur"),
                tasks[1]["data"]["instance_id"]: (ids[1][0], ids[1][3], False, ""),    # submitted unreordered
                tasks[2]["data"]["instance_id"]: (ids[2][1], ids[2][0], False, "")}
    full = np.zeros(tuple(first["data"]["frame_size"]), dtype=bool)
    full[y + 2:y + 6, x + 3:x + 9] = True
    stores = {}
    for kind, path in exports.items():
        stores[kind] = tmp_path / f"store-{kind}"
        shutil.copytree(store_root, stores[kind])
        output, rows = imported(stores[kind], path)
        assert "3 accepted, 0 rejected" in output, (kind, output)
        found = {instance: (row["best"], row["worst"], row["hallucination"], row["description"])
                 for instance, row in rows.items()}
        assert found == expected, kind
        # Label Studio 1.23 exports the annotator as its numeric user id only (the first user is 1).
        assert {row["annotator"] for row in rows.values()} == {"1"}, kind
        np.testing.assert_array_equal(rle.decode(rows[first["data"]["instance_id"]]["mask"]), full)

    # Edit the annotation in Label Studio, export again, import again: a revision.
    time.sleep(1)
    server.edit(annotation["id"], api_result(first, [3, 0, 2, 1], drawn, "invented fur and whiskers"))
    for kind, name in EXPORT_TYPES.items():
        edited = tmp_path / f"edited-{name}"
        edited.write_bytes(server.export(project, kind))
        output, rows = imported(stores[kind], edited)
        assert "1 accepted" in output and "1 revision(s)" in output and "2 duplicate(s)" in output, (kind, output)
        row = rows[first["data"]["instance_id"]]
        assert (row["best"], row["worst"], row["description"]) == (ids[0][3], ids[0][1], "invented fur and whiskers")
        store = DatasetStore(str(stores[kind]))
        before = {r["instance_id"]: r for r in store.read_arrow("human_labels@v1").to_pylist()}
        assert before[first["data"]["instance_id"]]["best"] == ids[0][2]      # the earlier label stays in v1
        assert store.manifest("human_labels@v2")["metadata"]["counts"]["revisions"] == 1
        store.close()
    record_property("seconds", round(time.monotonic() - started, 1))
