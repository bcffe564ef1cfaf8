"""A separate process that writes to a store, for concurrency and crash tests.

    python store_worker.py publish-many URI NAME WRITER COUNT
        publishes COUNT one-row versions of NAME, each row naming (WRITER, index).
    python store_worker.py publish-then-hang URI NAME READY_FILE
        starts a multi-part publish, and once some parts are uploaded touches READY_FILE
        and sleeps forever before the manifest is written (the test kills it there).

S3 endpoint and credentials come from the environment (AWS_ENDPOINT_URL, ...).
"""
from __future__ import annotations

import pathlib
import sys
import time

import pyarrow as pa

from storage import DatasetStore


def publish_many(uri: str, name: str, writer: str, count: int) -> None:
    store = DatasetStore(uri)
    for index in range(count):
        store.publish(name, pa.table({"writer": [writer], "index": [index]}))


def publish_then_hang(uri: str, name: str, ready_file: str) -> None:
    store = DatasetStore(uri, max_part_bytes=1)

    def batches():
        for index in range(3):
            yield pa.RecordBatch.from_pydict({"value": list(range(index * 64, index * 64 + 64))})
        # Each full row group closed a part and uploaded it; the manifest comes only after the last batch.
        pathlib.Path(ready_file).touch()
        while True:
            time.sleep(60)
            yield pa.RecordBatch.from_pydict({"value": [0]})

    store.publish(name, batches(), row_group_rows=64)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "publish-many":
        publish_many(args[0], args[1], args[2], int(args[3]))
    elif command == "publish-then-hang":
        publish_then_hang(*args)
    else:
        raise SystemExit(f"unknown command {command}")
