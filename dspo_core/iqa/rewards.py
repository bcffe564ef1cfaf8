"""From raw per-instance scores to one reward per (instance, candidate): the DP2O-SR hybrid.

``normalise(records)``: for each (instance, metric), min-max over the N candidates,
flipped for lower-better metrics so that 1 = the best candidate and 0 = the worst:

    n = (v - min) / (max - min)          higher-better
    n = (max - v) / (max - min)          lower-better
    n = 0.5 for every candidate          when all N values are equal (no preference)

``reward(records, fr_weight, nr_weight)``: per (instance, candidate)

    reward = fr_weight * mean(normalised FR metrics) + nr_weight * mean(normalised NR metrics)

(fidelity to the HR crop + realism, 50/50 by default as in DP2O-SR). If one family has
no metric, the other gets the whole weight: reward = its mean.

Pure Python: no torch, no pyiqa.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace

from .scoring import ScoreRecord


@dataclass(frozen=True)
class RewardRecord:
    """The combined reward of one candidate on one instance.

    instance, candidate: indices as in ScoreRecord; reward: the hybrid reward in [0, 1];
    fr, nr: mean normalised score of the full-/no-reference metrics (None when that
    family is not configured); n_fr, n_nr: how many metrics each mean is over.
    """

    instance: int
    candidate: int
    reward: float
    fr: float | None
    nr: float | None
    n_fr: int
    n_nr: int


def normalise(records: Iterable[ScoreRecord]) -> list[ScoreRecord]:
    """Records with ``normalised`` set: min-max within each (instance, metric) group
    across its candidates, 1 = best (lower_better flipped), all-equal -> 0.5.

    Raises ValueError for a non-finite raw value or duplicate (instance, candidate, metric).
    """
    records = list(records)
    groups: dict[tuple[int, str], list[int]] = defaultdict(list)
    seen: set[tuple[int, int, str]] = set()
    for index, record in enumerate(records):
        key = (record.instance, record.candidate, record.metric)
        if key in seen:
            raise ValueError(f"duplicate record for instance {key[0]}, candidate {key[1]}, metric {key[2]!r}")
        seen.add(key)
        if not math.isfinite(record.value):
            raise ValueError(f"non-finite value {record.value} for {key}")
        groups[(record.instance, record.metric)].append(index)
    out = list(records)
    for indices in groups.values():
        values = [records[i].value for i in indices]
        low, high = min(values), max(values)
        for i in indices:
            record = records[i]
            if high == low:
                score = 0.5
            elif record.lower_better:
                score = (high - record.value) / (high - low)
            else:
                score = (record.value - low) / (high - low)
            out[i] = replace(record, normalised=score)
    return out


def reward(records: Iterable[ScoreRecord], fr_weight: float = 0.5, nr_weight: float = 0.5) -> list[RewardRecord]:
    """Hybrid reward per (instance, candidate), sorted by instance then candidate.

    `records` must be normalised (``normalise``). The FR mean gets `fr_weight`, the NR
    mean `nr_weight`; when a family is empty its weight goes to the other (the reward
    is then the other family's mean).
    """
    if fr_weight < 0 or nr_weight < 0 or fr_weight + nr_weight <= 0:
        raise ValueError(f"weights must be >= 0 and not both 0, got fr={fr_weight}, nr={nr_weight}")
    sums: dict[tuple[int, int], dict[str, list[float]]] = defaultdict(lambda: {"fr": [], "nr": []})
    for record in records:
        if record.normalised is None:
            raise ValueError("reward() needs normalised records: call normalise(records) first")
        if record.kind not in ("fr", "nr"):
            raise ValueError(f"unknown metric kind {record.kind!r}")
        sums[(record.instance, record.candidate)][record.kind].append(record.normalised)
    out = []
    for (instance, candidate), family in sorted(sums.items()):
        fr = sum(family["fr"]) / len(family["fr"]) if family["fr"] else None
        nr = sum(family["nr"]) / len(family["nr"]) if family["nr"] else None
        if fr is None:
            value = nr
        elif nr is None:
            value = fr
        else:
            value = fr_weight * fr + nr_weight * nr
        out.append(RewardRecord(instance, candidate, value, fr, nr, len(family["fr"]), len(family["nr"])))
    return out
