"""One DSPO step on B pairs: ``dspo_step`` (forward of policy and reference, then ``dspo_loss``).

Shapes: B pairs; rows 0..B-1 winners, B..2B-1 losers (``dspo_core.loss`` convention); C
latent channels, (h, w) the latent grid; L x D the text embeddings.

Objectives
----------
``renoise`` (every backbone; Diffusion-DPO, and GDPO-SR's surrogate for one-step models):
one eps and one t per pair, shared by winner and loser (and by policy and reference):

    x_t^k = add_noise(z_k, eps, t)                       k in {w, l}
    d_k(phi) = mean_C (out_phi(x_t^k, t, c, z_lq) - target(z_k, eps, t))^2     per latent pixel

with target = eps or v per ``backbone.prediction_type`` (``backbone.target``).

``regression`` (one-step backbones; ``TrainConfig.one_step_objective``): the one-step model
as a Gaussian p_phi(z | LQ) = N(x0_phi, sigma^2 I) around its output, so
log p_phi(z_k) = -||x0_phi - z_k||^2 / (2 sigma^2) + const and the DPO log-ratio is a
difference of squared errors (sigma^2 folded into beta, like Diffusion-DPO's constants):

    x_T  = z_lq + s * eps                  s = regression_noise_strength (0: deterministic)
    x0_phi = predict_x0(x_T, out_phi(x_T, T1, c, z_lq), T1)     T1 = backbone.config.timestep (999)
    d_k(phi) = mean_C (x0_phi - z_k)^2     per latent pixel; the reference likewise with the adapters disabled

x0_phi is the same for winner and loser (one forward of B, not 2B, per model).

Text (``TrainConfig.text_mode``): c = the positive text ("prompt"), the empty text ("none"),
or with "prompt+negative" the guided output out = out(neg) + g * (out(cond) - out(neg)),
g = ``train_guidance_scale``, for policy and reference alike (so policy == reference at
init still gives z = 0); an empty negative text is the unconditional branch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..loss import dspo_loss, masked_error
from ..sr.diffusion import DiffusionSRBackbone
from .config import TrainConfig
from .latents import PairLatents

#: Per-pair values ``dspo_step`` returns for gathering across processes, each (B,).
PAIR_TERMS = ("z", "weight", "d_w_policy", "d_w_ref", "d_l_policy", "d_l_ref")


@dataclass
class TextConditioning:
    """Text embeddings of B pairs: the prompt branch and, for negative guidance, the negative branch."""

    cond: torch.Tensor  # (B, L, D)
    negative: torch.Tensor | None = None  # (B, L, D), only with text_mode "prompt+negative"
    guidance_scale: float = 1.0

    def repeat(self) -> TextConditioning:
        """The same conditioning for 2B rows (winners, then losers)."""
        negative = None if self.negative is None else torch.cat([self.negative, self.negative])
        return TextConditioning(torch.cat([self.cond, self.cond]), negative, self.guidance_scale)


@torch.no_grad()
def encode_conditioning(
    backbone: DiffusionSRBackbone, positive: Sequence[str], negative: Sequence[str], config: TrainConfig
) -> TextConditioning:
    """Text embeddings for ``config.text_mode`` (the text encoder is frozen: no grad)."""
    if config.text_mode == "none":
        return TextConditioning(backbone.encode_text([""] * len(positive)))
    if config.text_mode == "prompt":
        return TextConditioning(backbone.encode_text(list(positive)))
    both = backbone.encode_text(list(positive) + list(negative))  # (2B, L, D): one text-encoder call
    cond, neg = both.chunk(2)
    return TextConditioning(cond, neg, config.train_guidance_scale)


def guided_predict(
    backbone: DiffusionSRBackbone, x: torch.Tensor, t: torch.Tensor, text: TextConditioning, lq: torch.Tensor
) -> torch.Tensor:
    """``backbone.predict``, with negative guidance when ``text.negative`` is set: (N, C, h, w)."""
    if text.negative is None:
        return backbone.predict(x, t, text.cond, lq)  # (N, C, h, w)
    both = backbone.predict(  # one UNet call on 2N rows: [prompt branch; negative branch]
        torch.cat([x, x]), torch.cat([t, t]), torch.cat([text.cond, text.negative]), torch.cat([lq, lq])
    )
    cond, neg = both.chunk(2)  # (N, C, h, w) each
    return neg + text.guidance_scale * (cond - neg)


def instance_means(err: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair mask-weighted mean error (d_k^m of ``dspo_core.loss``, for logging): (2B, h, w) -> (B,), (B,)."""
    B = masks.shape[0]
    masks = masks.to(torch.promote_types(err.dtype, torch.float32))
    per_row = (err.to(masks.dtype).unflatten(0, (2, B)) * masks).sum(dim=(2, 3)) / masks.sum(dim=(1, 2))  # (2, B)
    return per_row[0], per_row[1]


@dataclass
class StepOutput:
    loss: torch.Tensor  # () differentiable in the trainable parameters
    metrics: dict[str, torch.Tensor]  # dspo_loss's batch metrics (detached)
    pair_terms: dict[str, torch.Tensor]  # PAIR_TERMS, each (B,) detached, for gathering


def dspo_step(
    backbone: DiffusionSRBackbone,
    latents: PairLatents,
    text: TextConditioning,
    masks: torch.Tensor,
    weights: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    config: TrainConfig,
    reference: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> StepOutput:
    """DSPO loss of B pairs (see the module docstring for the formulas).

    latents: (B, C, h, w) winner/loser and the LQ conditioning; masks: (B, h, w) pooled
    instance masks; weights: (B,); noise: (B, C, h, w) one eps per pair; timesteps: (B,)
    one t per pair (unused by "regression", which runs at the backbone's timestep).
    reference: a context manager factory inside which ``backbone.predict`` is the reference
    model (default ``backbone.reference``: LoRA adapters disabled).
    """
    reference = reference or backbone.reference
    B = masks.shape[0]
    noise = noise.to(latents.winner.device, latents.winner.dtype)  # (B, C, h, w)
    timesteps = timesteps.to(latents.winner.device)  # (B,)

    if config.one_step_objective == "regression":
        step_t = int(backbone.config.timestep)  # one-step backbones only (checked by the trainer)
        t = torch.full((B,), step_t, dtype=torch.long, device=timesteps.device)  # (B,)
        x_T = latents.lq + config.regression_noise_strength * noise  # (B, C, h, w)
        targets = torch.cat([latents.winner, latents.loser])  # (2B, C, h, w)

        def errors() -> torch.Tensor:
            x0 = backbone.predict_x0(x_T, guided_predict(backbone, x_T, t, text, latents.lq), t)  # (B, C, h, w)
            return masked_error(torch.cat([x0, x0]), targets)  # (2B, h, w): ||x0 - z_w||^2, ||x0 - z_l||^2

    else:
        z = torch.cat([latents.winner, latents.loser])  # (2B, C, h, w) winners then losers
        eps = torch.cat([noise, noise])  # (2B, C, h, w) the same eps for w and l of a pair
        t = torch.cat([timesteps, timesteps])  # (2B,) the same t for w and l
        x_t = backbone.add_noise(z, eps, t)  # (2B, C, h, w)
        target = backbone.target(z, eps, t)  # (2B, C, h, w) eps or v
        lq = torch.cat([latents.lq, latents.lq])  # (2B, C_lq, ...)
        text = text.repeat()  # (2B, L, D)

        def errors() -> torch.Tensor:
            return masked_error(guided_predict(backbone, x_t, t, text, lq), target)  # (2B, h, w)

    err_policy = errors()  # (2B, h, w) with grad to the trainable parameters
    with torch.no_grad(), reference():
        err_ref = errors()  # (2B, h, w) the frozen reference on the same inputs
    masks = masks.to(err_policy.device)  # (B, h, w)
    weights = weights.to(err_policy.device)  # (B,)
    loss, metrics = dspo_loss(err_policy, err_ref, masks, weights, config.beta, config.loss_type)

    d_w_policy, d_l_policy = instance_means(err_policy.detach(), masks)  # (B,), (B,)
    d_w_ref, d_l_ref = instance_means(err_ref, masks)  # (B,), (B,)
    pair_terms = {
        "z": metrics["per_pair_z"],
        "weight": weights.to(metrics["per_pair_z"].dtype),
        "d_w_policy": d_w_policy,
        "d_w_ref": d_w_ref,
        "d_l_policy": d_l_policy,
        "d_l_ref": d_l_ref,
    }
    return StepOutput(loss=loss, metrics=metrics, pair_terms=pair_terms)
