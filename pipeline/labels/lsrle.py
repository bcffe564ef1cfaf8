"""Label Studio's brush RLE: decode the bit-packed run-length encoding of a `brushlabels`
result into the RGBA image it encodes, and that image into a boolean mask.

A brush result (`type: "brushlabels"`, `value.format == "rle"`) stores `value.rle`, a list
of byte values (0..255), and the size of the image it was drawn on in `original_width` and
`original_height`. The bytes are a big-endian bit stream (the algorithm of
label-studio-converter's `brush.decode_rle`):

    num        32 bits   number of values encoded (width * height * 4 for an RGBA image)
    word_size   5 bits   + 1: bits per value (8 for Label Studio)
    rle_sizes  4 x 4 bits, each + 1: bits of a run length, chosen by a 2-bit selector

then runs until `num` values are out: 1 bit `x`; 2 bits selecting one of `rle_sizes`; that
many bits holding (run length - 1); then, if `x` is 1, one value repeated over the run,
else `run length` literal values. Trailing bits pad the last byte.

The mask is the alpha channel (`> 0`) of the decoded (height, width, 4) image, as in
label-studio-converter's `decode_from_annotation`.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["brush_mask", "decode_rle"]

HEADER_BITS = 32 + 5 + 4 * 4
# Refuse to allocate more than this many values for one brush result (a 16k x 16k RGBA image).
MAX_VALUES = 16384 * 16384 * 4


class _Bits:
    """A cursor over a bit string, most significant bit of each byte first."""

    def __init__(self, data: bytes):
        self.array = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
        self.text = (self.array + ord("0")).tobytes().decode("ascii")
        self.pos = 0

    def _take(self, count: int) -> int:
        start = self.pos
        if start + count > len(self.array):
            raise ValueError(f"truncated Label Studio RLE: needs bit {start + count}, has {len(self.array)}")
        self.pos += count
        return start

    def read(self, count: int) -> int:
        """The next `count` bits as an unsigned integer."""
        start = self._take(count)
        return int(self.text[start:start + count], 2) if count else 0

    def read_many(self, values: int, word_size: int) -> np.ndarray:
        """The next `values` integers of `word_size` bits each."""
        start = self._take(values * word_size)
        block = self.array[start:start + values * word_size].reshape(values, word_size).astype(np.uint64)
        weights = np.left_shift(np.uint64(1), np.arange(word_size - 1, -1, -1, dtype=np.uint64))
        return block @ weights


def _as_bytes(rle: Sequence[int] | bytes | bytearray) -> bytes:
    if isinstance(rle, (bytes, bytearray)):
        return bytes(rle)
    try:
        values = [int(value) for value in rle]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"Label Studio RLE must be a list of byte values: {exc}") from None
    if any(value < 0 or value > 255 for value in values):
        raise ValueError("Label Studio RLE values must be bytes (0..255)")
    return bytes(values)


def decode_rle(rle: Sequence[int] | bytes, expected: int | None = None) -> np.ndarray:
    """The flat array of values a Label Studio RLE encodes (uint8 for word sizes up to 8).

    `expected`: the number of values the caller needs (width * height * 4); checked against
    the header before anything is allocated.
    """
    bits = _Bits(_as_bytes(rle))
    if len(bits.array) < HEADER_BITS:
        raise ValueError(f"Label Studio RLE too short for its {HEADER_BITS}-bit header")
    num = bits.read(32)
    word_size = bits.read(5) + 1
    rle_sizes = [bits.read(4) + 1 for _ in range(4)]
    if expected is not None and num != expected:
        raise ValueError(f"Label Studio RLE holds {num} values, expected {expected}")
    if num > MAX_VALUES:
        raise ValueError(f"Label Studio RLE holds {num} values, more than the limit {MAX_VALUES}")
    out = np.zeros(num, dtype=np.uint8 if word_size <= 8 else np.uint32)
    i = 0
    while i < num:
        repeated = bits.read(1)
        end = i + 1 + bits.read(rle_sizes[bits.read(2)])
        if end > num:
            raise ValueError(f"Label Studio RLE run ends at value {end}, past its {num} values")
        if repeated:
            out[i:end] = bits.read(word_size)
        else:
            out[i:end] = bits.read_many(end - i, word_size)
        i = end
    return out


def brush_mask(rle: Sequence[int] | bytes, width: int, height: int) -> np.ndarray:
    """(height, width) bool mask of a brush result: the alpha channel of its RGBA image, > 0."""
    width, height = int(width), int(height)
    if width <= 0 or height <= 0:
        raise ValueError(f"brush image size must be positive, got {width}x{height}")
    values = decode_rle(rle, expected=width * height * 4)
    return values.reshape(height, width, 4)[:, :, 3] > 0
