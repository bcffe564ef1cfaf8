"""The metrics ``DSPOTrainer`` emits through ``on_log(step, metrics)``: keys and how to read them.

Every value is a plain float computed over ALL pairs of the step (every micro-batch of
the accumulation window on every process): the per-pair terms are ``accelerator.gather``-ed
first, then reduced — never taken from one process.

==================  =====================================================================
key                 meaning
==================  =====================================================================
loss                weighted mean over the step's pairs of the per-pair loss ell(z)
                    (sum_b w_b ell(z_b) / sum_b w_b; sigmoid: ln 2 = 0.693 at step 0,
                    where the policy equals the reference).
implicit_acc        share of pairs with z > 0: the policy, relative to the reference,
                    fits the winner better than the loser. Saturates fast (often near 1
                    within a few hundred steps) and then says little — read the margin.
margin              mean z = -beta/2 [(d_w_policy - d_w_ref) - (d_l_policy - d_l_ref)],
                    the implicit reward margin. Growing steadily = learning the
                    preferences; exploding = over-optimisation (raise beta or lower lr).
d_w_policy          mean masked error d_w of the policy on the winners (eps/v-MSE, or the
                    one-step regression error), inside each instance mask.
d_w_ref             the same for the frozen reference. d_w_policy < d_w_ref: the winners
                    got more likely.
d_l_policy          mean masked error of the policy on the losers.
d_l_ref             the same for the reference. DPO may lower z by raising both errors;
                    d_w_policy drifting far above d_w_ref means the model is unlearning the
                    data (likelihood displacement), not just separating w from l.
grad_norm           global L2 norm of the gradient (after the cross-process all-reduce,
                    before clipping to max_grad_norm). Train only.
lr                  learning rate used for this step. Train only.
epoch               fractional epochs done after this step. Train only.
pairs_per_s         pairs of this step (all processes) / its wall-clock seconds, timed on each
                    process (the one value that is not identical on every rank). Train only.
eval_<key>          the first seven keys on the held-out pairs (fixed noise and t per pair,
                    so evaluations are comparable across steps), emitted in their own
                    on_log call at each eval step.
==================  =====================================================================
"""

from __future__ import annotations

import torch

from ..loss import LOSS_TYPES

#: Keys of every train log, in order.
TRAIN_KEYS = (
    "loss",
    "implicit_acc",
    "margin",
    "d_w_policy",
    "d_w_ref",
    "d_l_policy",
    "d_l_ref",
    "grad_norm",
    "lr",
    "epoch",
    "pairs_per_s",
)
#: Keys of every eval log.
EVAL_KEYS = tuple(f"eval_{key}" for key in TRAIN_KEYS[:7])


def summarize(terms: dict[str, torch.Tensor], loss_type: str) -> dict[str, float]:
    """Reduce per-pair terms (``step.PAIR_TERMS``, each (N,) over all pairs) to the metric values."""
    z = terms["z"].double()  # (N,)
    weight = terms["weight"].double()  # (N,)
    per_pair = LOSS_TYPES[loss_type](z)  # (N,)
    return {
        "loss": float((weight * per_pair).sum() / weight.sum()),
        "implicit_acc": float((z > 0).double().mean()),
        "margin": float(z.mean()),
        **{key: float(terms[key].double().mean()) for key in ("d_w_policy", "d_w_ref", "d_l_policy", "d_l_ref")},
    }
