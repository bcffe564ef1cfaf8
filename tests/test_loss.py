"""Tests of dspo_core.loss: hand-computed values, reductions, masking, weights, gradients, errors."""

import ast
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dspo_core.loss import LOSS_TYPES, dspo_loss, masked_error, pool_mask

torch.set_num_threads(1)

D = torch.float64
LN2 = math.log(2.0)


def t(values):
    return torch.tensor(values, dtype=D)


# ----------------------------------------------------------------------------- a hand-computed case
# B = 2 pairs on a 1 x 2 latent grid, beta = 2 (so -beta/2 = -1).
# pair 0: mask [1, 0.5]; pair 1: mask [0, 1] (its first cell is outside the instance).
ERR_POLICY = t([[[0.3, 0.5]], [[9.0, 0.2]], [[0.6, 0.2]], [[7.0, 0.1]]])  # w0, w1, l0, l1
ERR_REF = t([[[0.4, 0.4]], [[5.0, 0.1]], [[0.5, 0.2]], [[3.0, 0.3]]])
MASKS = t([[[1.0, 0.5]], [[0.0, 1.0]]])
WEIGHTS = t([3.0, 1.0])
BETA = 2.0

# d = sum(err * mask) / sum(mask), written out
D_W_POL = [(1 * 0.3 + 0.5 * 0.5) / 1.5, 0.2]
D_W_REF = [(1 * 0.4 + 0.5 * 0.4) / 1.5, 0.1]
D_L_POL = [(1 * 0.6 + 0.5 * 0.2) / 1.5, 0.1]
D_L_REF = [(1 * 0.5 + 0.5 * 0.2) / 1.5, 0.3]
Z = [-BETA / 2 * ((D_W_POL[b] - D_W_REF[b]) - (D_L_POL[b] - D_L_REF[b])) for b in range(2)]  # [0.1, -0.3]

HAND = {
    "sigmoid": lambda z: math.log(1.0 + math.exp(-z)),
    "hinge": lambda z: max(0.0, 1.0 - z),
    "ipo": lambda z: (z - 0.5) ** 2,
}


def test_hand_case_z_values():
    assert Z == pytest.approx([0.1, -0.3], abs=1e-12)


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
def test_every_loss_type_matches_hand_computation(loss_type):
    loss, metrics = dspo_loss(ERR_POLICY, ERR_REF, MASKS, WEIGHTS, BETA, loss_type)
    ell = HAND[loss_type]
    expected = (3.0 * ell(Z[0]) + 1.0 * ell(Z[1])) / (3.0 + 1.0)
    assert loss.dim() == 0 and loss.item() == pytest.approx(expected, abs=1e-12)
    assert metrics["loss"].item() == pytest.approx(expected, abs=1e-12)
    assert metrics["per_pair_z"].tolist() == pytest.approx(Z, abs=1e-12)
    assert metrics["d_w_policy"].item() == pytest.approx(sum(D_W_POL) / 2, abs=1e-12)
    assert metrics["d_w_ref"].item() == pytest.approx(sum(D_W_REF) / 2, abs=1e-12)
    assert metrics["d_l_policy"].item() == pytest.approx(sum(D_L_POL) / 2, abs=1e-12)
    assert metrics["d_l_ref"].item() == pytest.approx(sum(D_L_REF) / 2, abs=1e-12)


def test_literal_values_of_hinge_and_ipo():
    # z = [0.1, -0.3], weights [3, 1]: hinge (3*0.9 + 1.3)/4 = 1.0; ipo (3*0.16 + 0.64)/4 = 0.28
    assert dspo_loss(ERR_POLICY, ERR_REF, MASKS, WEIGHTS, BETA, "hinge")[0].item() == pytest.approx(1.0, abs=1e-12)
    assert dspo_loss(ERR_POLICY, ERR_REF, MASKS, WEIGHTS, BETA, "ipo")[0].item() == pytest.approx(0.28, abs=1e-12)


def test_registry_is_a_dict_of_the_three_types():
    assert isinstance(LOSS_TYPES, dict) and set(LOSS_TYPES) == {"sigmoid", "hinge", "ipo"}


def test_metrics_are_detached_and_named_exactly():
    err_policy = ERR_POLICY.clone().requires_grad_(True)
    _, metrics = dspo_loss(err_policy, ERR_REF, MASKS, WEIGHTS, BETA)
    names = {"loss", "implicit_acc", "margin", "d_w_policy", "d_w_ref", "d_l_policy", "d_l_ref", "per_pair_z"}
    assert set(metrics) == names
    for name, value in metrics.items():
        assert isinstance(value, torch.Tensor) and not value.requires_grad, name
        assert value.shape == ((2,) if name == "per_pair_z" else ()), name


# ----------------------------------------------------------------------------- reductions


def test_ones_masks_and_weights_equal_image_level_diffusion_dpo():
    g = torch.Generator().manual_seed(0)
    B, C, h, w, beta = 3, 4, 5, 6, 50.0
    target = torch.randn(2 * B, C, h, w, generator=g, dtype=D)
    pred_policy = target + 0.3 * torch.randn(2 * B, C, h, w, generator=g, dtype=D)
    pred_ref = target + 0.3 * torch.randn(2 * B, C, h, w, generator=g, dtype=D)
    # the reference Diffusion-DPO: per-image mean error over (C, h, w)
    mse_policy = (pred_policy - target).pow(2).mean(dim=[1, 2, 3])
    mse_ref = (pred_ref - target).pow(2).mean(dim=[1, 2, 3])
    model_diff = mse_policy[:B] - mse_policy[B:]
    ref_diff = mse_ref[:B] - mse_ref[B:]
    inside = -0.5 * beta * (model_diff - ref_diff)
    expected = -F.logsigmoid(inside).mean()

    loss, metrics = dspo_loss(
        masked_error(pred_policy, target),
        masked_error(pred_ref, target),
        torch.ones(B, h, w, dtype=D),
        torch.ones(B, dtype=D),
        beta,
    )
    assert loss.item() == pytest.approx(expected.item(), abs=1e-12)
    assert metrics["implicit_acc"].item() == pytest.approx((inside > 0).double().mean().item())
    assert metrics["d_w_policy"].item() == pytest.approx(mse_policy[:B].mean().item(), abs=1e-12)


def test_sigmoid_is_ln2_when_policy_equals_reference():
    g = torch.Generator().manual_seed(1)
    err = torch.rand(8, 7, 9, generator=g)  # float32, as in training
    masks = torch.rand(4, 7, 9, generator=g)
    loss, metrics = dspo_loss(err, err.clone(), masks, torch.rand(4, generator=g) + 0.1, 5000.0)
    assert abs(loss.item() - LN2) < 1e-7
    assert metrics["margin"].item() == 0.0
    assert metrics["implicit_acc"].item() == 0.0  # ties are not preferred


def test_implicit_acc_and_margin_on_a_constructed_case():
    # 1 x 1 grid, reference errors 0, beta 2: z = d_l_policy - d_w_policy
    winners = [0.1, 0.5, 0.2, 0.4]
    losers = [0.4, 0.1, 0.7, 0.4]  # z = [0.3, -0.4, 0.5, 0.0]
    err_policy = t(winners + losers).view(8, 1, 1)
    _, metrics = dspo_loss(
        err_policy, torch.zeros(8, 1, 1, dtype=D), torch.ones(4, 1, 1, dtype=D), torch.ones(4, dtype=D), 2.0
    )
    assert metrics["per_pair_z"].tolist() == pytest.approx([0.3, -0.4, 0.5, 0.0], abs=1e-12)
    assert metrics["implicit_acc"].item() == pytest.approx(0.5)  # 2 of 4; the tie z = 0 counts as not preferred
    assert metrics["margin"].item() == pytest.approx(0.1, abs=1e-12)


def _random_case(seed, B=3, h=4, w=5):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.rand(2 * B, h, w, generator=g, dtype=D),
        torch.rand(2 * B, h, w, generator=g, dtype=D),
        torch.rand(B, h, w, generator=g, dtype=D) * 0.9 + 0.1,
    )


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
def test_weights_only_rescale_across_pairs(loss_type):
    err_policy, err_ref, masks = _random_case(2)
    weights = t([1.0, 0.0, 2.0])
    loss = dspo_loss(err_policy, err_ref, masks, weights, 3.0, loss_type)[0]
    keep = [0, 2, 3, 5]  # pairs 0 and 2: winners 0, 2 and losers 3, 5
    without = dspo_loss(err_policy[keep], err_ref[keep], masks[[0, 2]], t([1.0, 2.0]), 3.0, loss_type)[0]
    assert loss.item() == pytest.approx(without.item(), abs=1e-12)
    # the weight-0 pair's errors do not matter at all
    changed_policy, changed_ref = err_policy.clone(), err_ref.clone()
    changed_policy[[1, 4]] = 50.0
    changed_ref[[1, 4]] = 0.0
    assert dspo_loss(changed_policy, changed_ref, masks, weights, 3.0, loss_type)[0].item() == loss.item()
    # a common scale of the weights changes nothing
    assert dspo_loss(err_policy, err_ref, masks, 7 * weights, 3.0, loss_type)[0].item() == pytest.approx(
        loss.item(), abs=1e-12
    )


def test_errors_inside_a_zeroed_mask_region_are_irrelevant():
    err_policy, err_ref, masks = _random_case(3)
    masks[:, :2, :] = 0.0  # top two latent rows are outside every instance
    loss = dspo_loss(err_policy, err_ref, masks, torch.ones(3, dtype=D), 5000.0)[0]
    changed_policy, changed_ref = err_policy.clone(), err_ref.clone()
    changed_policy[:, :2, :] = torch.rand(6, 2, 5, dtype=D) * 100
    changed_ref[:, :2, :] = 0.0
    assert dspo_loss(changed_policy, changed_ref, masks, torch.ones(3, dtype=D), 5000.0)[0].item() == loss.item()
    # ... while a change inside the instance does matter
    changed_policy[0, 3, 0] += 0.01
    assert dspo_loss(changed_policy, changed_ref, masks, torch.ones(3, dtype=D), 5000.0)[0].item() != loss.item()


# ----------------------------------------------------------------------------- gradients


def test_gradients_flow_to_err_policy_only():
    err_policy, err_ref, masks = _random_case(4)
    masks[:, 0, 0] = 0.0
    err_policy.requires_grad_(True)
    err_ref.requires_grad_(True)
    masks.requires_grad_(True)
    weights = torch.ones(3, dtype=D, requires_grad=True)
    loss, _ = dspo_loss(err_policy, err_ref, masks, weights, 10.0)
    loss.backward()
    assert err_ref.grad is None and masks.grad is None and weights.grad is None
    assert err_policy.grad is not None and err_policy.grad.abs().sum() > 0
    assert (err_policy.grad[:, 0, 0] == 0).all()  # a masked-out cell gets no gradient


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
def test_gradcheck_of_loss_in_err_policy(loss_type):
    err_policy, err_ref, masks = _random_case(5, B=2, h=2, w=3)
    weights = t([0.7, 0.3])
    beta = 2.0  # |z| stays well below 1 here, away from the hinge's kink
    err_policy.requires_grad_(True)
    z = dspo_loss(err_policy, err_ref, masks, weights, beta)[1]["per_pair_z"]
    assert (z - 1).abs().min() > 0.1
    assert torch.autograd.gradcheck(
        lambda ep: dspo_loss(ep, err_ref, masks, weights, beta, loss_type)[0], (err_policy,), eps=1e-6, atol=1e-8
    )


# ----------------------------------------------------------------------------- helpers


def test_masked_error_is_channel_mean_squared_error():
    pred = t([[[[1.0, 2.0]], [[3.0, 0.0]]]])  # (1, 2, 1, 2)
    target = t([[[[0.0, 0.0]], [[1.0, 1.0]]]])
    # channel 0 errors [1, 4], channel 1 errors [4, 1] -> mean [2.5, 2.5]
    assert masked_error(pred, target).tolist() == [[[2.5, 2.5]]]
    half = masked_error(pred.to(torch.bfloat16), target.to(torch.bfloat16))
    assert half.dtype == torch.float32  # upcast before the reduction


def test_pool_mask_keeps_the_area_share():
    mask = torch.zeros(2, 16, 16)
    mask[0, :6, :6] = 1.0  # 36 pixels
    mask[1, 3:13, 1:16] = 1.0
    pooled = pool_mask(mask, (4, 4))
    assert pooled.shape == (2, 4, 4)
    assert torch.allclose(pooled.mean(dim=(1, 2)), mask.mean(dim=(1, 2)))
    assert pooled[0, 0, 0] == 1.0 and pooled[0, 0, 1] == 0.5 and pooled[0, 1, 1] == 0.25 and pooled[0, 2, 2] == 0.0
    assert pooled[0].sum() * 16 == 36
    assert torch.equal(pool_mask(mask.bool(), (4, 4)), pooled)
    assert torch.equal(pool_mask(mask, (16, 16)), mask)


# ----------------------------------------------------------------------------- errors


def test_shape_errors_are_clear():
    err = torch.rand(4, 3, 3)
    masks, weights = torch.ones(2, 3, 3), torch.ones(2)
    with pytest.raises(ValueError, match=r"err_policy must be \(2B, h, w\)"):
        dspo_loss(torch.rand(3, 3, 3), torch.rand(3, 3, 3), masks, weights, 1.0)
    with pytest.raises(ValueError, match=r"err_policy must be \(2B, h, w\)"):
        dspo_loss(torch.rand(4, 9), torch.rand(4, 9), masks, weights, 1.0)
    with pytest.raises(ValueError, match="err_ref shape"):
        dspo_loss(err, torch.rand(4, 3, 2), masks, weights, 1.0)
    with pytest.raises(ValueError, match=r"masks must be \(B, h, w\)"):
        dspo_loss(err, err, torch.ones(2, 6, 6), weights, 1.0)
    with pytest.raises(ValueError, match=r"masks must be \(B, h, w\)"):
        dspo_loss(err, err, torch.ones(4, 3, 3), weights, 1.0)
    with pytest.raises(ValueError, match=r"weights must be \(B,\)"):
        dspo_loss(err, err, masks, torch.ones(2, 1), 1.0)
    with pytest.raises(ValueError, match="model_output and target"):
        masked_error(torch.rand(2, 4, 3, 3), torch.rand(2, 4, 3, 2))
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        pool_mask(torch.ones(2, 1, 8, 8), (2, 2))
    with pytest.raises(ValueError, match="not a whole multiple"):
        pool_mask(torch.ones(2, 10, 10), (4, 4))


def test_value_errors_are_clear():
    err = torch.rand(6, 3, 3)
    masks, weights = torch.ones(3, 3, 3), torch.ones(3)
    empty = masks.clone()
    empty[1] = 0.0
    with pytest.raises(ValueError, match=r"empty instance mask .* pair index\(es\) \[1\]"):
        dspo_loss(err, err, empty, weights, 1.0)
    with pytest.raises(ValueError, match=r"sum\(weights\) must be > 0"):
        dspo_loss(err, err, masks, torch.zeros(3), 1.0)
    with pytest.raises(ValueError, match="finite and >= 0"):
        dspo_loss(err, err, masks, torch.tensor([1.0, -1.0, 1.0]), 1.0)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        dspo_loss(err, err, masks * 255, weights, 1.0)
    with pytest.raises(ValueError, match="beta must be a positive"):
        dspo_loss(err, err, masks, weights, 0.0)
    with pytest.raises(ValueError, match=r"unknown loss_type 'dpo'.*\['hinge', 'ipo', 'sigmoid'\]"):
        dspo_loss(err, err, masks, weights, 1.0, "dpo")
    with pytest.raises(ValueError, match="pass the masks to dspo_loss"):
        masked_error(torch.rand(6, 4, 3, 3), torch.rand(6, 4, 3, 3), masks)


def test_loss_module_imports_no_upper_layer():
    path = Path(__file__).resolve().parents[1] / "dspo_core" / "loss.py"
    source = path.read_text()
    assert len(source.splitlines()) < 400
    for node in ast.walk(ast.parse(source)):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, node.module  # only absolute, third-party imports
            names = [node.module]
        assert not {n.split(".")[0] for n in names} & {"prefect", "storage", "pipeline", "flows", "dspo_core"}
