"""The files of the app's state folder: written atomically and durably, readable by the owner
only, and changed one writer at a time.

Several processes write the folder: the server (logins, logouts) and `dspo label
add-annotator` (new tokens, which end sessions). `locked` serialises their read-modify-write
of a file with an advisory lock on `<state_dir>/.lock`; `write_private` replaces a file so
that a reader sees the old or the new content, never a mix, and a crash after it returns
loses nothing (the file and its folder are fsynced).
"""
from __future__ import annotations

import fcntl
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".lock"


def fsync_folder(folder: Path) -> None:
    """Make the entries of `folder` (a rename, a new file) durable."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def write_private(path: Path, data: bytes) -> None:
    """Replace `path` by `data` atomically and durably, mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(handle, 0o600)
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise
    fsync_folder(path.parent)


@contextmanager
def locked(state_dir: Path) -> Iterator[None]:
    """Hold the state folder's write lock (across processes and threads) for the block."""
    state_dir.mkdir(parents=True, exist_ok=True)
    handle = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)


def stamp(path: Path) -> tuple[int, int, int] | None:
    """What changes when `path` is replaced or written: (inode, mtime, size); None if absent."""
    try:
        found = path.stat()
    except FileNotFoundError:
        return None
    return found.st_ino, found.st_mtime_ns, found.st_size


class WatchedJson:
    """One key of a JSON state file, re-read only when the file changes (another process, e.g.
    `dspo labels add-annotator --replace`, may rewrite it while the server runs).

    Args:
        path: the JSON file; absent reads as {}.
        key: the top-level key whose object `read` returns.
    """

    def __init__(self, path: Path, key: str):
        self.path, self.key = Path(path), key
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._value: dict = {}

    def read(self) -> dict:
        """The key's object as the file holds it now (do not mutate it)."""
        with self._lock:
            current = stamp(self.path)
            if current is None:
                self._stamp, self._value = None, {}
            elif current != self._stamp:
                self._value = json.loads(self.path.read_text(encoding="utf-8")).get(self.key, {})
                self._stamp = current
            return self._value
