"""The conditional-write probe: does the service honour create-if-absent and compare-and-swap?

A store that ignores them (FIELD-NOTES: s3rver ignores If-None-Match) would let two commits
take one version, or a tag move under `tag()` without force, silently. The probe writes and
deletes one `_probe/<uuid>` object; gc leaves young probe objects alone.
"""
from __future__ import annotations

import uuid

from storage.backends import Backend
from storage.errors import ConditionalWriteUnsupportedError

PROBE_FOLDER = "_probe"


def require_conditional_writes(backend: Backend, uri: str) -> None:
    """Raise ConditionalWriteUnsupportedError naming `uri` unless a second create of one key
    fails and a swap with a stale token fails."""
    key = f"{PROBE_FOLDER}/{uuid.uuid4().hex}"
    try:
        created = backend.create(key, b"first")
        overwritten = backend.create(key, b"second")
        swapped_with_stale_token = backend.swap(key, b"third", "stale-token")
    finally:
        backend.delete(key)
    if not created or overwritten or swapped_with_stale_token:
        raise ConditionalWriteUnsupportedError(
            f"{uri} ignores conditional writes (If-None-Match / If-Match): writing there could silently "
            "lose versions or move tags. Use a service that honours them (AWS S3, MinIO, Ceph RGW, R2, ...)."
        )
