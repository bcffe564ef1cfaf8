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
import os
import tempfile
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
