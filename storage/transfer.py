"""Moving versions out of the store: Hugging Face datasets, local copies and checksum
verification (garbage collection lives in storage.gc)."""
from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from typing import TYPE_CHECKING

from storage.backends.local import TEMP_MARK, LocalBackend
from storage.errors import StoreError
from storage.integrity import check_bytes, verify_checksums

if TYPE_CHECKING:
    from storage.store import DatasetStore

log = logging.getLogger("storage")
PULL_FORMATS = ("parquet", "hf")


def cache_root(cache_dir: str | None = None) -> str:
    return os.path.abspath(os.path.expanduser(
        cache_dir or os.environ.get("DSPO_CACHE") or os.path.join("~", ".cache", "dspo")))


def local_files(store: "DatasetStore", ref: str, cache_dir: str | None = None) -> list[str]:
    """Local paths of a version's files, each checked for its manifest's size and sha256: in
    place for a local store, else copied into a cache keyed by checksum -- safe because
    published files never change."""
    manifest = store.manifest(ref)
    keys = [f"{manifest['name']}/{item['path']}" for item in manifest["files"]]
    if isinstance(store.backend, LocalBackend):
        verify_checksums(store.backend, manifest)
        return [store.backend.data_path(key) for key in keys]
    folder = os.path.join(cache_root(cache_dir), "files")
    os.makedirs(folder, exist_ok=True)
    paths = []
    for key, item in zip(keys, manifest["files"]):
        path = os.path.join(folder, f"{item['sha256']}.parquet")
        if not os.path.exists(path):
            data = store.backend.read_file(key)
            check_bytes(data, manifest, item)
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
    verify_checksums(store.backend, store.manifest(ref))
