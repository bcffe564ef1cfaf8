"""Who may label: annotator tokens, stored hashed.

State, in the app's state folder (never in the store, never logged):

    annotators.json   {"annotators": {name: {"token_sha256": hex, "created_at": iso}}}, mode 0600

A token is 32 random bytes (url-safe base64), so a plain SHA-256 of it cannot be brute-forced
and needs no slow password hash. Issuing a new token for a name (`dspo label add-annotator
NAME --replace`) ends the old token and every login session of that name
(pipeline.labels.app.sessions).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from datetime import datetime, timezone
from pathlib import Path

from pipeline.labels.app.sessions import SessionTable
from pipeline.labels.app.statefiles import WatchedJson, locked, write_private

ANNOTATORS_FILE = "annotators.json"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")


class AuthError(ValueError):
    """An annotator name or token request that cannot be carried out; the message says why."""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Annotators:
    """The annotator registry in `<state_dir>/annotators.json`.

    Args:
        state_dir: the app's state folder (created on the first `add`).

    The server re-reads the file when it changes, so annotators added while it runs can log in.
    """

    def __init__(self, state_dir: Path):
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / ANNOTATORS_FILE
        self._file = WatchedJson(self.path, "annotators")

    def _load(self) -> dict[str, str]:
        return {name: entry["token_sha256"] for name, entry in self._file.read().items()}

    def names(self) -> list[str]:
        """Registered annotator names, sorted."""
        return sorted(self._load())

    def add(self, name: str, *, replace: bool = False) -> str:
        """Register `name` and return its new token (the only time it is ever seen). Replacing
        a token also ends every login session of `name`.

        Raises AuthError for a malformed name, or an existing one unless `replace`.
        """
        if not NAME_PATTERN.fullmatch(name):
            raise AuthError(f"annotator name {name[:70]!r} must be 1-64 letters, digits or _.@- "
                            "(starting with a letter or digit)")
        with locked(self.state_dir):
            entries = {}
            if self.path.exists():
                entries = json.loads(self.path.read_text(encoding="utf-8")).get("annotators", {})
            if name in entries and not replace:
                raise AuthError(f"annotator {name!r} exists; pass --replace to issue a new token (the old one "
                                "stops working)")
            token = secrets.token_urlsafe(32)
            entries[name] = {"token_sha256": _digest(token), "created_at": datetime.now(timezone.utc).isoformat()}
            write_private(self.path, json.dumps({"annotators": entries}, indent=1, sort_keys=True).encode())
        if replace:
            SessionTable(self.state_dir).close_others(name, _digest(token))
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
