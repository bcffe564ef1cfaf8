"""Moving versions out of the store and cleaning up after it: Hugging Face datasets,
local copies, checksum verification and garbage collection of orphaned files."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from storage.backends.local import TEMP_MARK, LocalBackend
from storage.errors import ChecksumMismatchError, ManifestError, StoreError
from storage.scratch import SCRATCH_FOLDER

if TYPE_CHECKING:
    from storage.store import DatasetStore

log = logging.getLogger("storage")
PULL_FORMATS = ("parquet", "hf")


def cache_root(cache_dir: str | None = None) -> str:
    return os.path.abspath(os.path.expanduser(
        cache_dir or os.environ.get("DSPO_CACHE") or os.path.join("~", ".cache", "dspo")))


def _check(data: bytes, item: dict, where: str) -> None:
    if len(data) != item["bytes"] or hashlib.sha256(data).hexdigest() != item["sha256"]:
        raise ChecksumMismatchError(f"{where}: content does not match its manifest (size or sha256)")


def local_files(store: "DatasetStore", ref: str, cache_dir: str | None = None) -> list[str]:
    """Local paths of a version's files: in place for a local store, else copied (and checked)
    into a cache keyed by checksum -- safe because published files never change."""
    manifest = store.manifest(ref)
    keys = [f"{manifest['name']}/{item['path']}" for item in manifest["files"]]
    if isinstance(store.backend, LocalBackend):
        return [store.backend.data_path(key) for key in keys]
    folder = os.path.join(cache_root(cache_dir), "files")
    os.makedirs(folder, exist_ok=True)
    paths = []
    for key, item in zip(keys, manifest["files"]):
        path = os.path.join(folder, f"{item['sha256']}.parquet")
        if not os.path.exists(path):
            data = store.backend.read_file(key)
            _check(data, item, store.backend.url(key))
            temp = f"{path}{TEMP_MARK}{uuid.uuid4().hex}"
            with open(temp, "wb") as handle:
                handle.write(data)
            os.replace(temp, path)
        paths.append(path)
    return paths


def hf_dataset(store: "DatasetStore", ref: str, columns: list[str] | None = None, cache_dir: str | None = None):
    """A `datasets.Dataset` over a version's files; image columns decode to PIL."""
    import datasets

    files = local_files(store, ref, cache_dir)
    dataset = datasets.load_dataset(
        "parquet", data_files=files, split="train", cache_dir=os.path.join(cache_root(cache_dir), "hf"))
    return dataset.select_columns(columns) if columns is not None else dataset


def pull(store: "DatasetStore", ref: str, to: str, format: str = "parquet") -> str:
    """Write a version to the folder `to` (created; must be empty or absent).

    parquet: the data files plus `manifest.json`; hf: `Dataset.save_to_disk` plus `manifest.json`.
    Returns the folder.
    """
    if format not in PULL_FORMATS:
        raise StoreError(f"unknown pull format {format!r}; use one of {', '.join(PULL_FORMATS)}")
    pinned = store.resolve(ref)
    manifest = store.manifest(pinned)
    if os.path.isdir(to) and os.listdir(to):
        raise StoreError(f"cannot pull {pinned} into {to}: the folder is not empty")
    os.makedirs(to, exist_ok=True)
    if format == "parquet":
        for source, item in zip(local_files(store, pinned), manifest["files"]):
            shutil.copyfile(source, os.path.join(to, os.path.basename(item["path"])))
    else:
        hf_dataset(store, pinned).save_to_disk(to)
    with open(os.path.join(to, "manifest.json"), "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=1, sort_keys=True)
    return to


def verify(store: "DatasetStore", ref: str) -> None:
    manifest = store.manifest(ref)
    for item in manifest["files"]:
        key = f"{manifest['name']}/{item['path']}"
        _check(store.backend.read_file(key), item, store.backend.url(key))


def _is_control(key: str) -> bool:
    parts = key.split("/")
    return len(parts) >= 2 and parts[1] in ("_manifests", "_tags", "_latest")


def collect_garbage(store: "DatasetStore", older_than: float = 3600.0, dry_run: bool = False,
                    scratch_older_than: float = 7 * 86400.0) -> list[str]:
    """Delete objects that no manifest lists and that are older than `older_than` seconds:
    parts of crashed or losing publishes, stale probe objects and temp files; and scratch
    tables older than `scratch_older_than`. Datasets with an unreadable manifest are left
    alone. Returns the deleted (or, with dry_run, deletable) keys."""
    now = datetime.now(timezone.utc)
    backend = store.backend
    doomed = []
    for folder in backend.children(""):
        threshold = scratch_older_than if folder == SCRATCH_FOLDER else older_than
        cutoff = now - timedelta(seconds=threshold)
        objects = backend.list(folder)
        referenced: set[str] = set()
        if not folder.startswith("_"):
            try:
                for version in store.versions(folder):
                    manifest = store.manifest(f"{folder}@v{version}")
                    referenced.update(f"{folder}/{item['path']}" for item in manifest["files"])
            except ManifestError as exc:
                log.warning("gc: skipping dataset %s: %s", folder, exc)
                continue
        for info in objects:
            stale = info.modified < cutoff
            if not stale or info.key in referenced:
                continue
            if _is_control(info.key) and TEMP_MARK not in info.key:
                continue
            doomed.append(info.key)
    if not dry_run:
        for key in doomed:
            backend.delete(key)
    log.info("gc: %s %d unreferenced objects", "would delete" if dry_run else "deleted", len(doomed))
    return doomed
