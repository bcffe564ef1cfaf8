"""Concurrent writers in separate processes, and a writer killed mid-publish, on file:// and s3://."""
from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pytest

from storage import DatasetStore
from store_params import store_location

WORKER = str(pathlib.Path(__file__).parent / "support" / "store_worker.py")
PROJECT_ROOT = str(pathlib.Path(__file__).resolve().parents[1])


def two_row_table() -> pa.Table:
    return pa.table({"value": [1, 2]})


def worker_env(request, kind: str) -> dict:
    env = dict(os.environ, PYTHONPATH=PROJECT_ROOT)
    if kind == "s3":
        env.update(request.getfixturevalue("s3_server").env())
    return env


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_two_processes_publish_40_contiguous_versions(kind, tmp_path, request):
    uri, options = store_location(kind, tmp_path, request)
    env = worker_env(request, kind)
    workers = [
        subprocess.Popen([sys.executable, WORKER, "publish-many", uri, "race", writer, "20"], env=env)
        for writer in ("a", "b")
    ]
    for worker in workers:
        assert worker.wait(timeout=300) == 0
    store = DatasetStore(uri, options)
    assert store.versions("race") == list(range(1, 41))
    assert store.resolve("race@latest") == "race@v40"
    rows = {(row["writer"], row["index"]) for version in range(1, 41)
            for row in store.read_arrow(f"race@v{version}").to_pylist()}
    assert rows == {(writer, index) for writer in "ab" for index in range(20)}


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_writer_killed_before_manifest_leaves_nothing_visible(kind, tmp_path, request):
    uri, options = store_location(kind, tmp_path, request)
    store = DatasetStore(uri, options)
    store.publish("crash", two_row_table())
    ready = tmp_path / "ready"
    worker = subprocess.Popen([sys.executable, WORKER, "publish-then-hang", uri, "crash", str(ready)],
                              env=worker_env(request, kind))
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert worker.poll() is None, "worker exited before it was killed"
        assert time.monotonic() < deadline
        time.sleep(0.1)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)

    orphans = [info.key for info in store.backend.list("crash") if "/v=" in info.key and "/_" not in info.key]
    assert len(orphans) >= 3 + 1  # the orphaned parts, beside v1's one part
    assert store.versions("crash") == [1]
    assert store.resolve("crash@latest") == "crash@v1"
    assert store.read_arrow("crash@latest").num_rows == 2

    assert store.gc(older_than=3600) == []  # too recent: an in-flight writer is never harmed
    assert store.gc(older_than=0) == []  # its txn marker is younger than txn_timeout: maybe still writing
    deleted = store.gc(older_than=0, txn_timeout=0)
    markers = [key for key in deleted if "/_txns/" in key]
    assert len(markers) == 1 and len(deleted) - 1 == len(orphans) - 1
    assert all(key.endswith(".parquet") for key in deleted if key not in markers)
    assert store.read_arrow("crash@v1").num_rows == 2
    assert store.publish("crash", two_row_table()) == "crash@v2"
