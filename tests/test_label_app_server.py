"""The labelling app as its own process (`dspo label serve`, driven over plain HTTP): labels
acknowledged with 201 survive a SIGKILL and are published exactly once; a request body is not
read before its sender is authenticated and is capped (RSS measured); query strings never
reach the log."""
from __future__ import annotations

import http.client
import json
import re
import shutil
import signal
import socket
import threading
from pathlib import Path

import pytest
from test_label_app import Server, built_store, stopping_servers, wait_for_labels

from pipeline.labels.app import Annotators
from storage import DatasetNotFoundError, DatasetStore

BODY = 50 << 20           # the 50 MB POST of the report
RSS_SLACK = 16 << 20      # what one request may add to the server's RSS (allocator noise, caches)
KEEP = ("--batch-size", "1000", "--batch-seconds", "3600")   # publish only on exit: a SIGKILL loses the buffer
SOON = ("--batch-size", "1000", "--batch-seconds", "0.5")



@pytest.fixture
def servers():
    yield from stopping_servers()

@pytest.fixture
def world(tmp_path_factory, tmp_path) -> tuple[Path, Path, dict[str, str]]:
    """(a private copy of the built store, the state folder, tokens of alice and bob)."""
    store = tmp_path / "store"
    shutil.copytree(built_store(tmp_path_factory), store)
    annotators = Annotators(tmp_path / "state")
    return store, tmp_path / "state", {name: annotators.add(name) for name in ("alice", "bob")}


def call(server: Server, method: str, path: str, token: str | None = None, body: dict | None = None):
    """(status, JSON answer or text) of one request."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if body is not None:
        headers["Content-Type"] = "application/json"
    connection.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
    response = connection.getresponse()
    data = response.read().decode()
    connection.close()
    try:
        return response.status, json.loads(data)
    except ValueError:
        return response.status, data


def post_next_label(server: Server, token: str) -> dict:
    """Label the caller's next task (best A, worst B); the acknowledged label."""
    status, answer = call(server, "GET", "/api/tasks/next", token)
    assert status == 200, answer
    task = answer["task"]
    label = {"instance_id": task["instance_id"], "best": task["candidates"][0]["id"],
             "worst": task["candidates"][1]["id"]}
    status, answer = call(server, "POST", "/api/labels", token, label)
    assert status == 201, answer
    return {**label, "annotator": answer["annotator"]}


def published(store: DatasetStore) -> list[dict]:
    try:
        return store.read_arrow("human_labels@latest").to_pylist()
    except DatasetNotFoundError:
        return []


def assert_published_once(store: DatasetStore, acknowledged: list[dict]) -> None:
    rows = published(store)
    keys = [(row["annotator"], row["instance_id"]) for row in rows]
    assert len(keys) == len(set(keys)), "a label was published twice"
    by_key = {(row["annotator"], row["instance_id"]): (row["best"], row["worst"]) for row in rows}
    for label in acknowledged:
        assert by_key.get((label["annotator"], label["instance_id"])) == (label["best"], label["worst"]), label
    assert len(rows) == len(acknowledged)


def test_acknowledged_labels_survive_sigkill_and_are_published_once(world, tmp_path, servers):
    store_path, state, tokens = world
    store = DatasetStore(str(store_path))
    servers.append(Server(store_path, state, tmp_path / "server-1.log", *KEEP))
    acknowledged = [post_next_label(servers[-1], tokens[name]) for name in ["alice", "bob", "alice"] * 4]
    servers[-1].stop(signal.SIGKILL)                  # right after the last 201
    assert published(store) == []                     # nothing was published: only the journal holds them
    journal = state / "labels.journal"
    assert journal.stat().st_mode & 0o777 == 0o600 and all(token not in journal.read_text()
                                                            for token in tokens.values())

    servers.append(Server(store_path, state, tmp_path / "server-2.log", *SOON))
    assert len(wait_for_labels(store, len(acknowledged))) == len(acknowledged)
    assert_published_once(store, acknowledged)
    assert call(servers[-1], "GET", "/api/me", tokens["alice"])[1]["labelled"] == 8
    # Killed again right after more 201s, with a publish due any moment: none lost, none twice.
    acknowledged += [post_next_label(servers[-1], tokens["bob"]) for _ in range(3)]
    servers[-1].stop(signal.SIGKILL)
    servers.append(Server(store_path, state, tmp_path / "server-3.log", *SOON))
    wait_for_labels(store, len(acknowledged))
    servers[-1].stop()
    assert_published_once(store, acknowledged)
    # A fourth start finds nothing left to publish: the journal was emptied as labels were published.
    versions = store.versions("human_labels")
    servers.append(Server(store_path, state, tmp_path / "server-4.log", *SOON))
    servers[-1].stop()
    assert store.versions("human_labels") == versions and journal.read_text() == ""
    store.close()


def rss(server: Server) -> int:
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) << 10


def send_large(server: Server, path: str, headers: dict[str, str], size: int = BODY, chunked: bool = False) -> str:
    """POST `size` bytes to `path` while reading the answer; its status line."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    framing = {"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(size)}
    head = "".join(f"{name}: {value}\r\n" for name, value in {**headers, **framing}.items())
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}\r\n".encode())
    answer = bytearray()
    reader = threading.Thread(target=lambda: answer.extend(_read_head(sock)))
    reader.start()
    piece = b" " * (1 << 20)
    try:
        for _ in range(size // len(piece)):
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        if chunked:
            sock.sendall(b"0\r\n\r\n")
    except OSError:        # the server answered and closed: the rest was never wanted
        pass
    reader.join(60)
    sock.close()
    return bytes(answer).split(b"\r\n", 1)[0].decode()


def _read_head(sock: socket.socket) -> bytes:
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    return data


def test_bodies_are_not_read_before_authentication_and_are_capped(world, tmp_path, servers, record_property):
    store_path, state, tokens = world
    server = Server(store_path, state, tmp_path / "server.log")
    servers.append(server)
    json_type = {"Content-Type": "application/json"}
    form_type = {"Content-Type": "application/x-www-form-urlencoded"}
    bearer = {"Authorization": f"Bearer {tokens['alice']}"}
    post_next_label(server, tokens["alice"])           # warm: every route and the publisher have run once
    before = rss(server)
    figures = {}
    cases = [  # (what, path, headers, chunked, expected status line)
        ("unauthenticated JSON", "/api/labels", json_type, False, "HTTP/1.1 401 Unauthorized"),
        ("unauthenticated form", "/label", form_type, False, "HTTP/1.1 303 See Other"),
        ("wrong token", "/api/labels", {**json_type, "Authorization": "Bearer nope"}, False,
         "HTTP/1.1 401 Unauthorized"),
        ("login form", "/login", form_type, False, "HTTP/1.1 413 Request Entity Too Large"),
        ("authenticated", "/api/labels", {**json_type, **bearer}, False, "HTTP/1.1 413 Request Entity Too Large"),
        ("authenticated chunked", "/api/labels", {**json_type, **bearer}, True,
         "HTTP/1.1 413 Request Entity Too Large"),
    ]
    for what, path, headers, chunked, expected in cases:
        assert send_large(server, path, headers, chunked=chunked) == expected, what
        figures[what] = rss(server) - before
    summary = ", ".join(f"{what} +{grown / 2**20:.1f} MiB" for what, grown in figures.items())
    print(f"server RSS {before / 2**20:.0f} MiB before the 50 MB POSTs; after each: {summary}")
    record_property("rss_growth", summary)
    assert max(figures.values()) < RSS_SLACK, summary
    assert post_next_label(server, tokens["alice"])     # the server still labels


def test_query_strings_never_reach_the_log(world, tmp_path, servers):
    store_path, state, tokens = world
    server = Server(store_path, state, tmp_path / "server.log")
    servers.append(server)
    alice = tokens["alice"]
    assert call(server, "GET", f"/api/me?token={alice}")[0] == 401          # a token in the URL is refused
    assert call(server, "GET", f"/api/tasks/next?token={alice}&x=1", alice)[0] == 200
    assert call(server, "GET", f"/nosuchpage?{alice}")[0] == 404
    server.stop()
    log = (tmp_path / "server.log").read_text()
    assert alice not in log
    assert '"GET /api/me?[redacted] HTTP/1.1" 401' in log and '"GET /api/tasks/next?[redacted] HTTP/1.1" 200' in log
