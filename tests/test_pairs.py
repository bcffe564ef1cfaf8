"""Preference pairs from per-instance rewards and human labels (dspo_core.pairs)."""

import json
import subprocess
import sys

import pytest
from pydantic import ValidationError

from dspo_core.pairs import (
    HumanLabel,
    InstanceRewards,
    PairConfig,
    make_pairs,
    pair_id,
)


def inst(rewards, sample="s0", instance=0, weight=1.0, metrics=None, fr=None, nr=None):
    return InstanceRewards(sample_id=sample, instance_id=instance, weight=weight, rewards=rewards,
                           metric_scores=metrics or {}, fr_scores=fr, nr_scores=nr)


def label(best, worst, annotator="ann1", sample="s0", instance=0, **kw):
    return HumanLabel(sample_id=sample, instance_id=instance, best=best, worst=worst, annotator=annotator, **kw)


def wl(pairs):
    return [(p.winner_id, p.loser_id) for p in pairs]


def test_best_worst_of_n_hand_example():
    pairs, report = make_pairs([inst({0: 0.2, 1: 0.9, 2: 0.5, 3: 0.1}, weight=0.3)])
    (p,) = pairs
    assert (p.winner_id, p.loser_id) == (1, 3)
    assert p.margin == pytest.approx(0.8)
    assert (p.winner_reward, p.loser_reward) == (0.9, 0.1)
    assert p.weight == 0.3 and p.source == "iqa" and p.annotators == [] and p.human_description is None
    assert (report.instances, report.pairs, report.dropped_small_gap, report.contested) == (1, 1, 0, 0)


def test_min_gap_drops_and_reports():
    instances = [inst({0: 0.50, 1: 0.55}, instance=0), inst({0: 0.1, 1: 0.9}, instance=1),
                 inst({0: 0.4, 1: 0.4, 2: 0.4}, instance=2)]
    pairs, report = make_pairs(instances, config=PairConfig(min_reward_gap=0.1))
    assert [(p.instance_id, p.winner_id, p.loser_id) for p in pairs] == [(1, 1, 0)]
    assert report.dropped_small_gap == 2
    reasons = {(d.instance_id, d.reason) for d in report.dropped}
    assert reasons == {(0, "below_min_gap"), (2, "zero_gap")}
    assert report.dropped[0].margin == pytest.approx(0.05)
    # A pure tie is dropped even with no threshold; a tiny positive gap is kept.
    pairs, report = make_pairs(instances)
    assert len(pairs) == 2 and [d.reason for d in report.dropped] == ["zero_gap"]


def test_top_bottom_k_counts_and_weights():
    rewards = {0: 0.9, 1: 0.8, 2: 0.5, 3: 0.2, 4: 0.1}
    pairs, report = make_pairs([inst(rewards, weight=0.4)], config=PairConfig(strategy="top_bottom_k", k=2))
    assert wl(pairs) == [(0, 3), (0, 4), (1, 3), (1, 4)]
    assert all(p.weight == pytest.approx(0.1) for p in pairs)
    # k is clamped to N // 2: N=4, k=3 gives the 2 x 2 disjoint pairs.
    pairs, _ = make_pairs([inst({0: 0.9, 1: 0.8, 2: 0.2, 3: 0.1})], config=PairConfig(strategy="top_bottom_k", k=3))
    assert wl(pairs) == [(0, 2), (0, 3), (1, 2), (1, 3)]
    # A dropped pair leaves the instance's weight to the kept ones (it keeps its mass).
    cfg = PairConfig(strategy="top_bottom_k", k=2, min_reward_gap=0.65)
    pairs, report = make_pairs([inst(rewards, weight=0.4)], config=cfg)
    assert wl(pairs) == [(0, 3), (0, 4), (1, 4)] and report.dropped_small_gap == 1
    assert sum(p.weight for p in pairs) == pytest.approx(0.4)
    assert all(p.weight == pytest.approx(0.4 / 3) for p in pairs)


def test_ties_broken_by_candidate_id_whatever_the_dict_order():
    a = {"b": 0.9, "a": 0.9, "c": 0.1, "d": 0.1}
    b = dict(reversed(list(a.items())))
    for rewards in (a, b):
        pairs, _ = make_pairs([inst(rewards)])
        assert wl(pairs) == [("a", "d")]  # lower id ranks higher on both ends
    pairs, _ = make_pairs([inst(a)], config=PairConfig(strategy="top_bottom_k", k=2))
    assert wl(pairs) == [("a", "c"), ("a", "d"), ("b", "c"), ("b", "d")]
    _, report = make_pairs([inst({2: 0.5, 0: 0.5, 1: 0.5})])
    (d,) = report.dropped
    assert (d.winner_id, d.loser_id, d.reason) == (0, 2, "zero_gap")


def test_human_override_both_and_iqa_sources():
    instances = [inst({0: 0.9, 1: 0.5, 2: 0.1}, instance=i) for i in range(3)]
    labels = [label(0, 2, instance=0),              # agrees with IQA
              label(2, 0, instance=1, hallucination=True, description="fake text on sign")]
    pairs, report = make_pairs(instances, labels, PairConfig(min_reward_gap=0.5))
    by = {p.instance_id: p for p in pairs}
    assert by[0].source == "both" and (by[0].winner_id, by[0].loser_id) == (0, 2)
    assert by[1].source == "human" and (by[1].winner_id, by[1].loser_id) == (2, 0)
    assert by[1].margin == pytest.approx(-0.8)  # IQA margin even for human pairs; no gap filter
    assert (by[1].human_hallucination, by[1].human_description) == (True, "fake text on sign")
    assert by[2].source == "iqa" and by[2].annotators == []
    assert by[0].annotators == ["ann1"] and by[0].weight == 1.0
    assert (report.human_pairs, report.human_overrides, report.human_agreed, report.labelled_instances) == (2, 1, 1, 2)
    # Text feedback attaches only to a pair whose loser is the candidate it describes.
    pairs, _ = make_pairs(instances[1:2], labels[1:], PairConfig(use_human_labels=False))
    assert wl(pairs) == [(0, 2)] and pairs[0].source == "iqa" and pairs[0].annotators == ["ann1"]
    assert (pairs[0].human_hallucination, pairs[0].human_description) == (False, None)


def test_human_pair_in_top_bottom_k_is_both_when_iqa_would_form_it():
    rewards = {0: 0.9, 1: 0.8, 2: 0.2, 3: 0.1}
    pairs, _ = make_pairs([inst(rewards, weight=0.6)], [label(1, 2)], PairConfig(strategy="top_bottom_k"))
    assert wl(pairs) == [(1, 2)] and pairs[0].source == "both" and pairs[0].weight == 0.6


def test_majority_vote_and_description_merging():
    labels = [label(1, 3, "a", hallucination=True, description="extra eye"),
              label(1, 3, "b", description="extra eye"), label(2, 3, "c", description="  "),
              label(0, 2, "d", hallucination=True, description="melted window")]
    pairs, report = make_pairs([inst({0: 0.2, 1: 0.9, 2: 0.5, 3: 0.1})], labels)
    (p,) = pairs
    assert (p.winner_id, p.loser_id, p.source) == (1, 3, "both")
    assert p.annotators == ["a", "b", "c", "d"]
    assert p.human_hallucination is True and p.human_description == "extra eye"
    assert report.contested == 0
    # Best 1 has 2 of 4 votes: a plurality, not an absolute majority.
    pairs, report = make_pairs([inst({0: 0.2, 1: 0.9, 2: 0.5, 3: 0.1})], labels, PairConfig(human_vote="absolute"))
    assert report.contested == 1 and "absolute majority for best" in report.contested_instances[0].reason
    assert pairs[0].source == "iqa"


def test_contested_falls_back_to_iqa_or_is_dropped():
    instances = [inst({0: 0.9, 1: 0.5, 2: 0.1})]
    labels = [label(1, 2, "a"), label(0, 2, "b")]
    pairs, report = make_pairs(instances, labels)
    assert report.contested == 1 and report.human_pairs == 0
    c = report.contested_instances[0]
    assert (c.sample_id, c.instance_id, c.annotators) == ("s0", 0, ["a", "b"])
    assert "tied best vote" in c.reason and c.votes == {"best": {"1": 1, "0": 1}, "worst": {"2": 2}}
    assert wl(pairs) == [(0, 2)] and pairs[0].source == "iqa" and pairs[0].annotators == ["a", "b"]
    assert report.agreement == {}  # no human judgement to agree with
    pairs, report = make_pairs(instances, labels, PairConfig(contested="drop"))
    assert pairs == [] and report.dropped_contested == 1 and report.dropped[0].reason == "contested"
    # Voted best == voted worst is contested too.
    labels = [label(1, 2, "a"), label(1, 3, "b"), label(2, 1, "c"), label(3, 1, "d")]
    _, report = make_pairs([inst({0: 0.9, 1: 0.5, 2: 0.1, 3: 0.0})], labels)
    assert "both 1" in report.contested_instances[0].reason


def test_agreement_accuracy_by_hand():
    # Human says 0 > 1 on instances 0, 1, 2. Metric A: agrees, agrees, ties -> 2.5 / 3.
    # Metric B: agrees, disagrees, unscored on instance 2 -> 1 / 2. Reward: agrees on all.
    rewards = {0: 0.8, 1: 0.2, 2: 0.5}
    a = [{0: 1.0, 1: 0.0}, {0: 0.6, 1: 0.4}, {0: 0.5, 1: 0.5}]
    b = [{0: 1.0, 1: 0.0}, {0: 0.0, 1: 1.0}, None]
    instances = [inst(rewards, instance=i, metrics={"A": a[i], **({"B": b[i]} if b[i] else {})},
                      fr={0: 0.1, 1: 0.9, 2: 0.5}) for i in range(3)]
    instances.append(inst(rewards, instance=3, metrics={"A": {0: 0.0, 1: 1.0}}))  # unlabelled: not counted
    labels = [label(0, 1, instance=i) for i in range(3)]
    _, report = make_pairs(instances, labels)
    ag = {k: (v.accuracy, v.n) for k, v in report.agreement.items()}
    assert ag["A"] == (pytest.approx(2.5 / 3), 3)
    assert ag["B"] == (0.5, 2)
    assert ag["reward"] == (1.0, 3) and ag["fr_mean"] == (0.0, 3) and "nr_mean" not in ag
    assert report.agreement_table()[0] == {"score": "A", "accuracy": pytest.approx(2.5 / 3), "n": 3}
    # Ablation without human pairs still measures agreement.
    pairs, report2 = make_pairs(instances, labels, PairConfig(use_human_labels=False))
    assert report2.agreement == report.agreement and {p.source for p in pairs} == {"iqa"}


def test_label_errors_reported_and_rest_kept():
    instances = [inst({0: 0.9, 1: 0.5, 2: 0.1}, instance=0), inst({0: 0.9, 1: 0.5, 2: 0.1}, instance=1)]
    labels = [label(2, 0, "good", instance=0),
              label(0, 1, "x", instance=7),                     # unknown instance
              label(0, 1, "x", sample="nope", instance=0),      # unknown sample
              label(9, 1, "y", instance=0),                     # unknown best
              label(1, 1, "z", instance=0),                     # best == worst
              label(0, 1, "w", instance=1), label(0, 2, "w", instance=1),   # conflicting: the first stands
              label(0, 1, "v", instance=1), label(0, 1, "v", instance=1)]   # identical duplicate: counted once
    pairs, report = make_pairs(instances, labels)
    errs = [(e.position, e.code, e.sample_id, e.instance_id, e.annotator, e.offending_id) for e in report.label_errors]
    assert errs == [(1, "unknown_instance", "s0", 7, "x", 7), (2, "unknown_instance", "nope", 0, "x", 0),
                    (3, "unknown_candidate", "s0", 0, "y", 9), (4, "best_equals_worst", "s0", 0, "z", 1),
                    (6, "conflicting", "s0", 1, "w", "w")]
    assert report.label_errors[-1].reason == "conflicts with the label by w in labels[5]: worst 1 there, 2 here"
    assert [(d.position, d.annotator, d.reason) for d in report.duplicate_labels] == [
        (8, "v", "duplicate of the label by v in labels[7]")]
    by = {p.instance_id: p for p in pairs}
    assert (by[0].winner_id, by[0].loser_id, by[0].source, by[0].annotators) == (2, 0, "human", ["good"])
    assert (by[1].winner_id, by[1].loser_id, by[1].annotators) == (0, 1, ["v", "w"])
    json.dumps(report.model_dump(mode="json"))  # manifest-ready


def test_one_judgement_per_annotator_and_instance():
    """dspo_core.label_rules, as the importer applies them (tests/test_labels.py runs the same
    labels through both): the first label stands, an exact repeat is a duplicate, anything else
    from the same annotator on the same instance conflicts."""
    labels = [label(0, 3, "a"),
              label(0, 3, "a", description="  "),                          # blank = none: duplicate
              label(1, 3, "a"),                                            # another best: conflict
              label(0, 3, "a", hallucination=True, description="fur"),     # a flag: conflict
              label(0, 3, "b", hallucination=True, description="fur"),
              label(0, 3, "b", hallucination=True, description=" fur "),   # surrounding blanks: duplicate
              label(0, 3, "b", hallucination=True, description="feathers"),
              label(2, 2, "c")]
    pairs, report = make_pairs([inst({0: 0.2, 1: 0.9, 2: 0.5, 3: 0.1})], labels)
    assert [(d.position, d.reason) for d in report.duplicate_labels] == [
        (1, "duplicate of the label by a in labels[0]"), (5, "duplicate of the label by b in labels[4]")]
    assert [(e.position, e.code, e.reason) for e in report.label_errors] == [
        (2, "conflicting", "conflicts with the label by a in labels[0]: best 0 there, 1 here"),
        (3, "conflicting", ("conflicts with the label by a in labels[0]: hallucination False there, True here; "
                            "description none there, 'fur' here")),
        (6, "conflicting", "conflicts with the label by b in labels[4]: description 'fur' there, 'feathers' here"),
        (7, "best_equals_worst", "best and worst are the same candidate 2")]
    (p,) = pairs  # the standing votes: a (0, 3) without a flag, b (0, 3) with one
    assert (p.winner_id, p.loser_id, p.source, p.annotators) == (0, 3, "human", ["a", "b"])
    assert (p.human_hallucination, p.human_description) == (True, "fur")
    assert report.labelled_instances == 1 and report.contested == 0


def test_pair_ids_stable_and_distinct():
    assert pair_id("s0", 0, 1, 3) == "1ad61b8fd9a7a066"  # fixed value: stable across processes and runs
    ids = {pair_id("s0", 0, 1, 3), pair_id("s0", 0, 3, 1), pair_id("s0", 1, 1, 3), pair_id("s1", 0, 1, 3),
           pair_id("s0", "0", 1, 3), pair_id("s0", 0, "1", 3)}
    assert len(ids) == 6
    instances = [inst({0: 0.9, 1: 0.8, 2: 0.2, 3: 0.1}, instance=i) for i in range(3)]
    cfg = PairConfig(strategy="top_bottom_k")
    first, second = make_pairs(instances, config=cfg)[0], make_pairs(instances, config=cfg)[0]
    assert [p.pair_id for p in first] == [p.pair_id for p in second]
    assert len({p.pair_id for p in first}) == 12


def test_input_validation():
    with pytest.raises(ValidationError, match="no reward"):
        inst({0: 0.1, 1: 0.2}, metrics={"psnr": {0: 0.0, 5: 1.0}})
    with pytest.raises(ValidationError, match=r"\[0, 1\]"):
        inst({0: 0.1, 1: 0.2}, metrics={"psnr": {0: 0.0, 1: 1.5}})
    with pytest.raises(ValidationError, match="reserved"):
        inst({0: 0.1, 1: 0.2}, metrics={"reward": {0: 0.0, 1: 1.0}})
    with pytest.raises(ValidationError, match=">= 2 candidates"):
        inst({0: 0.1})
    with pytest.raises(ValidationError):
        inst({0: float("nan"), 1: 0.2})
    with pytest.raises(ValidationError):
        inst({0: 0.1, 1: 0.2}, weight=-1.0)
    with pytest.raises(ValueError, match="duplicate"):
        make_pairs([inst({0: 0.1, 1: 0.2}), inst({0: 0.3, 1: 0.2})])
    with pytest.raises(ValidationError):
        PairConfig(strategy="all_pairs")


def test_imports_no_torch_or_orchestration():
    code = ("import sys, dspo_core.pairs; "
            "bad = [m for m in ('torch', 'prefect', 'storage', 'pipeline', 'flows') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
