"""The `_latest` hint of a dataset: read, checked against the manifests, advanced by compare-and-swap.

The hint only saves listing the manifests. It may lag (a writer died between its commit and
the swap): readers walk past it. It may also name a version with no manifest (written by
hand, or that manifest deleted): then the manifests are listed instead, with a warning, and
the next publish repairs it.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from storage.manifest import manifest_key

if TYPE_CHECKING:
    from storage.store import DatasetStore

log = logging.getLogger("storage")


def _key(name: str) -> str:
    return f"{name}/_latest"


def read_hint(store: "DatasetStore", name: str) -> tuple[int, str | None]:
    """(version in `_latest`, its token); (0, None) if there is none yet."""
    found = store.backend.get(_key(name))
    if found is None:
        return 0, None
    try:
        return int(found[0]), found[1]
    except ValueError:
        # Only a hint: readers look past it, and the next publish rewrites it.
        log.warning("%s/_latest in %s is unreadable; ignoring the hint", name, store.uri)
        return 0, found[1]


def checked_hint(store: "DatasetStore", name: str) -> tuple[int, str | None]:
    """(newest committed version or 0, token of `_latest`): the hint if its manifest exists,
    else the newest listed manifest (with a warning); then any version committed past it."""
    version, token = read_hint(store, name)
    if version and store.backend.get(manifest_key(name, version)) is None:
        listed = store.versions(name)
        fallback = listed[-1] if listed else 0
        log.warning("%s/_latest in %s names v%d, which has no manifest; using the newest manifest, v%d",
                    name, store.uri, version, fallback)
        version = fallback
    while store.backend.get(manifest_key(name, version + 1)) is not None:
        version += 1
    return version, token


def advance(store: "DatasetStore", name: str, version: int, seen: tuple[int, str | None]) -> None:
    """Move `_latest` to `version` by compare-and-swap, starting from `seen` (a checked
    version and the hint's token); stops once someone else moved it at least as far."""
    current, token = seen
    while current < version:
        if store.backend.swap(_key(name), str(version).encode(), token):
            return
        current, token = checked_hint(store, name)
