"""The backend interface: small control objects with conditional writes, plus a pyarrow
filesystem for the Parquet data files. Keys are '/'-separated and relative to the store root."""
from __future__ import annotations

import abc
from dataclasses import dataclass
from datetime import datetime

import pyarrow.fs as pafs


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its key relative to the root, size in bytes, last modification (UTC)."""

    key: str
    size: int
    modified: datetime


class Backend(abc.ABC):
    """Storage primitives the dataset store is built on.

    Control objects (manifests, `_latest`, tags) go through `get`/`create`/`swap`, whose
    conditional semantics make the commit protocol safe under concurrent writers.
    Data files go through `arrow_fs` at `data_path(key)`.
    """

    #: URI of the store root, safe to print (never holds credentials).
    uri: str
    #: pyarrow filesystem for data files.
    arrow_fs: pafs.FileSystem
    #: True: parts are built in memory and written with one `write_file` call (retryable as a
    #: whole); False: parts stream straight to `arrow_fs`.
    buffers_parts: bool = False
    #: True: the first write creates a missing root (a folder); False: it must exist beforehand
    #: (an S3 bucket, which this store never creates).
    creates_root: bool = True

    @abc.abstractmethod
    def data_path(self, key: str) -> str:
        """Path of `key` inside `arrow_fs`."""

    @abc.abstractmethod
    def url(self, key: str) -> str:
        """A URL other tools (pandas, datasets, fsspec) can open, given `fsspec_options()`."""

    def fsspec_options(self) -> dict:
        """fsspec storage_options for `url(key)`; holds credentials only if they were passed in."""
        return {}

    @abc.abstractmethod
    def missing_root(self) -> str | None:
        """Why the store root is not there to read (e.g. "the folder does not exist"), or None
        when it is. Reads of an absent root see nothing and create nothing; only writes create it."""

    @abc.abstractmethod
    def get(self, key: str) -> tuple[bytes, str] | None:
        """(content, version token) of a control object, or None if it does not exist."""

    @abc.abstractmethod
    def create(self, key: str, data: bytes) -> bool:
        """Write `key` only if absent. True if this call created it, False if it existed."""

    @abc.abstractmethod
    def swap(self, key: str, data: bytes, token: str | None) -> bool:
        """Compare-and-swap: replace `key` only if its token is still `token` (None: only if absent)."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Delete `key`; a missing key is not an error."""

    @abc.abstractmethod
    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object under `prefix` (recursive), in no particular order."""

    @abc.abstractmethod
    def children(self, prefix: str) -> list[str]:
        """Names of the immediate sub-folders of `prefix`."""

    def write_file(self, key: str, data) -> None:
        """Write a whole data file (bytes or a pyarrow Buffer)."""
        with self.arrow_fs.open_output_stream(self.data_path(key)) as out:
            out.write(data)

    def read_file(self, key: str) -> bytes:
        with self.arrow_fs.open_input_stream(self.data_path(key)) as src:
            return src.read()

    def close(self) -> None:
        """Release clients and connections."""
