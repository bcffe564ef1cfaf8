"""Keeps credentials out of manifests and logs."""
from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REDACTED = "***"
_SECRET_KEY_RE = re.compile(
    r"(secret|passw|token|credential|api[_-]?key|access[_-]?key|private[_-]?key|session[_-]?key|auth)",
    re.IGNORECASE,
)


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY_RE.search(key))


def redact_url(url: str) -> str:
    """Drop user:password from a URL's authority; other strings pass unchanged."""
    if "://" not in url or "@" not in url.split("://", 1)[1].split("/", 1)[0]:
        return url
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, f"{REDACTED}@{host}", parts.path, parts.query, parts.fragment))


def redact(value: Any) -> Any:
    """A copy of `value` (JSON-like) with secret-looking keys masked and URL credentials removed."""
    if isinstance(value, dict):
        return {
            key: (REDACTED if isinstance(key, str) and is_secret_key(key) and val not in (None, "") else redact(val))
            for key, val in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact(item) for item in value]
    if isinstance(value, str):
        return redact_url(value)
    return value
