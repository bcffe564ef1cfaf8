"""The DSPO loss: Diffusion-DPO applied per semantic instance, in one file.

Shapes: B preference pairs; a batch of 2B latents, rows 0..B-1 the winners and
rows B..2B-1 the losers of the same pairs (winner b and loser B + b share one
noise eps and one timestep t, and the reference sees the same eps and t); C
latent channels; (h, w) the latent grid; (H, W) the pixel grid.

Derivation
----------
1. DPO (Rafailov et al. 2023). For a preferred x_w and a dispreferred x_l,
   with the implicit reward r(x) = beta * log(p_theta(x) / p_ref(x)):

       L_DPO = -log sigmoid(r(x_w) - r(x_l))

2. Diffusion-DPO (Wallace et al. 2023). log p_theta(x_0) of a diffusion model
   is intractable. Writing the reward on the whole chain x_{0:T}, bounding with
   Jensen (-log sigmoid is convex, so the expectation over t and eps moves
   outside it) and replacing the reverse chain by the forward q(x_{1:T} | x_0)
   turns every log-ratio into a difference of Gaussian KL terms, i.e. of
   noise-prediction errors at one (t, eps):

       d_k(phi) = || eps - eps_phi(x_t^k, t, c) ||^2            k in {w, l}
       z        = -beta / 2 * [ (d_w(theta) - d_w(ref)) - (d_l(theta) - d_l(ref)) ]
       L        = -log sigmoid(z)

   The 1/2 is the Gaussian KL's; T * omega(lambda_t) and the 1/(C h w) of a
   mean instead of a sum are constants folded into beta (beta ~ 5000 at SD
   scale). z is the implicit reward margin r(x_w) - r(x_l) with
   r(x) = -beta/2 * (d_theta(x) - d_ref(x)): positive when the policy lowered
   its error on the winner more (relative to the reference) than on the loser.
   Write h = z / beta for the unscaled log-ratio difference (used for IPO below).
   With v-prediction, eps and eps_phi are v and v_phi; nothing else changes.

3. DSPO (Cai et al. 2025). The preference is per semantic instance m, with
   instance mask s_m and weight w_m = |s_m| / sum_m' |s_m'| (pixel counts); one
   Diffusion-DPO term per instance, summed *outside* the log-sigmoid:

       L = sum_m w_m * L_DPO^m

   Outside matters: each instance is its own Bradley-Terry comparison, so a
   pair whose winner is better on one instance and worse on another does not
   cancel the two inside one sigmoid. Image-level Diffusion-DPO is one all-ones
   instance with weight 1: masks of ones and weights of ones here.

4. Per-instance error (this project's choice; DSPO.md, [ours]). The mask is
   average-pooled to the latent grid (``pool_mask``): s~_m in [0, 1] is the
   share of each latent cell's pixels inside the instance. With
   e = mean_C (eps - eps_phi)^2, the (h, w) error map from ``masked_error``:

       d_k^m = sum_ij s~_m[i, j] * e_k[i, j] / sum_ij s~_m[i, j]

   a weighted mean with the area shares as weights: a constant error map e
   gives d = e for every instance shape, and every instance pixel counts once.
   DSPO.md writes || s~ * (eps - eps_phi) ||^2 / (C ||s~||_1) = sum s~^2 e /
   sum s~. The two agree wherever s~ is 0 or 1; at fractional boundary cells
   the s~^2 form under-weights them, which scales d (and so the effective
   beta) by sum s~^2 / sum s~ < 1 — more for small or thin instances. We use
   the weighted mean.

5. Batch reduction. A batch holds pairs from many images and instances:

       loss = sum_b w_b * ell(z_b) / sum_b w_b

   Within one image sum_m w_m = 1, so a batch that holds exactly one image's
   instance pairs gives DSPO's sum_m w_m L^m; for any other batch the
   normalisation keeps the loss a weighted mean whose scale does not depend on
   batch size or on how many small instances it happened to draw. A pair of
   weight 0 has no effect. The normalisation is per call (per process); under
   data parallelism callers gather ``per_pair_z`` and the weights to log a
   global weighted mean.

Loss types (``LOSS_TYPES``, ell as a function of z, elementwise on (B,)):

- ``sigmoid``: -log sigmoid(z). Diffusion-DPO. ell(0) = ln 2; d ell/dz = -sigmoid(-z).
- ``hinge``: relu(1 - z). SLiC-style hinge on the reference-corrected margin
  (as in TRL's "hinge"): margin 1 in z, i.e. 1/beta in h; no push once z >= 1.
- ``ipo``: (z - 1/2)^2. IPO (Azar et al. 2023) fits the log-ratio difference to a
  target: (h - 1/(2 tau))^2 with tau the regularisation strength. Here tau = beta
  and h = z / beta, so the paper's loss is (z/beta - 1/(2 beta))^2 = (z - 1/2)^2 / beta^2.
  We use (z - 1/2)^2, i.e. beta^2 times the paper's loss: the same minimiser
  (h* = 1/(2 beta), z* = 1/2) and the same regularisation, only a constant scale.
  Why: with beta ~ 5000 the paper's form is ~1e-8 with gradients beta^2 smaller
  than the other two; scaled, d ell/dh = 2 beta (z - 1/2) carries beta like
  sigmoid's -beta sigmoid(-z) and hinge's -beta, so one learning rate serves all
  three in ablations. (TRL's "ipo" is the unscaled form in h; its learning rates do
  not transfer.)

Numerics: errors are upcast to at least float32 before reducing. z is beta
(~5000) times a difference of two O(0.1) numbers; in bfloat16 (8-bit mantissa)
d keeps ~3 significant digits and z would be quantised in steps of ~beta * 4e-4.

Gradients flow to ``err_policy`` only: ``err_ref``, ``masks`` and ``weights`` are
detached (the reference is frozen; masks and weights are data).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["LOSS_TYPES", "dspo_loss", "masked_error", "pool_mask"]


# ----------------------------------------------------------------------------- per-pair losses of z


def _sigmoid_loss(z: torch.Tensor) -> torch.Tensor:
    return -F.logsigmoid(z)  # (B,) Diffusion-DPO


def _hinge_loss(z: torch.Tensor) -> torch.Tensor:
    return F.relu(1.0 - z)  # (B,) SLiC-style hinge, margin 1 in z


def _ipo_loss(z: torch.Tensor) -> torch.Tensor:
    return (z - 0.5) ** 2  # (B,) IPO scaled by beta^2 (see module docstring)


LOSS_TYPES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sigmoid": _sigmoid_loss,
    "hinge": _hinge_loss,
    "ipo": _ipo_loss,
}


# ----------------------------------------------------------------------------- helpers


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half/bfloat16/float32 inputs, float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


def masked_error(model_output: torch.Tensor, target: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
    """The per-latent-pixel squared error, channel-averaged: (2B, C, h, w) x2 -> (2B, h, w).

    ``target`` is eps or v (whatever the model predicts). The result is the error
    map that ``dspo_loss`` takes; masking happens there, once, so ``masks`` must
    stay None (it is refused rather than silently ignored, to rule out masking twice).
    """
    if masks is not None:
        raise ValueError("masked_error returns the unmasked error map; pass the masks to dspo_loss instead")
    if model_output.dim() != 4 or model_output.shape != target.shape:
        raise ValueError(
            f"model_output and target must both be (2B, C, h, w) of the same shape, "
            f"got {tuple(model_output.shape)} and {tuple(target.shape)}"
        )
    dtype = _compute_dtype(model_output.dtype)
    diff = model_output.to(dtype) - target.to(dtype)  # (2B, C, h, w)
    return diff.pow(2).mean(dim=1)  # (2B, h, w) mean over channels


def pool_mask(mask: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """Average-pool a (B, H, W) pixel mask to the latent grid: -> (B, h, w) in [0, 1].

    Each output cell is the share of its (H/h) x (W/w) pixel block inside the
    instance: 1 inside, 0 outside, fractional on the boundary. The fractions are
    intended (s~_m in DSPO.md): they weight boundary cells by how much of them
    belongs to the instance, so mean(pooled) == mean(mask) (the area share is
    kept). H and W must be multiples of h and w (as with a VAE of scale 8); any
    other grid means the mask and the latents do not describe the same image.
    """
    if mask.dim() != 3:
        raise ValueError(f"mask must be (B, H, W), got shape {tuple(mask.shape)}")
    h, w = latent_hw
    H, W = mask.shape[-2:]
    if h <= 0 or w <= 0 or H % h or W % w:
        raise ValueError(f"pixel mask {H}x{W} is not a whole multiple of the latent grid {h}x{w}")
    dtype = mask.dtype if mask.is_floating_point() else torch.float32
    pooled = F.adaptive_avg_pool2d(mask.to(dtype)[:, None], (h, w))  # (B, 1, H, W) -> (B, 1, h, w)
    return pooled[:, 0]  # (B, h, w)


# ----------------------------------------------------------------------------- checks


def _check_inputs(err_policy, err_ref, masks, weights, beta) -> None:
    """Shapes first (no host sync), then values (a few syncs; nothing next to a UNet forward)."""
    if err_policy.dim() != 3 or err_policy.shape[0] % 2:
        raise ValueError(
            f"err_policy must be (2B, h, w) with winners in rows 0..B-1 and losers in B..2B-1, "
            f"got shape {tuple(err_policy.shape)}"
        )
    if err_ref.shape != err_policy.shape:
        raise ValueError(f"err_ref shape {tuple(err_ref.shape)} != err_policy shape {tuple(err_policy.shape)}")
    two_b, h, w = err_policy.shape
    if masks.shape != (two_b // 2, h, w):
        raise ValueError(
            f"masks must be (B, h, w) = {(two_b // 2, h, w)} for errors of shape {(two_b, h, w)}, "
            f"got {tuple(masks.shape)} (pool pixel masks to the latent grid with pool_mask)"
        )
    if weights.shape != (two_b // 2,):
        raise ValueError(f"weights must be (B,) = ({two_b // 2},), got {tuple(weights.shape)}")
    if not (isinstance(beta, (int, float)) or (torch.is_tensor(beta) and beta.numel() == 1)):
        raise ValueError(f"beta must be a positive number, got {beta!r}")
    if not (math.isfinite(float(beta)) and float(beta) > 0):
        raise ValueError(f"beta must be a positive finite number, got {float(beta)}")
    if not ((masks >= 0) & (masks <= 1)).all():  # also catches NaN
        raise ValueError(f"masks must lie in [0, 1], got values in [{masks.min().item()}, {masks.max().item()}]")
    empty = (masks.sum(dim=(1, 2)) <= 0).nonzero().flatten().tolist()  # pair indices
    if empty:
        raise ValueError(
            f"empty instance mask (sum(mask) == 0) for pair index(es) {empty}: "
            "an instance with no pixels on the latent grid is a data bug"
        )
    if not torch.isfinite(weights).all() or (weights < 0).any():
        raise ValueError(f"weights must be finite and >= 0, got {weights.tolist()}")
    if weights.sum() <= 0:
        raise ValueError(f"sum(weights) must be > 0, got weights {weights.tolist()}")


# ----------------------------------------------------------------------------- the loss


def dspo_loss(
    err_policy: torch.Tensor,
    err_ref: torch.Tensor,
    masks: torch.Tensor,
    weights: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DSPO loss of B instance pairs; returns (loss, metrics). See the module docstring.

    err_policy, err_ref: (2B, h, w) error maps (``masked_error``), winners then losers.
    masks: (B, h, w) in [0, 1], instance masks on the latent grid (``pool_mask``);
    all ones for image-level Diffusion-DPO. weights: (B,) instance weights w_m, >= 0,
    positive sum (all ones for image-level). beta: > 0. loss_type: a key of LOSS_TYPES.

    loss is a 0-dim tensor differentiable in err_policy. metrics holds detached
    0-dim tensors ``loss``, ``implicit_acc`` (share of pairs with z > 0; ties,
    e.g. policy == reference, count as not preferred), ``margin`` (mean z), the
    pair means ``d_w_policy``, ``d_w_ref``, ``d_l_policy``, ``d_l_ref``, and
    ``per_pair_z`` (B,) for callers that gather across processes.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {sorted(LOSS_TYPES)}")
    _check_inputs(err_policy, err_ref, masks, weights, beta)
    B = masks.shape[0]
    dtype = _compute_dtype(err_policy.dtype)
    masks = masks.detach().to(dtype)  # (B, h, w)
    weights = weights.detach().to(dtype)  # (B,)
    area = masks.sum(dim=(1, 2))  # (B,) sum(mask) per pair, > 0 (checked)

    def instance_error(err: torch.Tensor) -> torch.Tensor:
        err = err.to(dtype).unflatten(0, (2, B))  # (2B, h, w) -> (2, B, h, w): [winners, losers]
        return (err * masks).sum(dim=(2, 3)) / area  # (2, B) mask-weighted mean per pair

    d_w_policy, d_l_policy = instance_error(err_policy)  # (B,), (B,)
    d_w_ref, d_l_ref = instance_error(err_ref.detach())  # (B,), (B,) no gradient to the reference

    z = -float(beta) / 2 * ((d_w_policy - d_w_ref) - (d_l_policy - d_l_ref))  # (B,) implicit reward margin
    per_pair = LOSS_TYPES[loss_type](z)  # (B,)
    loss = (weights * per_pair).sum() / weights.sum()  # () weighted mean over pairs

    z_detached = z.detach()  # (B,)
    metrics = {
        "loss": loss.detach(),  # ()
        "implicit_acc": (z_detached > 0).to(dtype).mean(),  # () share of pairs with z > 0
        "margin": z_detached.mean(),  # ()
        "d_w_policy": d_w_policy.detach().mean(),  # ()
        "d_w_ref": d_w_ref.mean(),  # ()
        "d_l_policy": d_l_policy.detach().mean(),  # ()
        "d_l_ref": d_l_ref.mean(),  # ()
        "per_pair_z": z_detached,  # (B,)
    }
    return loss, metrics
