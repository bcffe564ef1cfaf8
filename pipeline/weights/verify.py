"""`dspo models verify`'s checks: the content of present weights against what their names promise."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from dspo_core.digest import sha256_file
from pipeline.weights.usage import ModelUse

# Torch-hub style names carry a sha256 prefix: sam_vit_b_01ec64.pth, LPIPS_v0.1_alex-df73285e.pth.
_HASH_IN_NAME = re.compile(r"[_-]([0-9a-f]{6,12})\.(pth|pt|bin|safetensors|ckpt)$")


@dataclass(frozen=True)
class UseCheck:
    """The outcome of verifying one use: `result` is the one-line text `dspo models verify`
    shows; `failed` says whether it makes the command fail."""

    result: str
    failed: bool


def verify_file(path: str) -> str | None:
    """None if `path` checks out, else the problem: a sha256 prefix in the file name that the
    content does not match (torch-hub convention)."""
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
    """Verify the files of `use`: failed when a present file does not match its name, or when
    weights without a fallback are missing."""
    if not use.present:
        return UseCheck("-", use.if_missing == "error")
    if use.path is None:
        # A learned metric outside the catalog: pyiqa built it from its own caches, and which
        # files those are is known only inside pyiqa, so there is nothing here to hash.
        return UseCheck("present, not hashed: its files are not in the weights catalog", False)
    problems = [f"{os.path.basename(path)}: {problem}" for path in _files_under(use.path)
                if (problem := verify_file(path))]
    return UseCheck("; ".join(problems), True) if problems else UseCheck("ok", False)
