"""Login sessions, kept on the server: a cookie is a random session id that works only while
the server's table holds it.

    sessions.json   {"sessions": {sha256(session id): {"annotator", "binding", "expires_at"}}},
                    mode 0600, in the state folder beside annotators.json

A login adds an entry; logout removes it, and so does `dspo label add-annotator NAME
--replace` for every session of NAME (pipeline.labels.app.auth); entries past `expires_at`
are dropped at the next write. The table is a file, so sessions survive a restart of the
server, and a logout or a revocation survives it too (the file is written and fsynced before
the answer goes out), whichever process made it. Only hashes of session ids are stored: the
file does not let anyone log in. `binding` is a hash of the annotator's token hash at login,
so a token changed by hand in annotators.json ends its sessions as well.

A session's CSRF token is an HMAC of its id under `session.key` (32 random bytes, mode 0600).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pipeline.labels.app.statefiles import WatchedJson, locked, write_private

SESSIONS_FILE = "sessions.json"
KEY_FILE = "session.key"


class TokenHashes(Protocol):
    def token_hash(self, name: str) -> str | None: ...


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()


def binding(token_hash: str) -> str:
    """What a session records of the token it was opened with."""
    return _digest(f"bind:{token_hash}")[:32]


@dataclass(frozen=True)
class Session:
    """A logged-in browser: the annotator and the session id its CSRF token derives from."""

    annotator: str
    id: str


class SessionTable:
    """The table of live sessions in `<state_dir>/sessions.json` (module doc).

    Reads are served from memory while the file is unchanged (its inode, mtime and size), so
    a change by another process is seen at the next request."""

    def __init__(self, state_dir: Path):
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / SESSIONS_FILE
        self._file = WatchedJson(self.path, "sessions")

    def _read(self) -> dict[str, dict]:
        return self._file.read()

    def _change(self, change) -> None:
        """Apply `change(entries)` to the file's entries under the folder's lock, dropping the
        expired ones, and write the result."""
        with locked(self.state_dir):
            entries = {}
            if self.path.exists():
                entries = json.loads(self.path.read_text(encoding="utf-8")).get("sessions", {})
            change(entries)
            now = time.time()
            entries = {key: entry for key, entry in entries.items() if entry.get("expires_at", 0) > now}
            write_private(self.path, json.dumps({"sessions": entries}, indent=1, sort_keys=True).encode())

    def open(self, annotator: str, token_hash: str, max_age: float) -> str:
        """A new session id for `annotator` (who just proved the token of `token_hash`)."""
        session_id = secrets.token_urlsafe(32)
        entry = {"annotator": annotator, "binding": binding(token_hash), "expires_at": time.time() + max_age}
        self._change(lambda entries: entries.__setitem__(_digest(session_id), entry))
        return session_id

    def find(self, session_id: str) -> dict | None:
        """The live entry of `session_id`, or None."""
        entry = self._read().get(_digest(session_id))
        if entry is None or entry.get("expires_at", 0) <= time.time():
            return None
        return entry

    def close(self, session_id: str) -> None:
        """End one session (logout)."""
        self._change(lambda entries: entries.pop(_digest(session_id), None))

    def close_others(self, annotator: str, token_hash: str) -> None:
        """End every session of `annotator` not opened with the token of `token_hash` (a new
        token was issued: sessions opened with it since then stay)."""
        kept = binding(token_hash)

        def drop(entries: dict) -> None:
            for key in [key for key, entry in entries.items()
                        if entry.get("annotator") == annotator and entry.get("binding") != kept]:
                del entries[key]
        self._change(drop)


class Sessions:
    """Login cookies backed by the session table, and per-session CSRF tokens.

    Args:
        state_dir: folder of `sessions.json` and `session.key` (created with a new random key
            if absent).
        annotators: the registry a session's token binding is checked against.
        max_age: seconds a session lasts (also the cookie's max-age).
    """

    def __init__(self, state_dir: Path, annotators: TokenHashes, max_age: int):
        path = Path(state_dir) / KEY_FILE
        if not path.exists():
            write_private(path, secrets.token_bytes(32))
        self._key = path.read_bytes()
        self._annotators = annotators
        self.table = SessionTable(state_dir)
        self.max_age = max_age

    def issue(self, annotator: str) -> str:
        """A new cookie value for `annotator` (who just proved a token)."""
        return self.table.open(annotator, self._annotators.token_hash(annotator) or "", self.max_age)

    def read(self, cookie: str | None) -> Session | None:
        """The session of `cookie`, or None if absent, unknown, ended, expired or its token replaced."""
        if not cookie:
            return None
        entry = self.table.find(cookie)
        if entry is None:
            return None
        stored = self._annotators.token_hash(entry["annotator"])
        if stored is None or not hmac.compare_digest(binding(stored), str(entry.get("binding"))):
            return None
        return Session(entry["annotator"], cookie)

    def end(self, session: Session) -> None:
        """Log `session` out: its cookie stops working here and after a restart."""
        self.table.close(session.id)

    def csrf(self, session: Session) -> str:
        """The CSRF token forms of `session` must send back."""
        return hmac.new(self._key, f"csrf:{session.id}".encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, session: Session, value: str | None) -> bool:
        """Whether `value` is `session`'s CSRF token."""
        return bool(value) and hmac.compare_digest(self.csrf(session).encode(), value.encode("utf-8", "replace"))
