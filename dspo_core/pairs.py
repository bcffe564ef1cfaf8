"""Preference pairs per semantic instance from IQA rewards and human labels (DSPO steps 5-7).

    pairs, report = make_pairs(instances, labels, PairConfig())
    manifest["preferences"] = report.model_dump(mode="json")   # agreement_table() for a table

Inputs: one ``InstanceRewards`` per (sample, instance) with the N candidates' combined rewards
(computed upstream: dspo_core.iqa.rewards, each metric a dataset-wide z-score through a
logistic, so a reward gap keeps the size of the raw differences) and per-metric normalised
scores; optional ``HumanLabel`` s. No torch.

IQA ranking: reward descending, ties by candidate id ascending (ints numerically before strs):
among tied best the lowest id wins, among tied worst the highest id loses, whatever the dict
order. ``best_worst`` (DSPO Best/Worst-of-N) pairs rank 0 with rank N-1; ``top_bottom_k``
(DP2O-SR) pairs the top k with the bottom k (k clamped to N // 2: the sets never overlap), the
kept pairs sharing the instance weight equally (w_m / pairs kept) so every instance keeps its
mass w_m, as in L = sum_m w_m L^m. An IQA pair with margin 0 (a pure tie says nothing) or
below ``min_reward_gap`` (reward units: near the dataset mean 0.01 is about 0.04 standard
deviations of every metric together) is dropped and recorded as a ``DroppedPair``: a near-tie
says too little to train on.

Human labels follow dspo_core.label_rules, as the importer does: a label naming an unknown
instance or candidate, or best == worst, is a ``LabelError``; each annotator's first label on
an instance is their vote, a later identical one a ``DuplicateLabel`` (counted once, not an
error), a later different one a "conflicting" ``LabelError``. Best and worst are voted
separately. A resolved vote replaces the instance's IQA pairs with one pair of the full
instance weight and no gap filter (the human judgement is the point): source "both" if IQA
would have formed that pair, else "human" ("iqa": no resolved, used vote). An unresolved vote
makes the instance *contested*: reported, and by default it falls back to IQA
(``contested="drop"`` drops it).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dspo_core.label_rules import Judgement, StandingJudgements, choice_problem

CandidateId = int | str
InstanceId = int | str
Key = tuple[str, InstanceId]

#: Agreement keys that are not metric names: the combined reward and the fr/nr means.
REWARD_KEY, FR_KEY, NR_KEY = "reward", "fr_mean", "nr_mean"
RESERVED_KEYS = frozenset({REWARD_KEY, FR_KEY, NR_KEY})

_RECORD = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


def order_key(candidate_id: CandidateId) -> tuple[bool, CandidateId]:
    """Sort key of candidate ids: ints numerically, then strs lexically (mixed ids sort too)."""
    return (isinstance(candidate_id, str), candidate_id)


def pair_id(sample_id: str, instance_id: InstanceId, winner_id: CandidateId, loser_id: CandidateId) -> str:
    """Stable id of a pair: sha256 of the JSON list, 16 hex chars. JSON keeps 1 and "1" apart,
    and unlike hash() it does not change between processes."""
    text = json.dumps([sample_id, instance_id, winner_id, loser_id], separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class InstanceRewards(BaseModel):
    """Scores of the N candidates on one instance of one sample (input).

    sample_id: the LQ sample; instance_id: the instance (mask index) in it; weight: w_m >= 0;
    rewards: candidate_id -> combined reward (higher = better), >= 2 candidates; fr_scores /
    nr_scores: optional candidate_id -> mean normalised fidelity / realism; metric_scores:
    metric -> candidate_id -> normalised score in [0, 1] (higher = better, 0.5 = the dataset mean). Score dicts
    may only name candidates of ``rewards``.
    """

    model_config = _RECORD
    sample_id: str
    instance_id: InstanceId
    weight: float = Field(ge=0)
    rewards: dict[CandidateId, float]
    fr_scores: dict[CandidateId, float] | None = None
    nr_scores: dict[CandidateId, float] | None = None
    metric_scores: dict[str, dict[CandidateId, float]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> InstanceRewards:
        if len(self.rewards) < 2:
            raise ValueError(f"{self.key}: a preference needs >= 2 candidates, got {list(self.rewards)}")
        if RESERVED_KEYS & set(self.metric_scores):
            raise ValueError(f"{self.key}: metric names {sorted(RESERVED_KEYS)} are reserved")
        for name, scores in self.score_sources().items():
            extra = [c for c in scores if c not in self.rewards]
            if extra:
                raise ValueError(f"{self.key}: {name} names candidates {extra} that have no reward")
            if name in self.metric_scores and any(not 0.0 <= v <= 1.0 for v in scores.values()):
                raise ValueError(f"{self.key}: metric {name} scores must be normalised to [0, 1]")
        return self

    @property
    def key(self) -> Key:
        return (self.sample_id, self.instance_id)

    def score_sources(self) -> dict[str, dict[CandidateId, float]]:
        """Every score dict by agreement key: metrics, "reward", and "fr_mean"/"nr_mean" if given."""
        extra = {REWARD_KEY: self.rewards, FR_KEY: self.fr_scores, NR_KEY: self.nr_scores}
        return {**self.metric_scores, **{name: v for name, v in extra.items() if v is not None}}


class HumanLabel(BaseModel):
    """One annotator's judgement of one instance (input; validated by ``make_pairs``, not here,
    so that a bad label is reported instead of aborting the run).

    best / worst: candidate ids; hallucination: the annotator saw a hallucination in the worst
    candidate's instance region; description: free text about it (step 7 text feedback);
    annotator: who labelled; source: where the label came from (tool, campaign, "vlm:...").
    """

    model_config = _RECORD
    sample_id: str
    instance_id: InstanceId
    best: CandidateId
    worst: CandidateId
    hallucination: bool = False
    description: str | None = None
    annotator: str
    source: str = "human"
    labelled_at: datetime | None = None   # when the label was made or last edited: a later one revises


class PairConfig(BaseModel):
    """How instance rankings become preference pairs. Reward ties are always broken by candidate id
    (module doc): not configurable, as any fixed rule serves and determinism is what matters."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    strategy: Literal["best_worst", "top_bottom_k"] = Field("best_worst", description=(
        "'best_worst': DSPO Best/Worst-of-N, one pair per instance (argmax vs argmin reward). 'top_bottom_k': "
        "DP2O-SR, every top-k x bottom-k pair; the kept pairs of an instance share its weight equally."))
    k: int = Field(2, ge=1, description="k of top_bottom_k; clamped to N // 2 so top and bottom never overlap.")
    min_reward_gap: float = Field(0.01, ge=0.0, description=(
        "IQA pairs with reward margin (winner - loser) below this are dropped ('below_min_gap'); margin-0 pairs "
        "always are ('zero_gap'). In reward units (dspo_core.iqa.rewards: logistic of dataset-wide z-scores, "
        "slope 1/4 at the mean): 0.01 is about 0.04 standard deviations of every metric moving together, so "
        "near-ties are dropped and real differences kept. Human pairs are exempt."))
    use_human_labels: bool = Field(True, description=(
        "False: pairs come from IQA only (ablation). Labels are still validated and scored for agreement, and "
        "their hallucination flags / descriptions still attach to pairs whose loser they name."))
    human_vote: Literal["plurality", "absolute"] = Field("plurality", description=(
        "How votes on best (and, separately, on worst) resolve: 'plurality' = the uniquely most-voted "
        "candidate; 'absolute' = it also needs more than half of the votes."))
    contested: Literal["iqa", "drop"] = Field("iqa", description=(
        "An instance whose vote does not resolve (tie, no absolute majority, or voted best == voted worst): "
        "'iqa' falls back to the IQA pairs (keeps the data, the default); 'drop' drops the instance."))


class InstancePair(BaseModel):
    """One training pair (output): the two full candidate images of a sample, compared on one instance.

    pair_id: ``pair_id(sample_id, instance_id, winner_id, loser_id)``; weight: loss weight (the
    instance weight, split over its pairs for top_bottom_k); margin: IQA reward winner - loser,
    also for human pairs (then possibly <= 0: IQA disagreed); source: "iqa" | "human" | "both";
    winner_reward / loser_reward: IQA rewards; human_hallucination: an annotator whose worst is
    this loser flagged a hallucination; human_description: their descriptions, "; "-joined in
    annotator order, or None; annotators: all with a valid label on the instance, sorted.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    pair_id: str
    sample_id: str
    instance_id: InstanceId
    winner_id: CandidateId
    loser_id: CandidateId
    weight: float
    margin: float
    source: Literal["iqa", "human", "both"]
    winner_reward: float
    loser_reward: float
    human_hallucination: bool = False
    human_description: str | None = None
    annotators: list[str] = Field(default_factory=list)


class DroppedPair(BaseModel):
    """A pair that was not emitted: reason "zero_gap" | "below_min_gap" (IQA margin too small) or
    "contested" (instance dropped under ``contested="drop"``; winner/loser = the IQA pair)."""

    sample_id: str
    instance_id: InstanceId
    winner_id: CandidateId
    loser_id: CandidateId
    margin: float
    reason: Literal["zero_gap", "below_min_gap", "contested"]


class _LabelNote(BaseModel):
    # A label that adds no vote; position: its index in the labels given to make_pairs.
    sample_id: str
    instance_id: InstanceId
    annotator: str
    position: int
    reason: str


class DuplicateLabel(_LabelNote):
    """A label repeating the annotator's earlier label on the instance exactly (same best, worst,
    hallucination, description): counted once, not an error; reason names the earlier one."""


class LabelError(_LabelNote):
    """A rejected human label. code: "unknown_instance" (offending_id = the instance id),
    "unknown_candidate" (offending_id = the best or worst id), "best_equals_worst" (offending_id =
    that id), "conflicting" (the annotator's earlier label on the instance, which stays their vote,
    says otherwise; offending_id = the annotator; reason names it and what differs)."""

    code: Literal["unknown_instance", "unknown_candidate", "best_equals_worst", "conflicting"]
    offending_id: CandidateId | InstanceId


class ContestedInstance(BaseModel):
    """A labelled instance whose vote did not resolve: reason says why; annotators voted;
    votes: "best"/"worst" -> {candidate id as str: vote count}."""

    sample_id: str
    instance_id: InstanceId
    reason: str
    annotators: list[str]
    votes: dict[str, dict[str, int]]


class Agreement(BaseModel):
    """accuracy: share of resolved labelled instances where the score ranks the human best above
    the human worst (tie = 0.5); n: how many such instances had both candidates scored."""

    accuracy: float
    n: int


class PairReport(BaseModel):
    """What ``make_pairs`` did (output, JSON-able for the manifest).

    instances: inputs; labelled_instances: instances with >= 1 valid label; pairs: emitted;
    dropped_small_gap: IQA pairs dropped for zero/below-min margin; dropped_contested: contested
    instances dropped (``contested="drop"``); human_pairs: instances whose pair came from labels;
    human_overrides: of those, source "human" (differs from IQA); human_agreed: source "both";
    contested: count of ``contested_instances``; dropped: every ``DroppedPair``; label_errors /
    duplicate_labels: every ``LabelError`` / ``DuplicateLabel``; agreement: score name ->
    ``Agreement`` over resolved labelled instances (each metric, "reward", and "fr_mean"/"nr_mean"
    when given); config: the config used.
    """

    instances: int = 0
    labelled_instances: int = 0
    pairs: int = 0
    dropped_small_gap: int = 0
    dropped_contested: int = 0
    human_pairs: int = 0
    human_overrides: int = 0
    human_agreed: int = 0
    contested: int = 0
    contested_instances: list[ContestedInstance] = Field(default_factory=list)
    dropped: list[DroppedPair] = Field(default_factory=list)
    label_errors: list[LabelError] = Field(default_factory=list)
    duplicate_labels: list[DuplicateLabel] = Field(default_factory=list)
    revised_labels: list[DuplicateLabel] = Field(default_factory=list)   # superseded by a later-dated edit
    agreement: dict[str, Agreement] = Field(default_factory=dict)
    config: dict = Field(default_factory=dict)

    def agreement_table(self) -> list[dict]:
        """Agreement as table rows {"score", "accuracy", "n"}, sorted by score name."""
        return [{"score": k, "accuracy": a.accuracy, "n": a.n} for k, a in sorted(self.agreement.items())]


def _validate_labels(labels: Iterable[HumanLabel], index: dict[Key, InstanceRewards]
                     ) -> tuple[dict[Key, list[HumanLabel]], list[LabelError], list[DuplicateLabel]]:
    """(votes: each annotator's standing label per instance, annotators sorted; rejected labels;
    exact repeats), by dspo_core.label_rules; labels[i] names the label at index i of `labels`."""
    errors: list[LabelError] = []
    duplicates: list[DuplicateLabel] = []
    revisions: list[DuplicateLabel] = []
    standing = StandingJudgements()
    grouped: dict[Key, dict[str, HumanLabel]] = defaultdict(dict)
    for position, lab in enumerate(labels):
        about = {"sample_id": lab.sample_id, "instance_id": lab.instance_id, "annotator": lab.annotator,
                 "position": position}
        inst = index.get((lab.sample_id, lab.instance_id))
        if inst is None:
            errors.append(LabelError(**about, code="unknown_instance", offending_id=lab.instance_id,
                                     reason=f"no rewards for {(lab.sample_id, lab.instance_id)}"))
            continue
        unknown = [(role, c) for role, c in (("best", lab.best), ("worst", lab.worst)) if c not in inst.rewards]
        errors += [LabelError(**about, code="unknown_candidate", offending_id=c, reason=(
            f"{role} {c!r} is not a candidate of this instance (candidates {sorted(inst.rewards, key=order_key)})"))
            for role, c in unknown]
        if unknown:
            continue
        problem = choice_problem(lab.best, lab.worst)
        if problem is not None:
            errors.append(LabelError(**about, code="best_equals_worst", offending_id=lab.best, reason=problem))
            continue
        judgement = Judgement.of(lab.best, lab.worst, lab.hallucination, lab.description)
        repeat = standing.add((lab.annotator, *inst.key), judgement, f"labels[{position}]", lab.labelled_at)
        if repeat is None or repeat.revision:
            grouped[inst.key][lab.annotator] = lab
            if repeat is not None:
                revisions.append(DuplicateLabel(**about, reason=repeat.reason))
        elif repeat.duplicate:
            duplicates.append(DuplicateLabel(**about, reason=repeat.reason))
        else:
            errors.append(LabelError(**about, code="conflicting", offending_id=lab.annotator, reason=repeat.reason))
    votes = {key: [by_annotator[name] for name in sorted(by_annotator)] for key, by_annotator in grouped.items()}
    return votes, errors, duplicates, revisions


def _resolve(votes: Sequence[HumanLabel], rule: str) -> tuple[CandidateId, CandidateId] | str:
    """The voted (best, worst), or the reason the vote is contested."""
    picks = []
    for role in ("best", "worst"):
        counts = Counter(getattr(v, role) for v in votes)
        top = max(counts.values())
        leaders = sorted((c for c, n in counts.items() if n == top), key=order_key)
        if len(leaders) > 1:
            return f"tied {role} vote between {leaders} ({top} votes each)"
        if rule == "absolute" and 2 * top <= len(votes):
            return f"no absolute majority for {role}: {leaders[0]!r} has {top} of {len(votes)} votes"
        picks.append(leaders[0])
    if picks[0] == picks[1]:
        return f"voted best and voted worst are both {picks[0]!r}"
    return picks[0], picks[1]


def _iqa_pairs(inst: InstanceRewards, config: PairConfig) -> list[tuple[CandidateId, CandidateId]]:
    """(winner, loser) pairs of the IQA strategy, before gap filtering, in rank order."""
    ranking = sorted(inst.rewards, key=lambda c: (-inst.rewards[c], order_key(c)))
    if config.strategy == "best_worst":
        return [(ranking[0], ranking[-1])]
    k = min(config.k, len(ranking) // 2)
    return [(w, l) for w in ranking[:k] for l in ranking[-k:]]


def make_pairs(instances: Sequence[InstanceRewards], labels: Iterable[HumanLabel] = (),
               config: PairConfig | None = None) -> tuple[list[InstancePair], PairReport]:
    """Preference pairs of every instance (input order, then rank order) and the report; rules in
    the module doc. ValueError on duplicate (sample_id, instance_id): a pipeline bug, not data."""
    config = config or PairConfig()
    index: dict[Key, InstanceRewards] = {inst.key: inst for inst in instances}
    if len(index) != len(instances):
        raise ValueError(f"duplicate instances {[k for k, n in Counter(i.key for i in instances).items() if n > 1]}")
    votes, errors, duplicates, revisions = _validate_labels(labels, index)
    report = PairReport(instances=len(index), labelled_instances=len(votes), label_errors=errors,
                        duplicate_labels=duplicates, revised_labels=revisions, config=config.model_dump())
    hits: dict[str, list[float]] = defaultdict(list)  # score name -> per-instance agreement (1, 0.5, 0)
    pairs: list[InstancePair] = []

    def drop(key: Key, w: CandidateId, l: CandidateId, margin: float, reason: str) -> None:
        report.dropped.append(DroppedPair(sample_id=key[0], instance_id=key[1], winner_id=w, loser_id=l,
                                          margin=margin, reason=reason))

    for key, inst in index.items():
        r = inst.rewards
        iqa = _iqa_pairs(inst, config)
        inst_votes = votes.get(key, [])
        human = _resolve(inst_votes, config.human_vote) if inst_votes else None
        if isinstance(human, str):
            report.contested_instances.append(ContestedInstance(
                sample_id=key[0], instance_id=key[1], reason=human, annotators=[v.annotator for v in inst_votes],
                votes={role: {str(c): n for c, n in Counter(getattr(v, role) for v in inst_votes).items()}
                       for role in ("best", "worst")}))
            human = None
            if config.contested == "drop" and config.use_human_labels:
                w, l = iqa[0][0], iqa[-1][1]  # the best-vs-worst IQA pair stands for the instance
                drop(key, w, l, r[w] - r[l], "contested")
                continue
        if human is not None:  # agreement is measured whether or not the labels make the pairs
            b, wst = human
            for name, scores in inst.score_sources().items():
                if b in scores and wst in scores:
                    hits[name].append(1.0 if scores[b] > scores[wst] else 0.5 if scores[b] == scores[wst] else 0.0)
        if human is not None and config.use_human_labels:
            chosen = [(human[0], human[1], inst.weight, "both" if human in iqa else "human")]
        else:
            kept = []
            for w, l in iqa:
                gap = r[w] - r[l]
                if gap <= 0 or gap < config.min_reward_gap:  # rank order makes gap >= 0; 0 = a tie
                    drop(key, w, l, gap, "zero_gap" if gap <= 0 else "below_min_gap")
                else:
                    kept.append((w, l))
            chosen = [(w, l, inst.weight / len(kept), "iqa") for w, l in kept]
        annotators = [v.annotator for v in inst_votes]
        for w, l, weight, source in chosen:
            # Text feedback describes a region of a specific candidate: attach only what was said about this loser.
            about = [v for v in inst_votes if v.worst == l]
            # Blank descriptions count as none; the same text from several annotators is said once.
            descriptions = list(dict.fromkeys(text for v in about if (text := (v.description or "").strip())))
            pairs.append(InstancePair(
                pair_id=pair_id(key[0], key[1], w, l), sample_id=key[0], instance_id=key[1], winner_id=w, loser_id=l,
                weight=weight, margin=r[w] - r[l], source=source, winner_reward=r[w], loser_reward=r[l],
                human_hallucination=any(v.hallucination for v in about),
                human_description="; ".join(descriptions) or None, annotators=annotators))

    sources, reasons = Counter(p.source for p in pairs), Counter(d.reason for d in report.dropped)
    report.pairs, report.contested = len(pairs), len(report.contested_instances)
    report.human_agreed, report.human_overrides = sources["both"], sources["human"]
    report.human_pairs = sources["both"] + sources["human"]  # one human pair per instance
    report.dropped_small_gap = reasons["zero_gap"] + reasons["below_min_gap"]
    report.dropped_contested = reasons["contested"]
    report.agreement = {name: Agreement(accuracy=sum(v) / len(v), n=len(v)) for name, v in sorted(hits.items())}
    return pairs, report
