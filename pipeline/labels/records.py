"""One label as read from a file, before it is checked against the store, and the parsers
of its cell values (shared by the CSV, Parquet and Label Studio readers)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from dspo_core.segment import rle

TRUE_WORDS = frozenset({"true", "1", "yes", "y", "t"})
FALSE_WORDS = frozenset({"false", "0", "no", "n", "f", ""})


class LabelFileError(ValueError):
    """The label file as a whole cannot be read (not found, not parseable, missing columns)."""


class Problem(ValueError):
    """One label is unusable; `item` names the offending id (None: the label's own id)."""

    def __init__(self, reason: str, item: str | None = None):
        super().__init__(reason)
        self.item = item
        self.reason = reason


@dataclass
class DrawnMask:
    """A region drawn on an exported crop: `mask` at the drawn image's size, `crop_box`
    ([x, y, w, h] in the sample's HR pixels) where that image sits, or None when it was drawn
    on the whole sample."""

    mask: np.ndarray
    crop_box: list[int] | None = None


@dataclass
class RawLabel:
    """A label as read: ids not yet checked. `problem` is set when parsing already failed."""

    where: str                          # "line 4", "row 3", "task 2 annotation 1": for messages
    sample_id: str | None = None
    instance_id: str | None = None      # None: a label about the whole image
    best: str | None = None
    worst: str | None = None
    hallucination: bool = False
    description: str = ""
    annotator: str | None = None
    mask: dict | None = None            # COCO RLE in the sample's frame
    drawn: DrawnMask | None = None      # a brush region still to be placed in the sample's frame
    labelled_at: datetime | None = None
    problem: Problem | None = field(default=None, repr=False)

    @property
    def item(self) -> str:
        """The id that best names this label in a message."""
        return self.instance_id or self.sample_id or "-"


def text(value) -> str | None:
    """A cell as stripped text; None for null, NaN and empty cells."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    value = str(value).strip()
    return value or None


def boolean(value, column: str = "hallucination") -> bool:
    """true/false/1/0/yes/no (any case), a bool, or 0/1; empty means false."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and int(value) in (0, 1):
        return bool(value)
    if isinstance(value, float) and value in (0.0, 1.0):
        return bool(value)
    word = (text(value) or "").lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise Problem(f"{column} must be true/false/1/0/yes/no, got {str(value)[:40]!r}")


def timestamp(value) -> datetime | None:
    """An ISO 8601 string or datetime as an aware UTC datetime (naive ones are taken as UTC)."""
    if value is None or value == "":
        return None
    if hasattr(value, "to_pydatetime"):
        value = value.to_pydatetime()
    if not isinstance(value, datetime):
        try:
            value = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        except ValueError:
            raise Problem(f"labelled_at is not an ISO 8601 time: {str(value)[:40]!r}") from None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def coco_mask(value) -> dict | None:
    """A COCO RLE given as a dict or its JSON text, normalised to {"size": [h, w], "counts": str}."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        if isinstance(value, str):
            value = json.loads(value)
        rle.area(value)  # checks the size and that the counts add up
    except (ValueError, TypeError) as exc:
        raise Problem(f"mask is not a COCO RLE: {exc}") from None
    counts = value["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    elif not isinstance(counts, str):
        counts = rle.counts_to_string([int(c) for c in counts])
    return {"size": [int(v) for v in value["size"]], "counts": counts}


def from_mapping(where: str, row: dict, default_annotator: str | None = None) -> RawLabel:
    """A RawLabel from a CSV/Parquet row with the importer's columns (see pipeline.labels)."""
    label = RawLabel(
        where=where, sample_id=text(row.get("sample_id")), instance_id=text(row.get("instance_id")),
        best=text(row.get("best")), worst=text(row.get("worst")),
        description=text(row.get("description")) or "",
        annotator=text(row.get("annotator")) or default_annotator,
    )
    try:
        label.hallucination = boolean(row.get("hallucination"))
        label.mask = coco_mask(row.get("mask"))
        label.labelled_at = timestamp(row.get("labelled_at"))
    except Problem as problem:
        label.problem = problem
    return label
