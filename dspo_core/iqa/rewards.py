"""From raw per-instance scores to one reward per (instance, candidate): the DP2O-SR hybrid.

Each metric is put on one scale for the whole dataset, so that a reward difference keeps the
size of the raw difference (a near-tie stays a near-tie, and ``min_reward_gap`` can drop it):

    mean_m, std_m   over every raw value of metric m in the dataset (every instance, every
                    candidate, every shard; population std)                  -> MetricScale
    z = (v - mean_m) / std_m          higher-better
    z = (mean_m - v) / std_m          lower-better (flipped: larger z is better)
    n = 1 / (1 + exp(-z))             in (0, 1); 0.5 = the dataset mean; std_m == 0 -> 0.5

    reward = fr_weight * mean(n over FR metrics) + nr_weight * mean(n over NR metrics)

(fidelity to the HR crop + realism, 50/50 by default as in DP2O-SR). If one family has no
metric, the other gets the whole weight. The logistic keeps every score and reward in (0, 1),
as the suspect thresholds, pair validation and labelling queue downstream expect; near the
mean it is linear with slope 1/4: a reward gap of 0.01 is about 0.04 standard deviations of
every metric moving together, so a gap is read in those units.

The scale needs every value of the dataset while scoring runs in shards: a shard computes its
``Moments`` (n, mean, M2: mergeable without the values, Chan et al.), and whoever sees every
shard merges them in shard order (``merge_moments``) into the same ``MetricScale`` s.

Pure Python: no torch, no pyiqa.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace

from .scoring import ScoreRecord

#: Name of the rule above, recorded with the scores.
NORMALISATION = "zscore-logistic"
NORMALISATION_RULE = ("z = (v - mean) / std per metric over the whole dataset (flipped for lower_better), "
                      "normalised = 1 / (1 + exp(-z)) (0.5 = dataset mean; std 0 -> 0.5); reward = fr_weight * "
                      "mean FR normalised + nr_weight * mean NR normalised")


@dataclass(frozen=True)
class Moments:
    """Count, mean and sum of squared deviations (M2) of one metric's raw values: mergeable."""

    n: int
    mean: float
    m2: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Moments:
        """Welford's pass over `values` (finite floats)."""
        n, mean, m2 = 0, 0.0, 0.0
        for value in values:
            n += 1
            delta = value - mean
            mean += delta / n
            m2 += delta * (value - mean)
        return cls(n, mean, m2)

    def merge(self, other: Moments) -> Moments:
        """The moments of both value sets together (Chan, Golub and LeVeque)."""
        if not self.n or not other.n:
            return other if not self.n else self
        n = self.n + other.n
        delta = other.mean - self.mean
        return Moments(n, self.mean + delta * other.n / n, self.m2 + other.m2 + delta * delta * self.n * other.n / n)


@dataclass(frozen=True)
class MetricScale:
    """The dataset-wide scale of one metric: n values, their mean and population std
    (on pyiqa's scale of the metric), and its direction."""

    metric: str
    n: int
    mean: float
    std: float
    lower_better: bool

    def to_dict(self) -> dict:
        return asdict(self)

    def z(self, value: float) -> float:
        """Standard score of `value`, larger = better; 0 when the metric never varies."""
        if self.std == 0:
            return 0.0
        z = (value - self.mean) / self.std
        return -z if self.lower_better else z


@dataclass(frozen=True)
class RewardRecord:
    """The combined reward of one candidate on one instance.

    instance, candidate: indices as in ScoreRecord; reward: the hybrid reward in (0, 1);
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


def _check(records: Sequence[ScoreRecord]) -> None:
    seen: set[tuple[int, int, str]] = set()
    for record in records:
        key = (record.instance, record.candidate, record.metric)
        if key in seen:
            raise ValueError(f"duplicate record for instance {key[0]}, candidate {key[1]}, metric {key[2]!r}")
        seen.add(key)
        if not math.isfinite(record.value):
            raise ValueError(f"non-finite value {record.value} for {key}")


def metric_moments(records: Iterable[ScoreRecord]) -> dict[str, Moments]:
    """Moments of each metric's raw values, in record order (one shard's part of the scale)."""
    values: dict[str, list[float]] = defaultdict(list)
    for record in records:
        values[record.metric].append(record.value)
    return {metric: Moments.of(vals) for metric, vals in values.items()}


def merge_moments(parts: Iterable[Mapping[str, Moments]], lower_better: Mapping[str, bool]) -> dict[str, MetricScale]:
    """Each metric's ``MetricScale`` from the shards' moments, merged in the order given (the
    same order gives the same floats); `lower_better`: each metric's direction."""
    total: dict[str, Moments] = {}
    for part in parts:
        for metric, moments in part.items():
            total[metric] = total[metric].merge(moments) if metric in total else moments
    return {metric: MetricScale(metric, m.n, m.mean, math.sqrt(m.m2 / m.n) if m.n else 0.0, lower_better[metric])
            for metric, m in sorted(total.items())}


def fit_scales(records: Iterable[ScoreRecord]) -> dict[str, MetricScale]:
    """Each metric's ``MetricScale`` over `records` (all of a dataset at once)."""
    records = list(records)
    _check(records)
    return merge_moments([metric_moments(records)], {r.metric: r.lower_better for r in records})


def logistic(z: float) -> float:
    """1 / (1 + exp(-z)), without overflow for large |z|."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def normalise(records: Iterable[ScoreRecord], scales: Mapping[str, MetricScale]) -> list[ScoreRecord]:
    """Records with ``normalised`` = logistic(z) on the dataset-wide `scales` (module doc).

    Raises ValueError for a non-finite raw value, a duplicate (instance, candidate, metric),
    or a metric that `scales` does not cover.
    """
    records = list(records)
    _check(records)
    missing = sorted({r.metric for r in records} - set(scales))
    if missing:
        raise ValueError(f"no dataset scale for metrics {missing}: fit_scales / merge_moments over every shard first")
    return [replace(record, normalised=logistic(scales[record.metric].z(record.value))) for record in records]


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
            raise ValueError("reward() needs normalised records: call normalise(records, scales) first")
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
