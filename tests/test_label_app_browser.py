"""The labelling app in a real browser: `dspo label serve` as its own process, driven by headless
Chromium (Debian's /usr/bin/chromium through Playwright; .ci/system-deps.sh installs it and
Playwright never downloads a browser). An annotator logs in with a token, labels three
instances from the keyboard, one flagged as a hallucination with a description; the labels
reach human_labels@latest; the server is SIGKILLed and restarted, and the queue resumes."""
from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright
from test_label_app import (
    Server,
    add_annotator,
    built_store,
    expected_order,
    stopping_servers,
    wait_for_labels,
)

from storage import DatasetStore

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


@pytest.fixture
def servers():
    yield from stopping_servers()

def wait_for_task(page: Page) -> None:
    """Until the task page's script runs (it puts the cursor on the first candidate)."""
    page.wait_for_selector(".candidate.cursor")


def shown_instance(page: Page) -> str:
    return page.locator("#label-form input[name=instance_id]").get_attribute("value")


def submit_with_enter(page: Page) -> None:
    with page.expect_navigation():
        page.keyboard.press("Enter")
    wait_for_task(page)


MIN_CANDIDATE_WIDTH = 180   # px at 1440 x 900: 2 references + 4 candidates share the row


def check_one_screen_layout(page: Page, screenshot: Path) -> None:
    """At 1440 x 900 every reference and candidate image lies inside the first screen, in one
    row, each at least MIN_CANDIDATE_WIDTH wide; `z` opens the cursor's candidate in an overlay
    larger than the row's images, and `z` again closes it."""
    page.set_viewport_size({"width": 1440, "height": 900})
    # Polled from here: the page's CSP forbids the string evaluation wait_for_function needs.
    for _ in range(100):
        if page.evaluate("Array.from(document.images).every(image => image.complete && image.naturalWidth > 0)"):
            break
        page.wait_for_timeout(100)
    boxes = [page.locator(selector).nth(index).bounding_box()
             for selector in (".reference img", ".candidate img")
             for index in range(page.locator(selector).count())]
    page.screenshot(path=str(screenshot))
    assert len(boxes) >= 3 and all(box is not None for box in boxes)
    for box in boxes:
        assert box["x"] >= 0 and box["y"] >= 0, box
        assert box["x"] + box["width"] <= 1440 and box["y"] + box["height"] <= 900, box
        assert box["width"] >= MIN_CANDIDATE_WIDTH, box
    # One row: every image starts above the bottom of every other one (borders shift tops a little).
    assert max(box["y"] for box in boxes) < min(box["y"] + box["height"] for box in boxes), boxes
    page.keyboard.press("z")
    zoomed = page.locator(".candidate.cursor img").bounding_box()
    assert zoomed["width"] > 2 * boxes[-1]["width"] and zoomed["height"] <= 900, zoomed
    page.keyboard.press("z")


def test_keyboard_labelling_kill_and_resume(tmp_path_factory, tmp_path, servers, record_property):
    store_path = tmp_path / "store"
    shutil.copytree(built_store(tmp_path_factory), store_path)
    store = DatasetStore(str(store_path))
    order = expected_order(store)
    state = tmp_path / "state"
    token = add_annotator("alice", state)
    servers.append(Server(store_path, state, tmp_path / "server-1.log"))
    url = servers[0].url
    screenshot = tmp_path / "task-view.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(url + "/")
        assert page.url == url + "/login"
        page.fill("#token", "not-a-token")
        page.click("#login")
        assert "unknown token" in page.inner_text(".error")
        page.fill("#token", token)
        page.click("#login")
        wait_for_task(page)
        assert shown_instance(page) == order[0]
        check_one_screen_layout(page, tmp_path / "layout-1440x900.png")
        page.set_viewport_size({"width": 1280, "height": 900})

        # 1: best A with "1", worst D with Shift+4; a bare Enter first is stopped in the page.
        page.keyboard.press("Enter")
        assert "choose the best candidate" in page.inner_text("#client-error")
        page.keyboard.press("1")
        page.keyboard.press("Shift+Digit4")
        assert page.locator(".candidate.is-best").get_attribute("data-index") == "0"
        assert page.locator(".candidate.is-worst").get_attribute("data-index") == "3"
        assert page.locator("#client-error").is_hidden()
        submit_with_enter(page)
        assert shown_instance(page) == order[1]

        # 2: the arrow-key cursor: best C (right, right, b), worst B (left, w).
        for key in ("ArrowRight", "ArrowRight", "b", "ArrowLeft", "w"):
            page.keyboard.press(key)
        submit_with_enter(page)
        assert shown_instance(page) == order[2]

        # 3: best B, worst A, flagged as a hallucination; Enter in the description submits.
        page.keyboard.press("2")
        page.keyboard.press("Shift+Digit1")
        page.keyboard.press("h")
        page.keyboard.press("Enter")
        assert "describe the hallucination" in page.inner_text("#client-error")
        page.keyboard.type("invented window frames on the wall")
        assert page.locator("#client-error").is_hidden()
        page.screenshot(path=str(screenshot), full_page=True)
        submit_with_enter(page)
        assert shown_instance(page) == order[3]
        assert errors == []

        rows = wait_for_labels(store, 3)
        by_instance = {row["instance_id"]: row for row in rows}
        assert set(by_instance) == set(order[:3])
        candidates = {task: _candidates(store, task) for task in order[:3]}
        picks = [(by_instance[i]["best"], by_instance[i]["worst"]) for i in order[:3]]
        assert picks == [(candidates[order[0]][0], candidates[order[0]][3]),
                         (candidates[order[1]][2], candidates[order[1]][1]),
                         (candidates[order[2]][1], candidates[order[2]][0])]
        assert [by_instance[i]["hallucination"] for i in order[:3]] == [False, False, True]
        assert by_instance[order[2]]["description"] == "invented window frames on the wall"
        assert {row["annotator"] for row in rows} == {"alice"} and {row["source"] for row in rows} == {"app"}

        page.click("text=stats")
        assert page.locator("#annotators").inner_text().splitlines()[1].split() == ["alice", "3", "1"]

        # SIGKILL after the flush: the labels stay; a restarted server resumes alice's queue.
        servers[0].stop(signal.SIGKILL)
        assert len(store.read_arrow("human_labels@latest")) == 3
        servers.append(Server(store_path, state, tmp_path / "server-2.log"))
        page.goto(servers[1].url + "/")
        if page.url.endswith("/login"):   # cookies are per host, not port: the old one may still hold
            page.fill("#token", token)
            page.click("#login")
        wait_for_task(page)
        assert shown_instance(page) == order[3]
        assert f"{len(order) - 3} left" in page.inner_text("header")
        browser.close()
    servers[1].stop()
    logs = "".join(path.read_text() for path in tmp_path.glob("server-*.log"))
    assert token not in logs
    print(f"task view screenshot: {screenshot}")
    record_property("screenshot", str(screenshot))
    assert screenshot.stat().st_size > 10_000
    store.close()


def _candidates(store: DatasetStore, instance_id: str) -> list[str]:
    sample = store.read_arrow("instances@latest", columns=["instance_id", "sample_id"]).to_pylist()
    sample_id = next(row["sample_id"] for row in sample if row["instance_id"] == instance_id)
    columns = ["candidate_id", "sample_id", "candidate_index"]
    rows = store.read_arrow("sr_candidates@latest", columns=columns).to_pylist()
    return [row["candidate_id"] for row in sorted(rows, key=lambda r: r["candidate_index"])
            if row["sample_id"] == sample_id]
