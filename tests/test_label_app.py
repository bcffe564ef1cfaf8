"""The labelling app's API and pages, in process (FastAPI's TestClient), on a store built by the
real stages with the test profile: the label flow, the queue order, validation, auth and CSRF,
crops, batched publishing, restart, stats and the `dspo label` commands."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import pipeline.labels.app.book as book_module
from flows.cli import app as dspo
from pipeline.config import load_config
from pipeline.labels import import_labels
from pipeline.labels.app import Annotators, LabelAppConfig, create_app
from pipeline.labels.app.stats import fleiss_kappa
from pipeline.labels.app.tasks import TaskList
from pipeline.labels.app.web import SESSION_COOKIE
from pipeline.stage import run_stage
from pipeline.stages import STAGES
from storage import DatasetNotFoundError, DatasetStore, StoreError

STAGE_NAMES = ("ingest", "degrade", "sample", "segment", "score")
DSPO = [sys.executable, "-c", "from flows.cli import app; app(prog_name='dspo')"]
START_TIMEOUT = 90


def built_store(tmp_path_factory) -> Path:
    """ingest -> ... -> score with the test profile, once per test session (the browser test
    module shares it through the session's base temp folder)."""
    root = tmp_path_factory.getbasetemp() / "label-app-world"
    if not (root / "built").exists():
        shutil.rmtree(root, ignore_errors=True)
        store = DatasetStore(str(root / "store"))
        config = load_config("test")
        for name in STAGE_NAMES:
            run_stage(STAGES[name], store, config)
        store.close()
        (root / "built").touch()
    return root / "store"


def expected_order(store: DatasetStore) -> list[str]:
    """Instance ids in the order the queue must serve them: smallest best-worst reward gap
    first, unscored last; ties by larger weight, then sample and index."""
    rewards: dict[str, list[float]] = {}
    for row in store.read_arrow("instance_scores@latest", columns=["instance_id", "metric", "value"]).to_pylist():
        if row["metric"] == "reward":
            rewards.setdefault(row["instance_id"], []).append(row["value"])
    rows = store.read_arrow("instances@latest", columns=["instance_id", "sample_id", "index", "bbox",
                                                         "weight"]).to_pylist()
    thinnest = LabelAppConfig.model_fields["min_instance_pixels"].default
    rows = [row for row in rows if min(row["bbox"][2:]) > 0 and min(row["bbox"][2:]) >= thinnest]
    gap = {instance: max(values) - min(values) for instance, values in rewards.items()}
    rows.sort(key=lambda row: (row["instance_id"] not in gap, gap.get(row["instance_id"], 0.0), -row["weight"],
                               row["sample_id"], row["index"]))
    return [row["instance_id"] for row in rows]


class Server:
    """One `dspo label serve` process on a free loopback port, in its own process group;
    `options` are more `dspo label serve` options (default: publish every 0.5 s)."""

    def __init__(self, store: Path, state: Path, log: Path, *options: str):
        self.log = log
        options = options or ("--batch-size", "100", "--batch-seconds", "0.5")
        with open(log, "ab") as handle:   # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                [*DSPO, "label", "serve", "--store", str(store), "--state-dir", str(state), "--port", "0", *options],
                stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + START_TIMEOUT
        self.url = None
        while self.url is None:
            found = re.findall(r"labelling app: (http://127\.0\.0\.1:\d+)/", log.read_text())
            if found and "Application startup complete" in log.read_text().rsplit("labelling app:", 1)[-1]:
                self.url = found[-1]
            elif self.process.poll() is not None or time.monotonic() > deadline:
                self.stop(signal.SIGKILL)
                raise AssertionError(f"dspo label serve did not start:\n{log.read_text()[-3000:]}")
            else:
                time.sleep(0.1)
        self.port = int(self.url.rsplit(":", 1)[1])

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            self.process.wait(30)


def stopping_servers():
    """For a fixture: the list a test adds its started servers to, each stopped (SIGKILL) after
    the test if still running."""
    started: list[Server] = []
    yield started
    for server in started:
        server.stop(signal.SIGKILL)


def add_annotator(name: str, state: Path) -> str:
    result = subprocess.run([*DSPO, "label", "add-annotator", name, "--state-dir", str(state)],
                            capture_output=True, text=True, timeout=120, check=True)
    return result.stdout.strip()


def wait_for_labels(store: DatasetStore, count: int, timeout: float = 30) -> list[dict]:
    """human_labels@latest once it holds `count` rows (or whatever it holds at `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            rows = store.read_arrow("human_labels@latest").to_pylist()
        except DatasetNotFoundError:
            rows = []
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return built_store(tmp_path_factory)


@pytest.fixture
def store(world, tmp_path):
    """A private copy of the built store (no human_labels yet)."""
    shutil.copytree(world, tmp_path / "store")
    opened = DatasetStore(str(tmp_path / "store"))
    yield opened
    opened.close()


@pytest.fixture
def tokens(tmp_path) -> dict[str, str]:
    annotators = Annotators(tmp_path / "state")
    return {name: annotators.add(name) for name in ("alice", "bob")}


def make_config(tmp_path: Path, **changes) -> LabelAppConfig:
    # Large batches: tests publish explicitly unless they test the batching.
    return LabelAppConfig(state_dir=tmp_path / "state", batch_size=1000, batch_seconds=3600, **changes)


@pytest.fixture
def client(store, tokens, tmp_path):
    with TestClient(create_app(store, make_config(tmp_path)), follow_redirects=False) as test_client:
        yield test_client


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def next_task(client, token: str) -> dict:
    response = client.get("/api/tasks/next", headers=bearer(token))
    assert response.status_code == 200, response.text
    return response.json()["task"]


def label_body(task: dict, best: int = 0, worst: int = 1, **extra) -> dict:
    return {"instance_id": task["instance_id"], "best": task["candidates"][best]["id"],
            "worst": task["candidates"][worst]["id"], **extra}


def human_labels(store: DatasetStore) -> list[dict]:
    return store.read_arrow("human_labels@latest").to_pylist()


def test_label_flow_queue_order_and_publish(client, store, tokens):
    order = expected_order(store)
    assert len(order) > 10
    alice, bob = tokens["alice"], tokens["bob"]
    first = next_task(client, alice)
    assert first["instance_id"] == order[0]
    assert [c["letter"] for c in first["candidates"]] == ["A", "B", "C", "D"]
    response = client.post("/api/labels", headers=bearer(alice),
                           json=label_body(first, 2, 0, hallucination=True, description="invented ripples"))
    assert response.status_code == 201, response.text
    assert response.json()["annotator"] == "alice" and response.json()["waiting"] == 1
    assert next_task(client, alice)["instance_id"] == order[1]     # skips what alice labelled
    assert next_task(client, bob)["instance_id"] == order[0]       # bob has his own queue
    second = label_body(next_task(client, alice))
    assert client.post("/api/labels", headers=bearer(alice), json=second).status_code == 201
    assert client.get("/api/me", headers=bearer(alice)).json()["labelled"] == 2
    with pytest.raises(DatasetNotFoundError):
        store.resolve("human_labels@latest")                         # buffered, not yet published
    ref = client.app.state.labelling.book.flush()
    assert ref == "human_labels@v1"
    rows = {row["instance_id"]: row for row in human_labels(store)}
    assert list(rows) == order[:2]
    row = rows[order[0]]
    assert (row["annotator"], row["source"], row["hallucination"], row["description"]) == (
        "alice", "app", True, "invented ripples")
    assert (row["best"], row["worst"]) == (first["candidates"][2]["id"], first["candidates"][0]["id"])
    assert row["sample_id"] == first["sample_id"] and row["labelled_at"] is not None
    assert store.manifest(ref)["inputs"][:2] == ["sr_candidates@v1", "instances@v1"]
    assert client.get("/api/me", headers=bearer(alice)).json()["published"] == ref


def test_validation(client, store, tokens):
    alice = tokens["alice"]
    task = next_task(client, alice)
    other = next(t for t in client.app.state.labelling.tasks.tasks if t.sample_id != task["sample_id"])

    def post(body: dict):
        return client.post("/api/labels", headers=bearer(alice), json=body)

    cases = [
        ({**label_body(task), "instance_id": "nosuchinstance"}, 422, "unknown instance 'nosuchinstance'"),
        ({**label_body(task), "best": "nosuchcandidate"}, 422, "unknown best candidate 'nosuchcandidate'"),
        ({**label_body(task), "worst": other.candidates[0]}, 422, f"unknown worst candidate '{other.candidates[0]}'"),
        (label_body(task, 1, 1), 422, "best and worst are the same candidate"),
        (label_body(task, hallucination=True), 422, "describe the hallucination"),
        (label_body(task, hallucination=True, description="   "), 422, "describe the hallucination"),
        (label_body(task, description="x" * 2001), 422, "longer than 2000"),
    ]
    for body, status, fragment in cases:
        response = post(body)
        assert response.status_code == status, (body, response.text)
        assert fragment in response.json()["detail"], response.text
    missing = post({"instance_id": task["instance_id"], "best": task["candidates"][0]["id"]})
    assert missing.status_code == 422 and "worst" in missing.text
    assert post({**label_body(task), "extra": 1}).status_code == 422
    assert post(label_body(task)).status_code == 201
    # The same label again (a form sent twice) is accepted once; another one is refused, naming both.
    repeat = post(label_body(task))
    assert repeat.status_code == 200 and repeat.json()["duplicate"] is True
    assert len(client.app.state.labelling.book.pending) == 1
    again = post(label_body(task, 2, 3))
    ids = [candidate["id"] for candidate in task["candidates"]]
    assert again.status_code == 409 and again.json()["detail"] == (
        f"alice already labelled instance {task['instance_id']} otherwise: best {ids[0]!r} there, {ids[2]!r} here; "
        f"worst {ids[1]!r} there, {ids[3]!r} here")
    client.app.state.labelling.book.flush()
    assert len(human_labels(store)) == 1


def test_auth_bearer(client, tokens):
    alice = tokens["alice"]
    task = next_task(client, alice)
    image = f"/img/{task['instance_id']}/lq"
    for headers in ({}, bearer("wrong-token"), {"Authorization": "Basic YWxpY2U6eA=="}, {"Authorization": "Bearer"},
                    {"Authorization": alice}):
        for method, path in (("get", "/api/me"), ("get", "/api/tasks/next"), ("get", "/api/stats"), ("get", image),
                             ("post", "/api/labels")):
            kwargs = {"json": label_body(task)} if method == "post" else {}
            response = getattr(client, method)(path, headers=headers, **kwargs)
            assert response.status_code == 401, (headers, path, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
    # Pages without a login go to the login page; a wrong bearer token on a page is a 401.
    assert client.get("/").status_code == 303 and client.get("/").headers["location"] == "/login"
    assert client.get("/stats").headers["location"] == "/login"
    assert client.get("/", headers=bearer("wrong")).status_code == 401
    assert client.get("/", headers=bearer(alice)).status_code == 200
    # One annotator cannot write as another.
    response = client.post("/api/labels", headers=bearer(alice), json={**label_body(task), "annotator": "bob"})
    assert response.status_code == 403 and "cannot label as 'bob'" in response.json()["detail"]
    assert client.post("/api/labels", headers=bearer(alice), json={**label_body(task), "annotator": "alice"}
                       ).status_code == 201
    assert [label.annotator for label in client.app.state.labelling.book.pending] == ["alice"]
    assert next_task(client, tokens["bob"])["instance_id"] == task["instance_id"]


def login(client, token: str):
    page = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    return client.post("/login", data={"token": token, "csrf": csrf})


def page_csrf(client) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', client.get("/").text).group(1)


def test_login_cookie_and_csrf(client, store, tokens, tmp_path):
    alice = tokens["alice"]
    client.get("/login")
    assert client.post("/login", data={"token": alice, "csrf": "forged"}).status_code == 403
    assert client.post("/login", data={"token": alice, "csrf": "é"}).status_code == 403
    assert login(client, "wrong-token").status_code == 401
    response = login(client, alice)
    assert response.status_code == 303 and response.headers["location"] == "/"
    cookie = response.headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower() and alice not in cookie
    page = client.get("/")
    assert page.status_code == 200 and "alice" in page.text and 'id="label-form"' in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    assert page.headers["x-frame-options"] == "DENY"
    assert (tmp_path / "state" / "session.key").stat().st_mode & 0o777 == 0o600
    task = next_task(client, alice)
    form = {"instance_id": task["instance_id"], "best": task["candidates"][0]["id"],
            "worst": task["candidates"][3]["id"]}
    # Cookie-authenticated writes need the session's CSRF token: forms in a field, the API in a header.
    assert client.post("/label", data=form).status_code == 403
    assert client.post("/label", data={**form, "csrf": "0" * 64}).status_code == 403
    assert client.post("/label", data={**form, "csrf": "é"}).status_code == 403
    assert client.post("/api/labels", json=label_body(task)).status_code == 403
    csrf = page_csrf(client)
    invalid = client.post("/label", data={**form, "worst": form["best"], "csrf": csrf})
    assert invalid.status_code == 422 and "best and worst are the same candidate" in invalid.text
    assert f'value="{task["instance_id"]}"' in invalid.text and f'value="{form["best"]}" checked' in invalid.text
    response = client.post("/label", data={**form, "hallucination": "true", "description": "fake bricks",
                                           "csrf": csrf})
    assert response.status_code == 303 and response.headers["location"] == "/"
    assert task["instance_id"] not in client.get("/").text
    again = client.post("/label", data={**form, "csrf": csrf})
    assert again.status_code == 409 and "already labelled" in again.text and task["instance_id"] in again.text
    second = next_task(client, alice)
    assert client.post("/api/labels", json=label_body(second), headers={"X-CSRF-Token": csrf}).status_code == 201
    assert client.post("/skip", data={"instance_id": next_task(client, alice)["instance_id"], "csrf": csrf}
                       ).status_code == 303
    # A new token for alice ends her sessions and her old token.
    Annotators(tmp_path / "state").add("alice", replace=True)
    assert client.get("/").status_code == 303
    assert client.get("/api/me", headers=bearer(alice)).status_code == 401
    client.app.state.labelling.book.flush()
    rows = human_labels(store)
    assert [(row["annotator"], row["hallucination"], row["description"]) for row in rows] == [
        ("alice", True, "fake bricks"), ("alice", False, "")]


def logged_in(client, token: str) -> str:
    """A new session of `token`'s annotator in `client` (any other cookie dropped); its cookie."""
    client.cookies.clear()
    assert login(client, token).status_code == 303
    return client.cookies[SESSION_COOKIE]


def works(client, cookie: str) -> bool:
    """Whether `cookie` is a live session: the task page and the API answer it."""
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, cookie)
    page, api = client.get("/"), client.get("/api/me")
    assert (page.status_code == 200) == (api.status_code == 200), (page.status_code, api.status_code)
    return api.status_code == 200


def test_logout_and_a_new_token_end_sessions_on_the_server(store, tokens, tmp_path):
    state = tmp_path / "state"
    with TestClient(create_app(store, make_config(tmp_path)), follow_redirects=False) as client:
        first, second = logged_in(client, tokens["alice"]), logged_in(client, tokens["alice"])
        bobs = logged_in(client, tokens["bob"])
        assert works(client, first) and works(client, second) and works(client, bobs)
        client.cookies.set(SESSION_COOKIE, first)
        response = client.post("/logout", data={"csrf": page_csrf(client)})
        assert response.status_code == 303 and response.headers["location"] == "/login"
        assert not works(client, first)                    # the replayed cookie of a logged-out session
        assert works(client, second)
    saved = (state / "sessions.json").read_text()
    assert (state / "sessions.json").stat().st_mode & 0o777 == 0o600
    assert all(secret not in saved for secret in (first, second, bobs, *tokens.values()))
    with TestClient(create_app(store, make_config(tmp_path)), follow_redirects=False) as client:
        assert not works(client, first)                    # a logout survives a restart ...
        assert works(client, second) and works(client, bobs)   # ... and so do live sessions
        replaced = CliRunner().invoke(dspo, ["label", "add-annotator", "alice", "--replace", "--state-dir",
                                             str(state)])
        assert replaced.exit_code == 0, replaced.output
        assert not works(client, second)                   # a new token ends alice's sessions
        assert works(client, bobs)
        assert works(client, logged_in(client, replaced.stdout.strip()))
    assert len(json.loads((state / "sessions.json").read_text())["sessions"]) == 2   # bob's and alice's new one


def test_skip_moves_a_task_back(client, tokens):
    alice = tokens["alice"]
    order = [task.instance_id for task in client.app.state.labelling.tasks.tasks]
    login(client, alice)
    csrf = page_csrf(client)
    client.post("/skip", data={"instance_id": order[0], "csrf": csrf})
    assert next_task(client, alice)["instance_id"] == order[1]
    client.post("/skip", data={"instance_id": "nosuchinstance", "csrf": csrf})
    assert next_task(client, alice)["instance_id"] == order[1]


def test_images_by_validated_ids_only(client, tokens):
    alice = tokens["alice"]
    task = next_task(client, alice)
    base = f"/img/{task['instance_id']}"
    for view in ("lq", "hr", task["candidates"][0]["id"]):
        response = client.get(f"{base}/{view}", headers=bearer(alice))
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        assert response.content.startswith(b"\x89PNG\r\n\x1a\n")
    other = next(t for t in client.app.state.labelling.tasks.tasks if t.sample_id != task["sample_id"])
    for path in (f"{base}/{other.candidates[0]}", f"{base}/..%2F..%2F..%2Fetc%2Fpasswd", "/img/..%2Fstore/lq",
                 f"/img/{task['instance_id']}%2F..%2Fx/hr", "/img/nosuchinstance/lq", "/static/..%2Fconfig.py",
                 "/static/nosuch.js"):
        assert client.get(path, headers=bearer(alice)).status_code == 404, path
    assert client.get("/static/task.js").status_code == 200


def test_lq_pairs_come_from_the_candidates_lineage(store, tmp_path):
    assert TaskList(store, make_config(tmp_path)).lq_ref == "lq_pairs@v1"
    bare = store.publish("sr_candidates", store.read_arrow("sr_candidates@v1"))  # no inputs: no lineage
    with pytest.raises(StoreError, match=f"{bare} has no lq_pairs in its lineage: .* \\(--lq-pairs REF\\)"):
        TaskList(store, make_config(tmp_path, candidates=bare))
    with pytest.raises(StoreError, match=f"instance_scores@v1 was made from sr_candidates@v1, not {bare}"):
        TaskList(store, make_config(tmp_path, candidates=bare, lq_pairs="lq_pairs@v1"))
    assert TaskList(store, make_config(tmp_path, candidates=bare, lq_pairs="lq_pairs@v1",
                                       scores=None)).lq_ref == "lq_pairs@v1"


def test_instances_and_scores_are_pinned_through_the_candidates_lineage(store, tmp_path):
    other_lq = store.publish("lq_pairs", store.read_arrow("lq_pairs@v1"))
    other = store.publish("instances", store.read_arrow("instances@v1"), inputs=[other_lq])
    tasks = TaskList(store, make_config(tmp_path))
    assert (tasks.instances_ref, tasks.scores_ref) == ("instances@v1", "instance_scores@v1")
    with pytest.raises(StoreError, match=f"{other} was made from {other_lq}, not lq_pairs@v1: .*--instances REF"):
        TaskList(store, make_config(tmp_path, instances=other))
    with pytest.raises(StoreError, match=f"sr_candidates@v1 was made from lq_pairs@v1, not {other_lq}"):
        TaskList(store, make_config(tmp_path, lq_pairs=other_lq))


def test_thin_instances_are_left_out_of_the_queue(store, tmp_path):
    boxes = {row["instance_id"]: row["bbox"] for row in
             store.read_arrow("instances@v1", columns=["instance_id", "bbox"]).to_pylist() if min(row["bbox"][2:]) > 0}
    everything = TaskList(store, make_config(tmp_path, min_instance_pixels=0))
    sides = sorted({min(box[2:]) for box in boxes.values()})
    threshold = sides[len(sides) // 2]
    kept = TaskList(store, make_config(tmp_path, min_instance_pixels=threshold))
    thin = {instance for instance, box in boxes.items() if min(box[2:]) < threshold}
    assert thin and kept.left_out == len(thin) and {task.instance_id for task in kept.tasks} == (
        {task.instance_id for task in everything.tasks} - thin)


def test_hidden_hr_is_not_served(store, tokens, tmp_path):
    alice = tokens["alice"]
    with TestClient(create_app(store, make_config(tmp_path, show_hr=False))) as client:
        task = next_task(client, alice)
        assert task["hr"] is None
        assert client.get(f"/img/{task['instance_id']}/hr", headers=bearer(alice)).status_code == 404
        assert client.get(task["lq"], headers=bearer(alice)).status_code == 200
        assert "HR (reference)" not in client.get("/", headers=bearer(alice)).text


def wait_until(condition, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def test_batches_publish_by_size_and_by_age(store, tokens, tmp_path):
    alice = tokens["alice"]
    by_size = make_config(tmp_path).model_copy(update={"batch_size": 2})
    with TestClient(create_app(store, by_size)) as client:
        book = client.app.state.labelling.book
        for _ in range(2):
            client.post("/api/labels", headers=bearer(alice), json=label_body(next_task(client, alice)))
        assert wait_until(lambda: book.published_count == 2)
        assert store.resolve("human_labels@latest") == "human_labels@v1" and not book.pending
        client.post("/api/labels", headers=bearer(alice), json=label_body(next_task(client, alice)))
        time.sleep(1.5)                                  # one label waits for a second one (or the exit)
        assert len(book.pending) == 1 and book.published_count == 2
    assert len(human_labels(store)) == 3
    by_age = make_config(tmp_path).model_copy(update={"batch_seconds": 0.3})
    with TestClient(create_app(store, by_age)) as client:
        book = client.app.state.labelling.book
        client.post("/api/labels", headers=bearer(alice), json=label_body(next_task(client, alice)))
        assert wait_until(lambda: book.published_count == 1)
        assert len(human_labels(store)) == 4


def test_shutdown_publishes_and_restart_resumes(store, tokens, tmp_path):
    alice, bob = tokens["alice"], tokens["bob"]
    order = expected_order(store)
    with TestClient(create_app(store, make_config(tmp_path))) as client:
        for _ in range(3):
            client.post("/api/labels", headers=bearer(alice), json=label_body(next_task(client, alice)))
        client.post("/api/labels", headers=bearer(bob), json=label_body(next_task(client, bob), 1, 0))
    assert len(human_labels(store)) == 4                      # published on shutdown
    with TestClient(create_app(store, make_config(tmp_path))) as client:
        assert next_task(client, alice)["instance_id"] == order[3]
        assert next_task(client, bob)["instance_id"] == order[1]
        assert client.get("/api/me", headers=bearer(alice)).json()["remaining"] == len(order) - 3
    manifests = "".join(json.dumps(store.manifest(f"human_labels@v{v}")) for v in store.versions("human_labels"))
    assert all(token not in manifests for token in tokens.values())


def test_journal_replay_publishes_each_label_once(store, tokens, tmp_path, caplog):
    alice = tokens["alice"]
    journal = tmp_path / "state" / "labels.journal"
    with TestClient(create_app(store, make_config(tmp_path))) as client:
        for _ in range(3):
            assert client.post("/api/labels", headers=bearer(alice), json=label_body(next_task(client, alice))
                               ).status_code == 201
        written = journal.read_bytes()
        assert len(written.splitlines()) == 3
        with pytest.raises(OSError, match="in use by another `dspo label serve`"):
            create_app(store, make_config(tmp_path))
        assert client.app.state.labelling.book.flush() == "human_labels@v1"
        assert journal.read_bytes() == b""                      # published: nothing left to replay
    # A kill after the publish but before the journal was shortened, and during the next append;
    # plus a label of a task this server does not serve (it was started on other instances).
    foreign = {**json.loads(written.splitlines()[0]), "instance_id": "elsewhere"}
    journal.write_bytes(written + json.dumps(foreign).encode() + b'\n{"annotator": "al')
    with TestClient(create_app(store, make_config(tmp_path))) as client:
        assert client.app.state.labelling.book.pending == []
        assert client.get("/api/me", headers=bearer(alice)).json()["labelled"] == 3
    assert store.versions("human_labels") == [1] and len(human_labels(store)) == 3
    assert [json.loads(line) for line in journal.read_bytes().splitlines()] == [foreign]
    assert "1 journalled label(s) are no task of" in caplog.text and "unfinished last line" in caplog.text


def test_failed_publish_keeps_labels_and_saves_them_on_exit(store, tokens, tmp_path, monkeypatch):
    alice = tokens["alice"]

    def refuse(*args, **kwargs):
        raise OSError("store unreachable")

    with TestClient(create_app(store, make_config(tmp_path))) as client:
        for _ in range(2):
            client.post("/api/labels", headers=bearer(alice), json=label_body(next_task(client, alice), 1, 2))
        monkeypatch.setattr(book_module, "import_rows", refuse)
        book = client.app.state.labelling.book
        with pytest.raises(OSError):
            book.flush()
        assert len(book.pending) == 2
        stats = client.get("/api/stats", headers=bearer(alice)).json()
        assert stats["waiting"] == 2 and "store unreachable" in stats["last_error"]
    monkeypatch.undo()
    saved = list((tmp_path / "state").glob("unpublished-*.csv"))
    assert len(saved) == 1
    report = import_labels(store, saved[0])
    assert (report.accepted, report.ref, report.rejected) == (2, "human_labels@v1", [])
    assert {row["annotator"] for row in human_labels(store)} == {"alice"}


def test_stats_agreement(client, tokens):
    alice, bob = tokens["alice"], tokens["bob"]
    for index in range(4):
        task = next_task(client, alice)
        client.post("/api/labels", headers=bearer(alice), json=label_body(task, 0, 1))
        # bob agrees on best for the first three, on worst for the first two.
        client.post("/api/labels", headers=bearer(bob), json=label_body(task, 0 if index < 3 else 2,
                                                                        1 if index < 2 else 3))
    stats = client.get("/api/stats", headers=bearer(alice)).json()
    assert stats["labels"] == 8 and stats["shared_instances"] == 4
    assert stats["per_annotator"] == {"alice": {"labels": 4, "hallucinations": 0},
                                      "bob": {"labels": 4, "hallucinations": 0}}
    assert (stats["best_agreement"], stats["worst_agreement"], stats["hallucination_agreement"]) == (0.75, 0.5, 1.0)
    assert stats["pairs"][0]["annotators"] == ["alice", "bob"] and stats["pairs"][0]["shared"] == 4
    assert stats["waiting"] == 8 and stats["published"] is None
    login(client, alice)
    page = client.get("/stats")
    assert page.status_code == 200 and "75%" in page.text and "alice · bob" in page.text


def test_fleiss_kappa():
    assert fleiss_kappa([[0, 0], [1, 1]]) == pytest.approx(1.0)
    assert fleiss_kappa([[0, 1], [1, 0]]) == pytest.approx(-1.0)
    assert fleiss_kappa([[0, 0]]) is None and fleiss_kappa([[0, 0], [0, 0]]) is None
    # Fleiss (1971)-style check: 3 raters, varying agreement.
    assert fleiss_kappa([[0, 0, 0], [0, 0, 1], [1, 1, 1], [1, 1, 0]]) == pytest.approx(1 / 3)


def test_cli_add_annotator_and_label_alias(store, tmp_path):
    runner = CliRunner()
    state = str(tmp_path / "cli-state")
    result = runner.invoke(dspo, ["label", "add-annotator", "carol", "--state-dir", state])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert len(token) >= 40 and "\n" not in token
    saved = Path(state, "annotators.json")
    assert token not in saved.read_text() and saved.stat().st_mode & 0o777 == 0o600
    assert Annotators(Path(state)).who(token) == "carol"
    again = runner.invoke(dspo, ["label", "add-annotator", "carol", "--state-dir", state])
    assert again.exit_code == 2 and "--replace" in again.stderr
    assert runner.invoke(dspo, ["label", "add-annotator", "../x", "--state-dir", state]).exit_code == 2
    replaced = runner.invoke(dspo, ["label", "add-annotator", "carol", "--replace", "--state-dir", state])
    assert replaced.exit_code == 0 and Annotators(Path(state)).who(token) is None
    out = tmp_path / "ls"
    result = runner.invoke(dspo, ["label", "export", "--format", "label-studio", "--to", str(out), "--limit", "2",
                                  "--store", store.uri])
    assert result.exit_code == 0, result.output
    assert len(json.loads((out / "tasks.json").read_text())) == 2 and (out / "label_config.xml").exists()
    assert runner.invoke(dspo, ["labels", "serve", "--help"]).exit_code == 0
