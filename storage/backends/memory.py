"""In-process memory backend (`memory://name`), over fsspec's MemoryFileSystem.

fsspec keeps one global memory store, so two DatasetStore objects on the same
`memory://` URI in one process see the same datasets. One lock serialises the
conditional writes.
"""
from __future__ import annotations

import hashlib
import threading
from datetime import datetime, timezone

import fsspec
import pyarrow.fs as pafs

from storage.backends.base import Backend, ObjectInfo

_LOCK = threading.Lock()


class MemoryBackend(Backend):
    """Backend over fsspec's in-process memory filesystem.

    Arguments:
        root: the part after `memory://` (e.g. "scratch/run1").
    """

    def __init__(self, root: str):
        self.fs = fsspec.filesystem("memory")
        self.root = "/" + root.strip("/")
        self.uri = "memory:/" + self.root
        self.arrow_fs = pafs.PyFileSystem(pafs.FSSpecHandler(self.fs))

    def missing_root(self) -> str | None:
        """The store exists once something was written under its root in this process: like a
        folder, a name nothing was published to is more likely a typo than an empty store."""
        return None if self.fs.exists(self.root) else "nothing was written under it in this process"

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    def data_path(self, key: str) -> str:
        return self._path(key)

    def url(self, key: str) -> str:
        return "memory://" + self._path(key)

    def get(self, key: str) -> tuple[bytes, str] | None:
        try:
            data = self.fs.cat_file(self._path(key))
        except FileNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()

    def create(self, key: str, data: bytes) -> bool:
        with _LOCK:
            if self.fs.exists(self._path(key)):
                return False
            self.fs.pipe_file(self._path(key), data)
            return True

    def swap(self, key: str, data: bytes, token: str | None) -> bool:
        with _LOCK:
            current = self.get(key)
            if (current[1] if current else None) != token:
                return False
            self.fs.pipe_file(self._path(key), data)
            return True

    def delete(self, key: str) -> None:
        try:
            self.fs.rm_file(self._path(key))
        except FileNotFoundError:
            pass

    def list(self, prefix: str) -> list[ObjectInfo]:
        base = self._path(prefix)
        if not self.fs.exists(base):
            return []
        found = []
        for path, info in self.fs.find(base, detail=True).items():
            created = info.get("created")
            modified = datetime.fromtimestamp(created, timezone.utc) if isinstance(created, (int, float)) else (
                created if isinstance(created, datetime) else datetime.now(timezone.utc))
            found.append(ObjectInfo(path[len(self.root) + 1:], int(info.get("size") or 0), modified))
        return found

    def children(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not self.fs.exists(base):
            return []
        return sorted(
            entry["name"].rstrip("/").rsplit("/", 1)[-1]
            for entry in self.fs.ls(base, detail=True)
            if entry["type"] == "directory"
        )
