"""gc beside running publishes: whatever `older_than` is, it never deletes what a committed
manifest lists or what a publish in progress will list (file:// and moto's S3 server)."""
from __future__ import annotations

import threading
import time

import pyarrow as pa
import pytest

from storage import DatasetStore
from store_params import store_location

RACE_SECONDS = 4.0


def publish_until(store: DatasetStore, writer: str, stop: threading.Event, errors: list, refs: list) -> None:
    index = 0
    try:
        while not stop.is_set():
            # Several parts per publish: the window between the first part and the commit is wide.
            batches = [pa.RecordBatch.from_pydict({"writer": [writer] * 8, "index": [index] * 8, "row": list(range(8))})
                       for _ in range(3)]
            refs.append((store.publish("race", batches, row_group_rows=8), writer, index))
            index += 1
    except Exception as exc:  # the test reports every failure, not just the first thread's
        errors.append(exc)


def read_latest_until(store: DatasetStore, stop: threading.Event, errors: list) -> None:
    try:
        while not stop.is_set():
            if store.versions("race"):
                store.read_arrow("race@latest")
    except Exception as exc:
        errors.append(exc)


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_gc_at_zero_beside_two_publishers_keeps_every_committed_version(kind, tmp_path, request):
    uri, options = store_location(kind, tmp_path, request)
    stores = [DatasetStore(uri, options, max_part_bytes=1) for _ in range(4)]
    stop, errors, refs = threading.Event(), [], []
    threads = [threading.Thread(target=publish_until, args=(stores[i], writer, stop, errors, refs))
               for i, writer in enumerate("ab")]
    threads.append(threading.Thread(target=read_latest_until, args=(stores[2], stop, errors)))
    for thread in threads:
        thread.start()
    collector, deleted = stores[3], []
    deadline = time.monotonic() + RACE_SECONDS
    try:
        while time.monotonic() < deadline and not errors:
            deleted += collector.gc(older_than=0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
    assert errors == []
    assert len(refs) >= 4, "the race published too little to test anything"
    deleted += collector.gc(older_than=0)

    check = DatasetStore(uri, options)
    assert check.versions("race") == list(range(1, len(refs) + 1))
    for ref, writer, index in refs:
        check.verify(ref)
        rows = check.read_arrow(ref).to_pylist()
        assert len(rows) == 24 and {(row["writer"], row["index"]) for row in rows} == {(writer, index)}
    assert check.read_arrow("race@latest").num_rows == 24
    # Nothing of a finished publish is left for gc to spare: no marker outlives its commit.
    assert [info.key for info in check.backend.list("race/_txns")] == []


def test_gc_collects_a_dead_writers_parts_only_after_txn_timeout(tmp_path):
    store = DatasetStore(str(tmp_path / "s"))
    store.publish("d", pa.table({"value": [1]}))
    store.backend.create("d/_txns/deadbeef", b"")
    store.backend.write_file("d/v=0002/part-00000-deadbeef.parquet", b"half a part")
    store.backend.write_file("d/v=0002/part-00000-0ddba11.parquet", b"an orphan with no marker")
    assert store.gc(older_than=0) == ["d/v=0002/part-00000-0ddba11.parquet"]
    assert sorted(store.gc(older_than=0, txn_timeout=0)) == ["d/_txns/deadbeef", "d/v=0002/part-00000-deadbeef.parquet"]
    assert store.read_arrow("d@latest").num_rows == 1
