"""Content digests of weight files: the one sha256-of-a-file reader every model family uses.

- ``sha256_file`` hashes one file (SAM checkpoints, LoRA files, CLIP downloads, the
  pipeline's weights catalog).
- ``files_digest`` names several files at once: the sha256 of their ``sha256sum``-style
  listing (``listing_digest``). The SR weights ids and the pipeline's weights catalog use the
  same formula, so an id recorded with a candidate can be checked against ``dspo models``.
"""

from __future__ import annotations

import hashlib
import os
import re

_SHA256_NAME = re.compile(r"^[0-9a-f]{64}$")


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks (checkpoints are gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _content_digest(path: str) -> str:
    # A Hugging Face cache snapshot links each large file to blobs/<sha256 of its bytes>:
    # reuse that name instead of re-reading gigabytes. Anything else is hashed.
    target = os.path.realpath(path)
    name = os.path.basename(target)
    if os.path.islink(path) and os.path.basename(os.path.dirname(target)) == "blobs" and _SHA256_NAME.match(name):
        return name
    return sha256_file(target)


def listing_digest(digests: dict[str, str]) -> str:
    """Hex sha256 of a ``sha256sum``-style listing: one ``<digest>  <name>`` line per entry of
    `digests` (display name -> hex digest), in the given order."""
    lines = "".join(f"{digest}  {name}\n" for name, digest in digests.items())
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def files_digest(files: dict[str, str]) -> str:
    """``listing_digest`` of the contents of `files` (display name -> path), in the given order."""
    return listing_digest({name: _content_digest(path) for name, path in files.items()})
