"""A stale `_latest` hint, in either direction, never resolves to a version that does not exist."""
from __future__ import annotations

import logging

import pyarrow as pa

from storage import DatasetStore


def publish_versions(store: DatasetStore, count: int) -> None:
    for index in range(count):
        store.publish("d", pa.table({"value": [index]}))


def set_hint(store: DatasetStore, value: str) -> None:
    current = store.backend.get("d/_latest")
    assert store.backend.swap("d/_latest", value.encode(), current[1] if current else None)


def test_hint_behind_the_last_commit_is_walked_past(store):
    publish_versions(store, 3)
    set_hint(store, "1")
    assert store.resolve("d@latest") == "d@v3"
    assert store.publish("d", pa.table({"value": [9]})) == "d@v4"


def test_hint_past_the_last_commit_falls_back_to_the_manifests(store, caplog):
    publish_versions(store, 2)
    set_hint(store, "7")
    with caplog.at_level(logging.WARNING, logger="storage"):
        assert store.resolve("d@latest") == "d@v2"
    assert "names v7, which has no manifest" in caplog.text
    assert store.read_arrow("d@latest").column("value").to_pylist() == [1]
    # The next publish takes the next free version, not one past the stale hint, and repairs it.
    assert store.publish("d", pa.table({"value": [9]})) == "d@v3"
    assert store.backend.get("d/_latest")[0] == b"3"
    assert store.versions("d") == [1, 2, 3]


def test_hint_at_a_version_whose_manifest_is_gone_falls_back(store, location, caplog):
    publish_versions(store, 3)
    store.backend.delete("d/_manifests/v=0003.json")
    fresh = DatasetStore(*location)  # nothing cached: it sees only what is stored
    with caplog.at_level(logging.WARNING, logger="storage"):
        assert fresh.resolve("d@latest") == "d@v2"
    assert "names v3, which has no manifest" in caplog.text
