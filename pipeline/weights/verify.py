"""`dspo models verify`'s checks: the content of present weights against their catalog checksum
(`pipeline.weights.catalog`), else against what their names promise."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from dspo_core.digest import sha256_file
from pipeline.weights.catalog import CATALOG, locate
from pipeline.weights.download import checksum_problem
from pipeline.weights.usage import ModelUse

# Torch-hub style names carry a sha256 prefix after a hyphen: LPIPS_v0.1_alex-df73285e.pth.
# SAM's underscore suffixes are not one (sam_vit_b_01ec64.pth hashes to ec2df627...): the
# catalog holds their full sha256 instead.
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{6,12})\.(pth|pt|bin|safetensors|ckpt)$")


@dataclass(frozen=True)
class UseCheck:
    """The outcome of verifying one use: `result` is the one-line text `dspo models verify`
    shows; `failed` says whether it makes the command fail."""

    result: str
    failed: bool


def verify_file(path: str, checksum: str | None = None) -> str | None:
    """None if `path` checks out, else the problem: the content does not match `checksum`
    ("<algorithm>:<hex>", from the catalog) or, without one, the sha256 prefix in the file
    name (torch-hub convention)."""
    if checksum is not None:
        return checksum_problem(path, checksum)
    match = _HASH_IN_NAME.search(os.path.basename(path))
    if not match:
        return None
    digest = sha256_file(path)
    if not digest.startswith(match.group(1)):
        return f"sha256 {digest[:12]} does not start with {match.group(1)} (from the file name)"
    return None


def _files_under(path: str) -> list[str]:
    """`path` itself, or every file under it when it is a folder."""
    if not os.path.isdir(path):
        return [path]
    return [os.path.join(parent, name) for parent, _, names in os.walk(path) for name in names]


def verify_use(use: ModelUse) -> UseCheck:
    """Verify the files of `use` (every file of a catalog entry): failed when a present file
    does not match its catalog checksum or its name, or when weights without a fallback are missing."""
    if not use.present:
        return UseCheck("-", use.if_missing == "error")
    if use.path is None:
        # A learned metric outside the catalog: pyiqa built it from its own caches, and which
        # files those are is known only inside pyiqa, so there is nothing here to hash.
        return UseCheck("present, not hashed: its files are not in the weights catalog", False)
    checksums = {}
    if use.model in CATALOG:
        located = locate(use.model).files
        checksums = {state.path: item.checksum for item, state in zip(CATALOG[use.model].files, located, strict=True)}
    problems = [f"{os.path.basename(path)}: {problem}"
                for folder in ([use.path] if not checksums else [p for p in checksums if p])
                for path in _files_under(folder) if (problem := verify_file(path, checksums.get(path)))]
    return UseCheck("; ".join(problems), True) if problems else UseCheck("ok", False)
