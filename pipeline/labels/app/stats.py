"""Label counts and inter-annotator agreement for the stats page.

Agreement is measured on instances labelled by two or more annotators:
- pairwise agreement: the share of annotator pairs (on the same instance) that chose the same
  best candidate (and the same worst, the same hallucination flag);
- Fleiss' kappa on the best and on the worst choice, with the candidate's position (A, B, ...)
  as the category and a varying number of raters per instance: chance agreement comes from
  how often each position was chosen overall. None where it is undefined (fewer than two
  shared instances, or every choice the same).
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from itertools import combinations

from pipeline.labels.app.book import Label


@dataclass
class PairAgreement:
    """Two annotators on the instances both labelled."""

    annotators: tuple[str, str]
    shared: int
    best: float
    worst: float
    hallucination: float


@dataclass
class Stats:
    """What the stats page shows."""

    labels: int = 0
    instances: int = 0                                   # instances with at least one label
    per_annotator: dict[str, dict[str, int]] = field(default_factory=dict)  # name -> labels, hallucinations
    shared_instances: int = 0                            # instances with two or more annotators
    best_agreement: float | None = None
    worst_agreement: float | None = None
    hallucination_agreement: float | None = None
    best_kappa: float | None = None
    worst_kappa: float | None = None
    pairs: list[PairAgreement] = field(default_factory=list)


def fleiss_kappa(items: list[list[int]]) -> float | None:
    """Fleiss' kappa of category choices, one list of choices per item (items with fewer than
    two raters are ignored)."""
    items = [choices for choices in items if len(choices) >= 2]
    if len(items) < 2:
        return None
    totals: Counter[int] = Counter()
    observed = 0.0
    for choices in items:
        counts = Counter(choices)
        totals.update(counts)
        raters = len(choices)
        observed += (sum(count * count for count in counts.values()) - raters) / (raters * (raters - 1))
    observed /= len(items)
    every = sum(totals.values())
    chance = sum((count / every) ** 2 for count in totals.values())
    if chance >= 1.0:
        return None
    return (observed - chance) / (1.0 - chance)


def _share(agreeing: int, total: int) -> float | None:
    return agreeing / total if total else None


def compute(labels: list[Label], position: dict[str, int]) -> Stats:
    """Stats of `labels`; `position` maps a candidate id to its index within its sample."""
    stats = Stats(labels=len(labels))
    by_instance: dict[str, list[Label]] = defaultdict(list)
    for label in labels:
        counts = stats.per_annotator.setdefault(label.annotator, {"labels": 0, "hallucinations": 0})
        counts["labels"] += 1
        counts["hallucinations"] += int(label.hallucination)
        if label.instance_id:
            by_instance[label.instance_id].append(label)
    stats.per_annotator = dict(sorted(stats.per_annotator.items()))
    stats.instances = len(by_instance)
    shared = {instance: group for instance, group in by_instance.items() if len(group) >= 2}
    stats.shared_instances = len(shared)
    agree = Counter()
    per_pair: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for group in shared.values():
        for first, second in combinations(sorted(group, key=lambda label: label.annotator), 2):
            outcome = Counter(pairs=1, best=int(first.best == second.best), worst=int(first.worst == second.worst),
                              hallucination=int(first.hallucination == second.hallucination))
            agree.update(outcome)
            per_pair[(first.annotator, second.annotator)].update(outcome)
    stats.best_agreement = _share(agree["best"], agree["pairs"])
    stats.worst_agreement = _share(agree["worst"], agree["pairs"])
    stats.hallucination_agreement = _share(agree["hallucination"], agree["pairs"])
    stats.best_kappa = fleiss_kappa([[position.get(label.best, -1) for label in group] for group in shared.values()])
    stats.worst_kappa = fleiss_kappa([[position.get(label.worst, -1) for label in group]
                                      for group in shared.values()])
    stats.pairs = [PairAgreement(names, counts["pairs"], counts["best"] / counts["pairs"],
                                 counts["worst"] / counts["pairs"], counts["hallucination"] / counts["pairs"])
                   for names, counts in sorted(per_pair.items())]
    return stats
