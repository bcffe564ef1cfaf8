"""How to read a run's numbers, worded once for the evaluate report, the train and evaluate
manifests, the stage previews and the README.

- `random_init_notice(weights_id)`: the banner for a backbone built from its config with random
  weights (tiny-sd without a `path`): its numbers show the machinery, not image quality.
- `TRAIN_METRIC_READINGS`: how to read `loss`, `implicit_acc` and `margin`; the README's
  "Logged metrics" table has the same words (a test checks).
"""
from __future__ import annotations

# The weights id of a tiny SD built here from its config (dspo_core.sr.tiny), LoRA or not:
# no weight file was loaded, the UNet and VAE are random.
RANDOM_INIT_WEIGHTS_PREFIX = "builtin:tiny-sd/"

TRAIN_METRIC_READINGS: dict[str, str] = {
    "loss": "weighted mean per-pair loss; sigmoid starts at ln 2 = 0.693 (policy = reference)",
    "implicit_acc": "share of pairs with z > 0 (the policy fits the winner better than the loser, relative to the "
                    "reference); saturates fast — read the margin",
    "margin": "mean z = -beta/2 [(d_w_policy - d_w_ref) - (d_l_policy - d_l_ref)]: the implicit reward margin; "
              "steady growth = learning, explosion = over-optimisation (raise beta or lower lr)",
}


def is_random_init(weights_id: str) -> bool:
    """Whether `weights_id` (a backbone's `base_weights_id` or `weights_id`) names random-init weights."""
    return weights_id.startswith(RANDOM_INIT_WEIGHTS_PREFIX)


def random_init_notice(weights_id: str) -> str | None:
    """The sentence to put above a random-init backbone's numbers, or None for real weights."""
    if not is_random_init(weights_id):
        return None
    return (f"The backbone `{weights_id.partition('+')[0]}` is a tiny SD built from its config with random "
            "weights (no real weights loaded), so these numbers show that the machinery works (loss from "
            "ln 2, margins, base vs tuned), not image quality.")


def random_init_metadata(weights_id: str) -> dict:
    """The manifest record: {random_init_backbone: bool, random_init_notice: sentence or None}."""
    notice = random_init_notice(weights_id)
    return {"random_init_backbone": notice is not None, "random_init_notice": notice}


def notice_markdown(notice: str | None) -> str:
    """The banner as one markdown paragraph (a quote led by a bold title), or "" without a notice."""
    return f"> **Random-init backbone.** {notice}" if notice else ""
