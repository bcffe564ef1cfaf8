"""Who is asking: annotator tokens (stored hashed), login cookies and CSRF tokens.

State, in the app's state folder (never in the store, never logged):

    annotators.json   {"annotators": {name: {"token_sha256": hex, "created_at": iso}}}, mode 0600
    session.key       32 random bytes that sign login cookies and derive CSRF tokens, mode 0600

A token is 32 random bytes (url-safe base64), so a plain SHA-256 of it cannot be brute-forced
and needs no slow password hash. A login cookie is signed (itsdangerous), carries the
annotator's name, a random session nonce and a MAC of the token hash: issuing a new token for
a name (`dspo label add-annotator NAME --replace`) logs out that name's sessions. The CSRF
token of a session is an HMAC of its nonce, so it needs no server-side session table.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from itsdangerous import BadSignature, URLSafeTimedSerializer

ANNOTATORS_FILE = "annotators.json"
KEY_FILE = "session.key"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")


class AuthError(ValueError):
    """An annotator name or token request that cannot be carried out; the message says why."""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically, readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(handle, 0o600)
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise


class Annotators:
    """The annotator registry in `<state_dir>/annotators.json`.

    Args:
        state_dir: the app's state folder (created on the first `add`).

    The server re-reads the file when it changes, so annotators added while it runs can log in.
    """

    def __init__(self, state_dir: Path):
        self.path = Path(state_dir) / ANNOTATORS_FILE
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._hashes: dict[str, str] = {}

    def _load(self) -> dict[str, str]:
        with self._lock:
            try:
                stat = self.path.stat()
            except FileNotFoundError:
                self._stamp, self._hashes = None, {}
                return self._hashes
            stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            if stamp != self._stamp:
                entries = json.loads(self.path.read_text(encoding="utf-8")).get("annotators", {})
                self._hashes = {name: entry["token_sha256"] for name, entry in entries.items()}
                self._stamp = stamp
            return self._hashes

    def names(self) -> list[str]:
        """Registered annotator names, sorted."""
        return sorted(self._load())

    def add(self, name: str, *, replace: bool = False) -> str:
        """Register `name` and return its new token (the only time it is ever seen).

        Raises AuthError for a malformed name, or an existing one unless `replace`.
        """
        if not NAME_PATTERN.fullmatch(name):
            raise AuthError(f"annotator name {name[:70]!r} must be 1-64 letters, digits or _.@- "
                            "(starting with a letter or digit)")
        entries = {}
        if self.path.exists():
            entries = json.loads(self.path.read_text(encoding="utf-8")).get("annotators", {})
        if name in entries and not replace:
            raise AuthError(f"annotator {name!r} exists; pass --replace to issue a new token (the old one stops "
                            "working)")
        token = secrets.token_urlsafe(32)
        entries[name] = {"token_sha256": _digest(token), "created_at": datetime.now(timezone.utc).isoformat()}
        _write_private(self.path, json.dumps({"annotators": entries}, indent=1, sort_keys=True).encode())
        return token

    def who(self, token: str) -> str | None:
        """The annotator holding `token`, or None. Compares every hash in constant time."""
        digest, found = _digest(token), None
        for name, stored in self._load().items():
            if hmac.compare_digest(digest, stored):
                found = name
        return found

    def token_hash(self, name: str) -> str | None:
        """The stored hash of `name`'s current token (None: no such annotator)."""
        return self._load().get(name)


@dataclass(frozen=True)
class Session:
    """A logged-in browser: the annotator and the nonce its CSRF token derives from."""

    annotator: str
    nonce: str


class Sessions:
    """Signed login cookies and per-session CSRF tokens.

    Args:
        state_dir: folder of `session.key` (created with a new random key if absent, so cookies
            survive a restart of the app).
        annotators: the registry a cookie's token binding is checked against.
        max_age: seconds a login cookie stays valid.
    """

    def __init__(self, state_dir: Path, annotators: Annotators, max_age: int):
        path = Path(state_dir) / KEY_FILE
        if not path.exists():
            _write_private(path, secrets.token_bytes(32))
        self._key = path.read_bytes()
        self._signer = URLSafeTimedSerializer(self._key, salt="dspo-label-session")
        self._annotators = annotators
        self.max_age = max_age

    def _binding(self, annotator: str) -> str | None:
        stored = self._annotators.token_hash(annotator)
        if stored is None:
            return None
        return hmac.new(self._key, f"bind:{stored}".encode(), hashlib.sha256).hexdigest()[:32]

    def issue(self, annotator: str) -> str:
        """A new cookie value for `annotator` (who just proved a token)."""
        return self._signer.dumps({"a": annotator, "n": secrets.token_urlsafe(16), "b": self._binding(annotator)})

    def read(self, cookie: str | None) -> Session | None:
        """The session in `cookie`, or None if absent, forged, expired or its token was replaced."""
        if not cookie:
            return None
        try:
            data = self._signer.loads(cookie, max_age=self.max_age)
        except BadSignature:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("a"), str) or not isinstance(data.get("n"), str):
            return None
        binding = self._binding(data["a"])
        if binding is None or not hmac.compare_digest(binding, str(data.get("b"))):
            return None
        return Session(data["a"], data["n"])

    def csrf(self, session: Session) -> str:
        """The CSRF token forms of `session` must send back."""
        return hmac.new(self._key, f"csrf:{session.nonce}".encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, session: Session, value: str | None) -> bool:
        """Whether `value` is `session`'s CSRF token."""
        return bool(value) and hmac.compare_digest(self.csrf(session).encode(), value.encode("utf-8", "replace"))
