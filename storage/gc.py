"""Garbage collection: delete the objects no manifest lists and no live publish will list.

Safe beside running publishes, whatever `older_than` is (even 0), because of the order in
which it looks:
    1. list the objects (candidates for deletion);
    2. list the txn markers `<name>/_txns/<txn>` a publish writes before its first part and
       removes after its commit (or abort): parts of a live txn are spared;
    3. list the manifests and spare everything any of them lists.
A part seen in step 1 was written after its marker; if step 2 no longer sees that marker the
publish had committed before, so step 3 sees its manifest. A marker older than `txn_timeout`
(default 24 h) belongs to a writer that died: it and its parts are collected like orphans.
Temp files of conditional writes and conditional-write probes live for one request, but
one in flight must never be pulled from under its writer, so they too wait for `txn_timeout`.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from storage.backends.local import TEMP_MARK
from storage.errors import ManifestError
from storage.probe import PROBE_FOLDER
from storage.scratch import SCRATCH_FOLDER
from storage.writer import TXN_FOLDER, txn_of_part

if TYPE_CHECKING:
    from storage.store import DatasetStore

log = logging.getLogger("storage")
#: Age after which a publish's txn marker counts as left behind by a dead writer.
TXN_TIMEOUT = 24 * 3600.0
_CONTROL_FOLDERS = ("_manifests", "_tags", "_latest")


def _is_control(key: str) -> bool:
    parts = key.split("/")
    return len(parts) >= 2 and parts[1] in _CONTROL_FOLDERS


def _is_marker(key: str) -> bool:
    parts = key.split("/")
    return len(parts) == 3 and parts[1] == TXN_FOLDER


def collect_garbage(store: "DatasetStore", older_than: float = 3600.0, dry_run: bool = False,
                    scratch_older_than: float = 7 * 86400.0, txn_timeout: float = TXN_TIMEOUT) -> list[str]:
    """Delete objects older than `older_than` seconds that no manifest lists and no live
    publish wrote: parts of crashed or losing publishes, dead txn markers (older than
    `txn_timeout`), stale probe objects and temp files (also after `txn_timeout`); and scratch
    tables older than `scratch_older_than`. Datasets with an unreadable manifest are left
    alone. Returns the deleted (or, with dry_run, deletable) keys."""
    now = datetime.now(timezone.utc)
    backend = store.backend
    txn_cutoff = now - timedelta(seconds=txn_timeout)
    doomed = []
    for folder in backend.children(""):
        threshold = scratch_older_than if folder == SCRATCH_FOLDER else older_than
        cutoff = now - timedelta(seconds=threshold)
        objects = backend.list(folder)
        live_txns = set()
        referenced: set[str] = set()
        if not folder.startswith("_"):
            live_txns = {info.key.rsplit("/", 1)[-1] for info in backend.list(f"{folder}/{TXN_FOLDER}")
                         if info.modified >= txn_cutoff}
            try:
                for version in store.versions(folder):
                    manifest = store.manifest(f"{folder}@v{version}")
                    referenced.update(f"{folder}/{item['path']}" for item in manifest["files"])
            except ManifestError as exc:
                log.warning("gc: skipping dataset %s: %s", folder, exc)
                continue
        for info in objects:
            if info.modified >= cutoff or info.key in referenced:
                continue
            in_flight = TEMP_MARK in info.key or folder == PROBE_FOLDER or _is_marker(info.key)
            if in_flight and info.modified >= txn_cutoff:
                continue
            if _is_control(info.key) and TEMP_MARK not in info.key:
                continue
            if txn_of_part(info.key) in live_txns:
                continue
            doomed.append(info.key)
    if not dry_run:
        for key in doomed:
            backend.delete(key)
    log.info("gc: %s %d unreferenced objects", "would delete" if dry_run else "deleted", len(doomed))
    return doomed
