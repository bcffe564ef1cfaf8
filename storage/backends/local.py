"""Local filesystem backend (`file:///path` or a plain path).

Create-if-absent is a temp file plus `os.link` (atomic, fails if the target exists);
compare-and-swap holds an `fcntl` lock on a sidecar `~lock` file (not listed) and replaces with `os.replace`,
so a reader never sees a half-written object.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import uuid
from datetime import datetime, timezone

import pyarrow.fs as pafs

from storage.backends.base import Backend, ObjectInfo


# '~' never appears in dataset names or tags, so these never collide with store objects.
LOCK_SUFFIX = "~lock"
TEMP_MARK = "~tmp-"


def _token(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class LocalBackend(Backend):
    """Backend over a local directory.

    Arguments:
        root: absolute path of the store root; the first write creates it, opening and reading
              never do (a mistyped path must not become an empty store).
    """

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.uri = "file://" + self.root
        self.arrow_fs = pafs.LocalFileSystem()

    def missing_root(self) -> str | None:
        """The store exists when its root folder does."""
        if os.path.isdir(self.root):
            return None
        if os.path.lexists(self.root):
            return "it is a file, not a folder"
        return "the folder does not exist"

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *key.split("/"))

    def data_path(self, key: str) -> str:
        # pyarrow's local output streams need the folder; readers only ask for files a manifest
        # or a listing named, whose folders exist, so this creates folders for writes alone.
        path = self._path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    def url(self, key: str) -> str:
        return self._path(key)

    def get(self, key: str) -> tuple[bytes, str] | None:
        try:
            with open(self._path(key), "rb") as handle:
                data = handle.read()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return data, _token(data)

    def _write_temp(self, path: str, data: bytes) -> str:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        temp = f"{path}{TEMP_MARK}{uuid.uuid4().hex}"
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return temp

    def create(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        temp = self._write_temp(path, data)
        try:
            os.link(temp, path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(temp)

    def swap(self, key: str, data: bytes, token: str | None) -> bool:
        path = self._path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + LOCK_SUFFIX, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self.get(key)
            if (current[1] if current else None) != token:
                return False
            os.replace(self._write_temp(path, data), path)
            return True

    def write_file(self, key: str, data) -> None:
        """Temp file + rename: a crash mid-write never leaves a truncated file at `key`."""
        path = self.data_path(key)
        os.replace(self._write_temp(path, memoryview(data)), path)

    def delete(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass

    def list(self, prefix: str) -> list[ObjectInfo]:
        base = self._path(prefix) if prefix else self.root
        found = []
        for folder, _, files in os.walk(base):
            for filename in files:
                if filename.endswith(LOCK_SUFFIX):
                    continue
                full = os.path.join(folder, filename)
                try:
                    stat = os.stat(full)
                except FileNotFoundError:
                    continue
                key = os.path.relpath(full, self.root).replace(os.sep, "/")
                found.append(ObjectInfo(key, stat.st_size, datetime.fromtimestamp(stat.st_mtime, timezone.utc)))
        return found

    def children(self, prefix: str) -> list[str]:
        base = self._path(prefix) if prefix else self.root
        try:
            return sorted(entry.name for entry in os.scandir(base) if entry.is_dir())
        except (FileNotFoundError, NotADirectoryError):
            return []
