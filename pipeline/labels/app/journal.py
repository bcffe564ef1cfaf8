"""The label journal: every label the app accepts is on disk before the annotator is told so.

    <state_dir>/labels.journal   one JSON object per line, mode 0600
    <state_dir>/serve.lock       held (flock) by the one server using the folder

`append` writes a line and fsyncs it; only then does the app answer 201. A server that starts
reads the journal back (`replay`), and after a publish it rewrites the journal with what is
still unpublished (`rewrite`: atomic, fsynced). A label published but still in the journal
(a kill between the publish and the rewrite) is found in `human_labels` on replay and not
published again. A line cut short by a crash during `append` was never acknowledged; it is
dropped, with a warning. A line that is not JSON otherwise is kept aside in
`labels.journal.unreadable`, never silently dropped.

The journal knows nothing of labels: it stores JSON objects (pipeline.labels.app.book says
what is in them).
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path

from pipeline.labels.app.statefiles import fsync_folder, write_private

log = logging.getLogger("pipeline.labels.app")
JOURNAL_FILE = "labels.journal"
LOCK_FILE = "serve.lock"


class StateInUse(OSError):
    """Another server holds the state folder (two journals in one file would mix)."""


class Journal:
    """The journal of one state folder, held by this process until `close`.

    Args:
        state_dir: the app's state folder (created if absent).

    Raises StateInUse when another process serves from the same folder.
    """

    def __init__(self, state_dir: Path):
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.state_dir / JOURNAL_FILE
        self._lock = os.open(self.state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock)
            raise StateInUse(f"the state folder {self.state_dir} is in use by another `dspo label serve`; stop it, "
                             "or pass another --state-dir") from None
        self._out = None

    def replay(self) -> list[dict]:
        """The entries on disk, in the order they were appended."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        lines = data.split(b"\n")
        torn = lines.pop()             # after the last newline: b"" unless a crash cut an append short
        if torn:
            log.warning("dropping the unfinished last line of %s (%d bytes): a crash interrupted it before it "
                        "was acknowledged", self.path, len(torn))
        entries, unreadable = [], []
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            if isinstance(entry, dict):
                entries.append(entry)
            elif line.strip():
                unreadable.append(line)
        if unreadable:
            aside = self.path.with_name(JOURNAL_FILE + ".unreadable")
            with open(aside, "ab") as out:
                out.write(b"\n".join(unreadable) + b"\n")
            log.error("%d unreadable line(s) of %s kept in %s", len(unreadable), self.path, aside)
        return entries

    def rewrite(self, entries: list[dict]) -> None:
        """Replace the journal by `entries` (atomically) and append after them from now on."""
        write_private(self.path, b"".join(_line(entry) for entry in entries))
        self._reopen()

    def append(self, entry: dict) -> None:
        """Add `entry`, durably: when this returns, a crash does not lose it."""
        if self._out is None:
            self._reopen()
        self._out.write(_line(entry))
        self._out.flush()
        os.fsync(self._out.fileno())

    def _reopen(self) -> None:
        if self._out is not None:
            self._out.close()
        created = not self.path.exists()
        handle = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._out = os.fdopen(handle, "ab")
        if created:
            fsync_folder(self.state_dir)

    def close(self) -> None:
        """Stop writing and let another server use the folder."""
        if self._out is not None:
            self._out.close()
            self._out = None
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def _line(entry: dict) -> bytes:
    return json.dumps(entry, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
