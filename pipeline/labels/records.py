"""One label as read from a file, before it is checked against the store, and the parsers
of its cell values (shared by the CSV, Parquet and Label Studio readers)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from datetime import time as dt_time

import numpy as np

from dspo_core.segment import rle

# The longest description a label may carry, in characters after surrounding blanks are stripped:
# one limit for every path (CSV/TSV, Parquet, Label Studio JSON, the labelling app). A longer
# one is a rejected label, never a truncated one.
DESCRIPTION_LIMIT = 2000
# How much of an offending value a message quotes.
QUOTED = 40
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


def text(value, field: str = "value") -> str | None:
    """A cell as stripped text; None for null, NaN and empty cells. Numbers become their text
    (Label Studio user ids are numbers); a list or object is a Problem naming `field`."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    elif not isinstance(value, (str, int, float, np.number, np.str_)):
        raise Problem(f"{field} must be text, got {type(value).__name__} {quoted(value)}")
    value = str(value).strip()
    return value or None


def quoted(value) -> str:
    """`value` for a message: its repr, cut to QUOTED characters (with its full length)."""
    shown = repr(value) if isinstance(value, str) else repr(str(value))
    if len(shown) <= QUOTED + 2:
        return shown
    return f"{shown[:QUOTED]}... ({len(str(value))} characters)"


def description(value, field: str = "description") -> str:
    """A description as stripped text ("" for none); Problem if over DESCRIPTION_LIMIT."""
    found = text(value, field) or ""
    if len(found) > DESCRIPTION_LIMIT:
        raise Problem(f"{field} is {len(found)} characters long; the limit is {DESCRIPTION_LIMIT}")
    return found


def boolean(value, column: str = "hallucination") -> bool:
    """true/false/1/0/yes/no (any case), a bool, or 0/1; empty means false."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and int(value) in (0, 1):
        return bool(value)
    if isinstance(value, float) and value in (0.0, 1.0):
        return bool(value)
    word = (text(value, column) or "").lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise Problem(f"{column} must be true/false/1/0/yes/no, got {quoted(value)}")


def timestamp(value, field: str = "labelled_at") -> datetime | None:
    """An ISO 8601 string or datetime as an aware UTC datetime (naive ones are taken as UTC).
    Problem for anything else, and for a time that has no UTC equivalent (year 1 at +01:00)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    given = value
    try:
        if hasattr(value, "to_pydatetime"):
            value = value.to_pydatetime()
        if isinstance(value, date) and not isinstance(value, datetime):
            value = datetime.combine(value, dt_time())
        elif not isinstance(value, datetime):
            if not isinstance(value, str):
                raise TypeError
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    except OverflowError:
        raise Problem(f"{field} {quoted(given)} lies outside the years 1-9999 in UTC") from None
    except (TypeError, ValueError):
        raise Problem(f"{field} is not an ISO 8601 time: {quoted(given)}") from None


def coco_mask(value) -> dict | None:
    """A COCO RLE given as a dict or its JSON text, normalised to {"size": [h, w], "counts": str}."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        if isinstance(value, str):
            value = json.loads(value)
        rle.area(value)  # checks the size and that the counts add up
    except (ValueError, TypeError, RecursionError) as exc:
        raise Problem(f"mask is not a COCO RLE: {str(exc)[:120]}") from None
    counts = value["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    elif not isinstance(counts, str):
        counts = rle.counts_to_string([int(c) for c in counts])
    return {"size": [int(v) for v in value["size"]], "counts": counts}


def from_mapping(where: str, row: dict, default_annotator: str | None = None) -> RawLabel:
    """A RawLabel from a CSV/Parquet row with the importer's columns (see pipeline.labels); a
    malformed cell sets `problem`, naming its column."""
    label = RawLabel(where=where)
    try:
        for name in ("sample_id", "instance_id", "best", "worst"):
            setattr(label, name, text(row.get(name), name))
        label.annotator = text(row.get("annotator"), "annotator") or default_annotator
        label.description = description(row.get("description"))
        label.hallucination = boolean(row.get("hallucination"))
        label.mask = coco_mask(row.get("mask"))
        label.labelled_at = timestamp(row.get("labelled_at"))
    except Problem as problem:
        label.problem = problem
    return label
