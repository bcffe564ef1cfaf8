"""The rules of human labels, defined once for every path that takes them: the label importer
and the labelling app (pipeline.labels, ids checked against the store) and ``make_pairs``
(dspo_core.pairs, ids checked against the instances' rewards).

A label is one annotator's judgement of one instance of a sample: best and worst candidate
ids, a hallucination flag, a description, and (from the importer) a drawn mask.

- best and worst differ (``choice_problem``).
- One judgement per (annotator, sample, instance), and the first one stands unless revised
  (below): first in the input, with labels already published counting as earlier than any new
  one (so it never matters whether a repeat is in the same file or in an earlier import).
- A later label with the same judgement (``Judgement``: best, worst, hallucination,
  description with surrounding blanks ignored and blank meaning none, mask) is a *duplicate*:
  accepted once, i.e. it adds nothing and is reported as a duplicate, not as an error.
  Importing the same file twice therefore changes nothing.
- A later label with another judgement and a stated time (``at``: Label Studio's
  ``updated_at``, a file's ``labelled_at``) strictly after the standing label's is a *revision*
  (an annotator edited the label): it stands from then on, and the earlier one is reported as
  revised (the importer keeps it in the earlier ``human_labels`` version and lists it in the
  new manifest's ``revisions``). Latest time wins, whatever the order of arrival.
- Any other later label with another judgement *conflicts*: it is an error whose reason names
  the standing label and what differs; the standing label is kept (without a later time,
  which of the two answers to believe cannot be told from the data).

Which ids exist is each path's own check, as only it knows: the importer's against the
candidates and instances datasets, make_pairs' against the rewards it was given.

    standing = StandingJudgements()
    repeat = standing.add(("alice", "s0", "i3"), Judgement.of("c1", "c4"), "line 2")   # None: new
    repeat = standing.add(("alice", "s0", "i3"), Judgement.of("c1", "c2"), "line 7")
    repeat.reason    # "conflicts with the label by alice in line 2: worst 'c4' there, 'c2' here"
    repeat = standing.add(("bob", "s0", "i3"), Judgement.of("c1", "c4"), "line 3", at=monday)
    repeat = standing.add(("bob", "s0", "i3"), Judgement.of("c1", "c2"), "line 9", at=tuesday)
    repeat.revision  # True: line 9 stands now
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime

# (annotator, sample_id, instance_id): whose judgement of what; instance_id None = the whole sample.
JudgementKey = tuple[str, str, Hashable]


def choice_problem(best: Hashable, worst: Hashable) -> str | None:
    """Why (best, worst) is not a judgement, or None."""
    return f"best and worst are the same candidate {best!r}" if best == worst else None


@dataclass(frozen=True)
class Judgement:
    """What a label says: two labels of one annotator on one instance are duplicates exactly
    when their judgements are equal. Build it with ``of``, which normalises the free parts."""

    best: Hashable
    worst: Hashable
    hallucination: bool
    description: str | None           # stripped; None for a blank one
    mask: tuple | None                # ((h, w), counts) of a COCO RLE; None without a drawn region

    @classmethod
    def of(cls, best: Hashable, worst: Hashable, hallucination: bool = False, description: str | None = None,
           mask: Mapping | None = None) -> Judgement:
        region = None if mask is None else (tuple(int(v) for v in mask["size"]), mask["counts"])
        return cls(best, worst, bool(hallucination), (description or "").strip() or None, region)

    def differences(self, later: Judgement) -> str:
        """What `later` says otherwise, e.g. "worst 'c4' there, 'c2' here" (there: this one)."""
        parts = []
        for field in fields(self):
            mine, theirs = getattr(self, field.name), getattr(later, field.name)
            if mine == theirs:
                continue
            if field.name == "mask":
                parts.append("a different mask" if mine and theirs else f"a mask {'there' if mine else 'here'} only")
            elif field.name == "description":
                parts.append(f"description {_short(mine)} there, {_short(theirs)} here")
            else:
                parts.append(f"{field.name} {mine!r} there, {theirs!r} here")
        return "; ".join(parts)


def _short(text: str | None) -> str:
    if text is None:
        return "none"
    return repr(text if len(text) <= 40 else text[:37] + "...")


@dataclass(frozen=True)
class Repeat:
    """A label whose (annotator, sample, instance) already has a standing judgement."""

    annotator: str
    where: str                # where the standing label is: "line 2", "human_labels@v3 (label ...)"
    standing: Judgement
    judgement: Judgement      # the repeat's
    standing_at: datetime | None = None
    at: datetime | None = None

    @property
    def duplicate(self) -> bool:
        """True: the same judgement again (accepted once, not an error)."""
        return self.standing == self.judgement

    @property
    def revision(self) -> bool:
        """True: another judgement stated later than the standing one; it replaces it."""
        return (not self.duplicate and self.at is not None and self.standing_at is not None
                and self.at > self.standing_at)

    @property
    def reason(self) -> str:
        """The message of the repeat: a duplicate, or a conflict naming the standing label and
        what differs."""
        if self.duplicate:
            return f"duplicate of the label by {self.annotator} in {self.where}"
        if self.revision:
            return (f"revises the label by {self.annotator} in {self.where} "
                    f"({self.standing_at.isoformat()} -> {self.at.isoformat()}): "
                    f"{self.standing.differences(self.judgement)}")
        return (f"conflicts with the label by {self.annotator} in {self.where}: "
                f"{self.standing.differences(self.judgement)}")


class StandingJudgements:
    """The standing judgement of every (annotator, sample, instance) seen (the first one, or its
    latest revision), where it is and its stated time."""

    def __init__(self):
        self._standing: dict[JudgementKey, tuple[Judgement, str, datetime | None]] = {}

    def add(self, key: JudgementKey, judgement: Judgement, where: str, at: datetime | None = None) -> Repeat | None:
        """None if `key` is new (this judgement now stands), else the Repeat it is; a revision
        now stands in place of the judgement it revises."""
        found = self._standing.get(key)
        if found is None:
            self._standing[key] = (judgement, where, at)
            return None
        repeat = Repeat(key[0], found[1], found[0], judgement, found[2], at)
        if repeat.revision:
            self._standing[key] = (judgement, where, at)
        return repeat
