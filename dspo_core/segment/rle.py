"""COCO run-length encoding of binary masks, compatible with pycocotools.

A COCO RLE is ``{"size": [h, w], "counts": ...}``. The mask is flattened in
column-major (Fortran) order and ``counts`` lists the lengths of alternating
runs, always starting with a run of zeros (of length 0 when the first pixel is
set). ``counts`` is either that list of integers ("uncompressed RLE") or the
compact ASCII string pycocotools writes (``maskApi.c: rleToString``): each run
length, minus the run two places earlier from the fourth run on, is written as
a signed little-endian base-32 number, five bits per character, ``0x20`` as
the "more characters follow" flag and ``48`` added to make it printable.

This module reproduces ``pycocotools.mask.encode/decode/area/toBbox`` in
numpy, so masks written here are read by pycocotools, ``datasets`` viewers and
COCO tools, and vice versa. Strings are ``str`` (pycocotools returns
``bytes``; both are accepted on input).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "area",
    "counts_from_string",
    "counts_to_string",
    "decode",
    "encode",
    "mask_to_counts",
    "to_bbox",
]


def mask_to_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO counts of a 2-D mask (nonzero = set), column-major order."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {mask.shape}")
    flat = mask.astype(bool, copy=False).ravel(order="F")
    if flat.size == 0:
        return [0]
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs.insert(0, 0)
    return runs


def counts_to_string(counts: Sequence[int]) -> str:
    """pycocotools' compressed string of an uncompressed counts list (``rleToString``)."""
    out: list[str] = []
    for i, count in enumerate(counts):
        x = int(count)
        if x < 0:
            raise ValueError(f"run lengths must be non-negative, got {x} at position {i}")
        if i > 2:  # pycocotools deltas from the fourth run on (i > 2, not i >= 2)
            x -= int(counts[i - 2])
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift, as on the C `long`
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def counts_from_string(s: str | bytes) -> list[int]:
    """Uncompressed counts of a pycocotools compressed string (``rleFrString``)."""
    if isinstance(s, bytes):
        s = s.decode("ascii")
    counts: list[int] = []
    p = 0
    n = len(s)
    while p < n:
        x = 0
        k = 0
        more = True
        while more:
            if p >= n:
                raise ValueError(f"truncated RLE string at character {p}: {s!r}")
            c = ord(s[p]) - 48
            if c < 0 or c > 63:
                raise ValueError(f"invalid character {s[p]!r} at position {p} of RLE string")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        if x < 0:
            raise ValueError(f"RLE string decodes to a negative run length at run {len(counts)}")
        counts.append(x)
    return counts


def _size_and_counts(rle: Mapping[str, Any]) -> tuple[int, int, list[int]]:
    try:
        h, w = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a COCO RLE (need 'size': [h, w] and 'counts'): {exc}") from exc
    if h < 0 or w < 0:
        raise ValueError(f"RLE size must be non-negative, got {[h, w]}")
    if isinstance(counts, (str, bytes)):
        counts = counts_from_string(counts)
    else:
        counts = [int(c) for c in counts]
        if any(c < 0 for c in counts):
            raise ValueError("RLE counts must be non-negative")
    total = sum(counts)
    if total != h * w:
        raise ValueError(f"RLE counts sum to {total}, but size {[h, w]} has {h * w} pixels")
    return h, w, counts


def encode(mask: np.ndarray) -> dict[str, Any]:
    """Encode a 2-D mask (bool or 0/1; nonzero = set) as ``{"size": [h, w], "counts": str}``."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {mask.shape}")
    h, w = mask.shape
    return {"size": [int(h), int(w)], "counts": counts_to_string(mask_to_counts(mask))}


def decode(rle: Mapping[str, Any]) -> np.ndarray:
    """Decode a COCO RLE (compressed string, bytes or uncompressed list) to an (h, w) bool array."""
    h, w, counts = _size_and_counts(rle)
    values = (np.arange(len(counts)) % 2).astype(bool)
    flat = np.repeat(values, counts)
    return np.ascontiguousarray(flat.reshape((h, w), order="F"))


def area(rle: Mapping[str, Any]) -> int:
    """Number of set pixels (``pycocotools.mask.area``)."""
    _, _, counts = _size_and_counts(rle)
    return int(sum(counts[1::2]))


def to_bbox(rle: Mapping[str, Any]) -> list[int]:
    """Tight box ``[x, y, w, h]`` of the set pixels (``pycocotools.mask.toBbox``), in integer pixels.

    An empty mask gives ``[0, 0, 0, 0]``.
    """
    h, _, counts = _size_and_counts(rle)
    arr = np.asarray(counts, dtype=np.int64)
    ends = np.cumsum(arr)
    starts = ends - arr
    ones = np.arange(len(arr)) % 2 == 1
    ones &= arr > 0
    if not ones.any():
        return [0, 0, 0, 0]
    first = starts[ones]
    last = ends[ones] - 1
    x0, y0 = first // h, first % h
    x1, y1 = last // h, last % h
    wraps = x1 > x0  # a run spanning columns covers the full height in between
    ys = int(0 if wraps.any() else y0.min())
    ye = int(h - 1 if wraps.any() else y1.max())
    ys = min(ys, int(y0.min()))
    ye = max(ye, int(y1.max()))
    xs = int(x0.min())
    xe = int(x1.max())
    return [xs, ys, xe - xs + 1, ye - ys + 1]
