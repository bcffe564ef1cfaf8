"""Integrity of a version's data files against its manifest.

Every read checks each part's size (one listing per folder of parts) and row count (from the
Parquet footer, which the read needs anyway): a missing, truncated, extended or swapped part
fails before any row is returned. A flipped byte inside an uncompressed column keeps both
equal; only the sha256 of every byte (`verify_checksums`) sees it. `pull`, `to_hf_dataset`
and reads with `verify=True` (training) run that too; bench/store.py measures its cost.
"""
from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.dataset as pads

from storage import retry
from storage.backends import Backend
from storage.errors import ChecksumMismatchError
from storage.manifest import decode_schema
from storage.refs import format_ref

_CHUNK = 8 * 1024 * 1024


def _ref(manifest: dict) -> str:
    return format_ref(manifest["name"], manifest["version"])


def _mismatch(manifest: dict, item: dict, problem: str) -> ChecksumMismatchError:
    ref = _ref(manifest)
    return ChecksumMismatchError(f"{ref}: part {item['path']} {problem}; the file was changed or replaced "
                                 f"after the commit (`dspo datasets verify {ref}` checks every part)")


def checked_dataset(backend: Backend, manifest: dict) -> pads.Dataset:
    """A pyarrow Dataset over a version's parts, each checked for its manifest's size and rows.
    Raises ChecksumMismatchError naming the dataset, version and part that differs."""
    name = manifest["name"]
    sizes = {}
    for folder in sorted({item["path"].rsplit("/", 1)[0] for item in manifest["files"]}):
        sizes.update((info.key, info.size) for info in backend.list(f"{name}/{folder}"))
    parquet = pads.ParquetFileFormat()
    fragments = []
    for item in manifest["files"]:
        size = sizes.get(f"{name}/{item['path']}")
        if size is None:
            raise _mismatch(manifest, item, "is missing")
        if size != item["bytes"]:
            raise _mismatch(manifest, item, f"is {size} bytes, its manifest says {item['bytes']}")
        fragment = parquet.make_fragment(backend.data_path(f"{name}/{item['path']}"), backend.arrow_fs,
                                         file_size=size)
        try:
            fragment.ensure_complete_metadata()
        except (pa.ArrowInvalid, OSError) as exc:
            raise _mismatch(manifest, item, f"is not readable Parquet ({exc})") from exc
        if fragment.metadata.num_rows != item["rows"]:
            raise _mismatch(manifest, item, f"holds {fragment.metadata.num_rows} rows, its manifest says {item['rows']}")
        fragments.append(fragment)
    return pads.FileSystemDataset(fragments, decode_schema(manifest), parquet, backend.arrow_fs)


def check_bytes(data: bytes, manifest: dict, item: dict) -> None:
    """Raise ChecksumMismatchError unless `data` has the size and sha256 the manifest records for `item`."""
    if len(data) != item["bytes"]:
        raise _mismatch(manifest, item, f"is {len(data)} bytes, its manifest says {item['bytes']}")
    if hashlib.sha256(data).hexdigest() != item["sha256"]:
        raise _mismatch(manifest, item, "does not match its manifest's sha256")


def verify_checksums(backend: Backend, manifest: dict) -> None:
    """Stream every part of a version through sha256 and compare size and digest with the
    manifest (memory stays at one chunk). Raises ChecksumMismatchError naming the part."""
    for item in manifest["files"]:
        key = f"{manifest['name']}/{item['path']}"
        digest, size = retry.call(lambda: _digest(backend, key), what=f"verify {backend.url(key)}")
        if size != item["bytes"]:
            raise _mismatch(manifest, item, f"is {size} bytes, its manifest says {item['bytes']}")
        if digest != item["sha256"]:
            raise _mismatch(manifest, item, "does not match its manifest's sha256")


def _digest(backend: Backend, key: str) -> tuple[str, int]:
    """(sha256 hex digest, size) of a data file, read in chunks."""
    digest, size = hashlib.sha256(), 0
    with backend.arrow_fs.open_input_stream(backend.data_path(key)) as src:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size
