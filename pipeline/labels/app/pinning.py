"""One consistent set of app inputs, pinned through lineage from the candidates' version.

The candidates were made from one lq_pairs version; the instances must be segmented from that
same lq_pairs version, and the scores must have scored exactly these candidates and instances.
A ref given as `<name>@latest` (the defaults) becomes the newest version that is consistent; a
ref pinned by version or tag that is not consistent is refused, naming the mismatch.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from pipeline.datasets import lineage_ref
from storage import DatasetNotFoundError, DatasetStore, StoreError

log = logging.getLogger("pipeline.labels.app")


@dataclass(frozen=True)
class PinnedInputs:
    """The pinned refs the app reads: scores None when there are none to use."""

    candidates: str
    instances: str
    lq_pairs: str
    scores: str | None


def _mismatches(store: DatasetStore, ref: str, expected: dict[str, str]) -> list[str]:
    """"instances@v2 was made from lq_pairs@v1, not lq_pairs@v2" for every input of `ref`'s
    lineage that differs from `expected` ({name: ref}); names not in its lineage are not checked."""
    found = []
    for name, wanted in expected.items():
        made = lineage_ref(store, ref, name)
        if made is not None and made != wanted:
            found.append(f"{ref} was made from {made}, not {wanted}")
    return found


def _consistent(store: DatasetStore, ref: str, expected: dict[str, str], option: str) -> str:
    """`ref` pinned: the newest consistent version for `<name>@latest`, else `ref` itself if it
    is consistent; StoreError naming the mismatch otherwise."""
    pinned = store.resolve(ref)
    name = pinned.partition("@")[0]
    if not _mismatches(store, pinned, expected):
        return pinned
    if ref.endswith("@latest"):
        for version in sorted(store.versions(name), reverse=True):
            candidate = f"{name}@v{version}"
            if not _mismatches(store, candidate, expected):
                log.warning("%s is not consistent with %s: using %s", pinned, ", ".join(expected.values()), candidate)
                return candidate
    raise StoreError(f"{'; '.join(_mismatches(store, pinned, expected))}: the app shows one consistent set of "
                     f"inputs; name a matching version ({option} REF)")


def pin_inputs(store: DatasetStore, candidates: str, instances: str, lq_pairs: str | None,
               scores: str | None) -> PinnedInputs:
    """The app's inputs, pinned consistently from `candidates` (see the module docstring)."""
    candidates_ref = store.resolve(candidates)
    made_from = lineage_ref(store, candidates_ref, "lq_pairs")
    if lq_pairs:
        lq_ref = store.resolve(lq_pairs)
        if made_from is not None and made_from != lq_ref:
            raise StoreError(f"{candidates_ref} was made from {made_from}, not {lq_ref}: "
                             "drop --lq-pairs or name the candidates made from it")
    elif made_from is None:
        raise StoreError(f"{candidates_ref} has no lq_pairs in its lineage: name the LQ pairs its "
                         "candidates were made from (--lq-pairs REF)")
    else:
        lq_ref = made_from
    instances_ref = _consistent(store, instances, {"lq_pairs": lq_ref}, "--instances")
    scores_ref = None
    if scores:
        try:
            store.resolve(scores)
        except DatasetNotFoundError:
            log.warning("no %s in the store: tasks are served in sample order", scores)
        else:
            scores_ref = _consistent(store, scores, {"sr_candidates": candidates_ref, "instances": instances_ref,
                                                     "lq_pairs": lq_ref}, "--scores")
    return PinnedInputs(candidates_ref, instances_ref, lq_ref, scores_ref)
