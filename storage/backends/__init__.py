"""Backends by URI scheme: an explicit registry, one entry per scheme."""
from __future__ import annotations

import os
from typing import Callable
from urllib.parse import unquote, urlsplit

from storage.backends.base import Backend, ObjectInfo
from storage.errors import InvalidNameError


def _open_local(location: str, options: dict) -> Backend:
    from storage.backends.local import LocalBackend

    if options:
        raise InvalidNameError(f"local stores take no options, got {sorted(options)}")
    return LocalBackend(location)


def _open_memory(location: str, options: dict) -> Backend:
    from storage.backends.memory import MemoryBackend

    if options:
        raise InvalidNameError(f"memory:// stores take no options, got {sorted(options)}")
    return MemoryBackend(location)


def _open_s3(location: str, options: dict) -> Backend:
    from storage.backends.s3 import S3Backend

    bucket, _, prefix = location.partition("/")
    if not bucket:
        raise InvalidNameError("an s3:// store needs a bucket: s3://BUCKET[/prefix]")
    return S3Backend(bucket, prefix, **options)


BACKENDS: dict[str, Callable[[str, dict], Backend]] = {
    "file": _open_local,
    "memory": _open_memory,
    "s3": _open_s3,
}


def open_backend(uri: str, options: dict | None = None) -> Backend:
    """The backend for `uri`: `file:///abs/path`, a plain path, `memory://name` or `s3://bucket/prefix`."""
    options = dict(options or {})
    if "://" not in uri:
        return _open_local(os.path.abspath(os.path.expanduser(uri)), options)
    parts = urlsplit(uri)
    if "@" in parts.netloc:
        raise InvalidNameError("credentials do not belong in a store URI; use the environment or store options")
    scheme = parts.scheme.lower()
    if scheme not in BACKENDS:
        raise InvalidNameError(f"unsupported store URI scheme {scheme!r} in {uri!r}; use one of {sorted(BACKENDS)}")
    location = unquote(parts.netloc + parts.path) if scheme != "file" else unquote(parts.path)
    return BACKENDS[scheme](location, options)


__all__ = ["Backend", "ObjectInfo", "BACKENDS", "open_backend"]
