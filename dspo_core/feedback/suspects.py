"""Hallucination suspects: a loser instance that is unfaithful to the HR yet looks good.

DSPO step 7 **[ours]**: a loser instance is flagged when its fidelity to the HR crop is
low (normalised full-reference score <= ``fr_max``) while its no-reference quality is
high (normalised no-reference score >= ``nr_min``): sharp, plausible detail that is not
in the ground truth. Human flags are handled by the caller (they override this test).
"""

from __future__ import annotations

import math

from .config import SuspectConfig


def _check(name: str, value: float | None) -> None:
    if value is None:
        return
    if not math.isfinite(value) or not -1e-9 <= value <= 1.0 + 1e-9:
        raise ValueError(f"{name} must be a normalised score in [0, 1], got {value}")


def suspect(fr_score: float | None, nr_score: float | None, config: SuspectConfig | None = None) -> tuple[bool, str]:
    """Is this loser instance a hallucination suspect?

    Args:
        fr_score: mean normalised full-reference score of the instance (``RewardRecord.fr``,
            1 = most faithful candidate of the group); None when no FR metric ran.
        nr_score: mean normalised no-reference score (``RewardRecord.nr``, 1 = most
            realistic); None when no NR metric ran.
        config: thresholds (default ``SuspectConfig()``).

    Returns:
        ``(flag, reason)``: ``flag`` is True iff ``fr_score <= fr_max`` and
        ``nr_score >= nr_min``; ``reason`` is one sentence for a person, naming the test
        that decided with the values and thresholds, e.g. ``"Suspected hallucination: low
        fidelity to the HR (0.10, at most 0.35) while it looks realistic (0.90, at least
        0.60)."`` With a missing score the flag is False and the reason says which is missing.

    Raises:
        ValueError: a score outside [0, 1] or not finite (not a normalised score).
    """
    config = config or SuspectConfig()
    _check("fr_score", fr_score)
    _check("nr_score", nr_score)
    if fr_score is None or nr_score is None:
        missing = " or ".join(name for name, value in (("fidelity (full-reference)", fr_score),
                                                       ("realism (no-reference)", nr_score)) if value is None)
        return False, f"Not a suspect: no {missing} score was measured, so fidelity cannot be weighed against realism."
    low_fidelity = fr_score <= config.fr_max
    high_realism = nr_score >= config.nr_min
    if low_fidelity and high_realism:
        return True, (f"Suspected hallucination: low fidelity to the HR ({fr_score:.2f}, at most {config.fr_max:.2f}) "
                      f"while it looks realistic ({nr_score:.2f}, at least {config.nr_min:.2f}).")
    why = []
    if not low_fidelity:
        why.append(f"its fidelity to the HR ({fr_score:.2f}) is too high for a hallucination "
                   f"(at most {config.fr_max:.2f})")
    if not high_realism:
        why.append(f"its realism ({nr_score:.2f}) is below the {config.nr_min:.2f} a hallucination needs")
    return False, f"Not a suspect: {', and '.join(why)}."
