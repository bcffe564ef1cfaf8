"""Tests of dspo_core.train on the tiny random SD backbone (CPU, one process).

The multi-process behaviour (gradient all-reduce, gathered metrics) is in
test_train_multiprocess.py.
"""

import ast
import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from dspo_core.loss import LOSS_TYPES, pool_mask
from dspo_core.sr import TinySDBackbone, TinySDConfig, build_tiny_sd
from dspo_core.train import (
    EVAL_KEYS,
    TRAIN_KEYS,
    DSPOTrainer,
    PairCollator,
    PairExample,
    ShardedPairOrder,
    TrainConfig,
)
from dspo_core.train.checkpoint import INFO_FILE, STATE_FILE, TRAINABLE_FILE

torch.set_num_threads(1)

LN2 = math.log(2.0)
SIZE = 64  # HR side: latent 8x8 under the tiny VAE's x8; LQ 16x16
LOSS_KEYS = TRAIN_KEYS[:7]
TRAIN_PACKAGE = Path(__file__).resolve().parents[1] / "dspo_core" / "train"
BASE = {"max_steps": 3, "batch_size": 2, "learning_rate": 1e-3, "beta": 5000.0, "seed": 0}


def _pairs(count, seed=0, equal_weights=False, size=(SIZE, SIZE), prefix="p"):
    """Pairs around the LQ: winner = nearest-upscaled LQ + small noise, loser + larger noise; one box mask each."""
    rng = np.random.default_rng(seed)
    height, width = size
    pairs = []
    for index in range(count):
        lq = rng.integers(0, 256, (height // 4, width // 4, 3), dtype=np.uint8)
        base = np.kron(lq, np.ones((4, 4, 1), dtype=np.uint8)).astype(np.int16)
        winner = np.clip(base + rng.integers(-8, 9, base.shape), 0, 255).astype(np.uint8)
        loser = np.clip(base + rng.integers(-60, 61, base.shape), 0, 255).astype(np.uint8)
        mask = np.zeros((height, width), bool)
        top, left = rng.integers(0, min(height, width) // 2, 2)
        mask[top : top + 20 + index % 7, left : left + 27] = True  # not aligned to the 8-px latent cells
        pairs.append(
            PairExample(
                lq=lq,
                winner=winner,
                loser=loser,
                mask=mask,
                weight=1.0 if equal_weights else float(rng.uniform(0.2, 1.0)),
                positive_text=f"a photo of object {index}",
                negative_text="" if index % 3 == 0 else f"garbled texture {index}",
                pair_id=f"{prefix}{index}",
            )
        )
    return pairs


PAIRS = _pairs(6)


@pytest.fixture(scope="module")
def eps_dir(tmp_path_factory):
    return build_tiny_sd(str(tmp_path_factory.mktemp("tiny-eps")), seed=0)


@pytest.fixture(scope="module")
def v_dir(tmp_path_factory):
    return build_tiny_sd(str(tmp_path_factory.mktemp("tiny-v")), seed=0, prediction_type="v_prediction")


def _trainer(model_dir, pairs=PAIRS, eval_pairs=None, on_log=None, **config):
    backbone = TinySDBackbone(TinySDConfig(path=model_dir))
    return DSPOTrainer(backbone, TrainConfig(**{**BASE, **config}), pairs, eval_pairs, on_log)


def _snapshot(module):
    return {name: param.detach().clone() for name, param in module.named_parameters()}


def _close(first, second, keys=LOSS_KEYS, rel=1e-6, abs_=1e-6):
    for key in keys:
        assert first[key] == pytest.approx(second[key], rel=rel, abs=abs_), key


# ----------------------------------------------------------------------------- what trains, what does not


def test_lora_trains_and_every_other_parameter_is_bit_identical(eps_dir):
    trainer = _trainer(eps_dir)
    backbone = trainer.backbone
    lora = {name: param.detach().clone() for name, param in trainer.named_params.items()}
    assert lora and all("lora_" in name for name in lora)
    frozen = {name: p for name, p in _snapshot(backbone.unet).items() if name not in lora}
    vae, text = _snapshot(backbone.vae), _snapshot(backbone.text_encoder)
    assert any("base_layer" in name for name in frozen)  # the adapted projections' own weights

    trainer.train()

    assert all(not torch.equal(trainer.named_params[name], before) for name, before in lora.items())
    after = _snapshot(backbone.unet)
    assert all(torch.equal(after[name], before) for name, before in frozen.items())
    assert all(torch.equal(p, vae[n]) for n, p in _snapshot(backbone.vae).items())
    assert all(torch.equal(p, text[n]) for n, p in _snapshot(backbone.text_encoder).items())


def test_first_step_loss_is_ln2_and_logs_every_key(eps_dir):
    logs = []
    trainer = _trainer(eps_dir, on_log=lambda step, metrics: logs.append((step, metrics)), max_steps=2)
    trainer.train()
    assert [step for step, _ in logs] == [1, 2] and all(tuple(m) == TRAIN_KEYS for _, m in logs)
    first = logs[0][1]
    assert abs(first["loss"] - LN2) < 1e-6  # policy == reference: z = 0
    assert first["margin"] == 0.0 and first["implicit_acc"] == 0.0
    assert first["d_w_policy"] == first["d_w_ref"] and first["d_l_policy"] == first["d_l_ref"]
    assert first["grad_norm"] > 0 and first["lr"] == pytest.approx(1e-3) and first["epoch"] == pytest.approx(1 / 3)
    assert logs[1][1]["margin"] != 0.0
    assert trainer.history == logs


def test_full_finetune_trains_the_unet_and_keeps_the_reference_frozen(eps_dir, tmp_path):
    trainer = _trainer(eps_dir, full_finetune=True, learning_rate=1e-4, max_steps=2)
    backbone = trainer.backbone
    assert set(trainer.named_params) == {name for name, _ in backbone.unet.named_parameters()}
    assert not any("lora" in name for name in trainer.named_params)
    policy, reference, vae = backbone.unet, trainer._ref_unet, _snapshot(backbone.vae)
    unet_before, ref_before = _snapshot(policy), _snapshot(reference)

    first = trainer.train_step()
    assert abs(first["loss"] - LN2) < 1e-6
    trainer.train_step()

    assert backbone.unet is policy  # the reference swap is undone
    changed = [name for name, p in policy.named_parameters() if not torch.equal(p, unet_before[name])]
    assert len(changed) >= 0.9 * len(unet_before)
    assert all(torch.equal(p, ref_before[n]) for n, p in reference.named_parameters())
    assert not any(p.requires_grad for p in reference.parameters())
    assert all(torch.equal(p, vae[n]) for n, p in _snapshot(backbone.vae).items())

    trainer.save_checkpoint(str(tmp_path / "full"))
    assert os.path.isfile(tmp_path / "full" / "unet" / "diffusion_pytorch_model.safetensors")
    resumed = _trainer(eps_dir, full_finetune=True, learning_rate=1e-4, max_steps=2)
    resumed.resume(str(tmp_path / "full"))
    assert all(torch.equal(resumed.named_params[n], p) for n, p in trainer.named_params.items())


# ----------------------------------------------------------------------------- checkpoints


def test_resume_reproduces_the_uninterrupted_run(eps_dir, tmp_path):
    config = {"max_steps": 5, "lr_scheduler": "cosine", "lr_warmup_steps": 2}  # 6 pairs / 2: epoch 2 from step 4
    uninterrupted = _trainer(eps_dir, **config)
    expected = [uninterrupted.train_step() for _ in range(5)]

    first = _trainer(eps_dir, **config)
    for _ in range(3):
        first.train_step()
    checkpoint = tmp_path / "checkpoint-3"
    first.save_checkpoint(str(checkpoint))
    for name in ("pytorch_lora_weights.safetensors", TRAINABLE_FILE, STATE_FILE, INFO_FILE, "rng_state_0.pkl"):
        assert (checkpoint / name).is_file(), name

    resumed = _trainer(eps_dir, **config)
    resumed.resume(str(checkpoint))
    assert (resumed.step, resumed.micro_step) == (3, 3)
    for step in (3, 4):
        metrics = resumed.train_step()
        _close(metrics, expected[step], keys=(*LOSS_KEYS, "lr", "grad_norm"), rel=0, abs_=1e-6)
        assert metrics["loss"] == expected[step]["loss"]  # in fact bit-exact on the CPU
    assert all(torch.equal(resumed.named_params[n], p) for n, p in uninterrupted.named_params.items())

    # the LoRA file is the diffusers-format adapter: a fresh backbone loads it as is
    fresh = TinySDBackbone(TinySDConfig(path=eps_dir))
    fresh.load_lora(str(checkpoint))
    assert fresh.adapter_digest() == first.backbone.adapter_digest()

    with pytest.raises(ValueError, match="data order"):
        _trainer(eps_dir, **{**config, "batch_size": 3}).resume(str(checkpoint))


# ----------------------------------------------------------------------------- pairs of several sizes

# Real-world pairs come in many sizes: 5 square, 2 landscape, 1 portrait (latent 8x8, 6x8, 8x6).
MIXED = _pairs(5) + _pairs(2, seed=3, size=(48, 64), prefix="wide") + _pairs(1, seed=4, size=(64, 48), prefix="tall")


def _size_of(pairs, step):
    return {pairs[i].winner.shape[:2] for i in step}


def test_order_buckets_by_size_and_leaves_no_pair_out():
    sizes = [pair.winner.shape[:2] for pair in MIXED]
    order = ShardedPairOrder(sizes, batch_size=2, num_processes=1, process_index=0, seed=5, shuffle=True)
    assert [(b.height, b.width, b.pairs, b.steps_per_epoch, b.repeated_per_epoch) for b in order.buckets] == [
        (64, 64, 5, 3, 1), (48, 64, 2, 1, 0), (64, 48, 1, 1, 1)]
    assert order.batches_per_epoch == 5
    for epoch in range(3):
        steps = order.steps(epoch)
        assert len(steps) == 5 and all(len(step) == 2 and len(_size_of(MIXED, step)) == 1 for step in steps)
        trained = [index for step in steps for index in step]
        assert set(trained) == set(range(len(MIXED)))  # nothing dropped
        assert len(trained) - len(MIXED) == 2  # the square bucket's short last step and the lone portrait
        assert [step for step in steps if _size_of(MIXED, step) == {(64, 48)}] == [[7, 7]]
    assert order.steps(0) != order.steps(1)  # reshuffled per epoch...
    again = ShardedPairOrder(sizes, batch_size=2, num_processes=1, process_index=0, seed=5, shuffle=True)
    assert [again.indices(j) for j in range(15)] == [order.indices(j) for j in range(15)]  # ...deterministically

    # Two processes take the two halves of the pairs one process accumulates in two micro-batches.
    ranks = [ShardedPairOrder(sizes, 1, 2, rank, seed=5, shuffle=True) for rank in (0, 1)]
    single = ShardedPairOrder(sizes, 1, 1, 0, seed=5, shuffle=True, accumulation=2)
    for micro_step in range(10):
        assert ranks[0].indices(micro_step) + ranks[1].indices(micro_step) == (
            single.indices(2 * micro_step) + single.indices(2 * micro_step + 1))

    # One size whose pairs fill whole steps: the plain sharded order of a permutation.
    plain = ShardedPairOrder([(64, 64)] * 6, 2, 1, 0, seed=5, shuffle=True)
    permutation = plain.permutation(1).tolist()
    assert [plain.indices(3 + j) for j in range(3)] == [permutation[0:2], permutation[2:4], permutation[4:6]]


def test_pairs_of_several_sizes_train_in_one_size_batches_and_resume_exactly(eps_dir, tmp_path):
    held_out = _pairs(2, seed=8) + _pairs(1, seed=9, size=(48, 64), prefix="held-wide")
    config = {"max_steps": 5, "eval_every": 5}
    trainer = _trainer(eps_dir, MIXED, eval_pairs=held_out, **config)
    lora = {name: param.detach().clone() for name, param in trainer.named_params.items()}
    assert trainer.size_buckets() == {
        "train": [{"height": 64, "width": 64, "pairs": 5, "steps_per_epoch": 3, "repeated_per_epoch": 1},
                  {"height": 48, "width": 64, "pairs": 2, "steps_per_epoch": 1, "repeated_per_epoch": 0},
                  {"height": 64, "width": 48, "pairs": 1, "steps_per_epoch": 1, "repeated_per_epoch": 1}],
        "eval": [{"height": 48, "width": 64, "pairs": 1}, {"height": 64, "width": 64, "pairs": 2}]}
    expected, seen = [], []
    for _ in range(5):  # one epoch
        expected.append(trainer.train_step())
        step = trainer.last_pairs["index"].tolist()
        assert len(step) == 2 and len(_size_of(MIXED, step)) == 1  # every batch is one size
        seen += step
    assert set(seen) == set(range(len(MIXED)))  # none dropped
    assert len({size for step in (seen[i:i + 2] for i in range(0, 10, 2)) for size in _size_of(MIXED, step)}) == 3
    assert all(not torch.equal(trainer.named_params[name], before) for name, before in lora.items())
    evaluation = trainer.evaluate()  # held-out pairs of two sizes
    assert all(math.isfinite(value) for value in evaluation.values()) and trainer.evaluate() == evaluation

    first = _trainer(eps_dir, MIXED, **config)
    for _ in range(2):
        first.train_step()
    first.save_checkpoint(str(tmp_path / "mixed"))
    resumed = _trainer(eps_dir, MIXED, **config)
    resumed.resume(str(tmp_path / "mixed"))
    for step in range(2, 5):
        assert resumed.train_step()["loss"] == expected[step]["loss"]  # bit-exact on the CPU
    assert all(torch.equal(resumed.named_params[n], p) for n, p in trainer.named_params.items())


def test_sizes_the_vae_cannot_encode_are_refused_before_training(eps_dir):
    odd = _pairs(2, seed=5, size=(60, 64), prefix="odd")
    with pytest.raises(ValueError, match=r"not a multiple of the VAE factor 8: 60x64 \(pairs 'odd0', 'odd1'\)"):
        _trainer(eps_dir, PAIRS + odd)


# ----------------------------------------------------------------------------- switches


def test_latent_cache_is_a_pure_optimisation(eps_dir):
    cached, direct = _trainer(eps_dir, cache_latents=True), _trainer(eps_dir, cache_latents=False)
    assert len(cached.train_cache) == len(PAIRS) and direct.train_cache is None
    first_cached, first_direct = cached.train_step(), direct.train_step()
    assert first_cached["loss"] == first_direct["loss"] == pytest.approx(LN2, abs=1e-6)
    _close(first_cached, first_direct, rel=1e-6, abs_=1e-7)
    for _ in range(2):
        # The VAE's float32 rounding depends on the batch size it runs at (6 vs 2 pairs here, ~1e-7);
        # z = beta/2 x a difference of float32 errors ~1 resolves only ~beta * 1e-7 = 5e-4.
        later_cached, later_direct = cached.train_step(), direct.train_step()
        _close(later_cached, later_direct, keys=("d_w_policy", "d_w_ref", "d_l_policy", "d_l_ref"), rel=1e-5)
        _close(later_cached, later_direct, keys=("loss", "margin"), rel=0, abs_=5e-3)


def test_image_level_switch_gives_masks_and_weights_of_ones(eps_dir):
    items = list(enumerate(PAIRS[:2]))
    image_level = PairCollator(8, instance_masks=False)(items)
    assert torch.equal(image_level.masks, torch.ones(2, 8, 8)) and torch.equal(image_level.weights, torch.ones(2))
    instance = PairCollator(8, instance_masks=True)(items)
    pixel = torch.from_numpy(np.stack([p.mask for p in PAIRS[:2]]).astype(np.float32))
    assert torch.equal(instance.masks, pool_mask(pixel, (8, 8)))
    assert instance.weights.tolist() == pytest.approx([p.weight for p in PAIRS[:2]])
    assert 0 < instance.masks.mean() < 1  # fractional boundary cells included

    trainer = _trainer(eps_dir, instance_masks=False)
    assert trainer.collator.instance_masks is False
    image_metrics = trainer.train_step()
    instance_metrics = _trainer(eps_dir, instance_masks=True).train_step()
    assert image_metrics["d_w_ref"] != pytest.approx(instance_metrics["d_w_ref"], rel=1e-4)


def test_text_modes(eps_dir):
    def two_steps(pairs=PAIRS, **config):
        trainer = _trainer(eps_dir, pairs, **config)
        return [trainer.train_step() for _ in range(2)]

    prompt = two_steps(text_mode="prompt")
    negative = two_steps(text_mode="prompt+negative")  # default guidance 2
    assert abs(negative[0]["loss"] - LN2) < 1e-6  # policy and reference share the guidance
    assert negative[0]["d_w_policy"] != pytest.approx(prompt[0]["d_w_policy"], rel=1e-4)
    assert negative[1]["loss"] != pytest.approx(prompt[1]["loss"], rel=1e-4)
    # g = 1 switches the negative branch off: neg + 1 * (cond - neg) = cond
    _close(two_steps(text_mode="prompt+negative", train_guidance_scale=1.0)[1], prompt[1], rel=1e-4, abs_=1e-5)

    none = two_steps(text_mode="none")
    empty = [dataclasses.replace(pair, positive_text="") for pair in PAIRS]
    _close(none[1], two_steps(empty, text_mode="prompt")[1], rel=1e-6, abs_=1e-7)  # "none" = empty prompts
    assert none[0]["d_w_policy"] != pytest.approx(prompt[0]["d_w_policy"], rel=1e-4)


def test_v_prediction_backbone(eps_dir, v_dir):
    trainer = _trainer(v_dir, max_steps=2)
    assert trainer.backbone.prediction_type == "v_prediction"
    lora = {name: param.detach().clone() for name, param in trainer.named_params.items()}
    first, second = trainer.train_step(), trainer.train_step()
    assert abs(first["loss"] - LN2) < 1e-6 and math.isfinite(second["loss"]) and second["margin"] != 0
    assert any(not torch.equal(trainer.named_params[n], p) for n, p in lora.items())
    # same weights and noise as the epsilon model (same build seed): only the target differs
    assert first["d_w_ref"] != pytest.approx(_trainer(eps_dir).train_step()["d_w_ref"], rel=1e-3)


def test_one_step_regression_objective_follows_its_formula(eps_dir):
    trainer = _trainer(eps_dir, one_step_objective="regression", text_mode="prompt")
    first = trainer.train_step()
    assert abs(first["loss"] - LN2) < 1e-6
    backbone, indices = trainer.backbone, trainer.last_pairs["index"].tolist()
    pairs = [PAIRS[i] for i in indices]
    latents = trainer.train_cache.get(indices)
    with torch.no_grad(), backbone.reference():
        t = torch.full((len(pairs),), backbone.config.timestep)
        text = backbone.encode_text([p.positive_text for p in pairs])
        x0 = backbone.predict_x0(latents.lq, backbone.predict(latents.lq, t, text, latents.lq), t)
    masks = PairCollator(8)(list(zip(indices, pairs))).masks
    for key, z in (("d_w_ref", latents.winner), ("d_l_ref", latents.loser)):
        err = (x0 - z).pow(2).mean(dim=1)  # (B, h, w) ||x0(theta) - z_k||^2 per latent pixel
        expected = (err * masks).sum(dim=(1, 2)) / masks.sum(dim=(1, 2))
        torch.testing.assert_close(trainer.last_pairs[key], expected, rtol=1e-5, atol=1e-6)
    assert trainer.train_step()["margin"] != 0


def test_gradient_accumulation_matches_the_larger_batch(eps_dir):
    pairs = _pairs(4, seed=1, equal_weights=True)  # equal weights: the mean of two means is the mean
    accumulated = _trainer(eps_dir, pairs, batch_size=1, gradient_accumulation_steps=2, max_grad_norm=None)
    batched = _trainer(eps_dir, pairs, batch_size=2, max_grad_norm=None)

    def relative_gap():
        first, second = (torch.cat([p.grad.flatten() for p in t.params]) for t in (accumulated, batched))
        return ((first - second).norm() / second.norm()).item()

    _close(accumulated.train_step(), batched.train_step(), rel=1e-5, abs_=1e-6)  # same pairs, noise and t
    assert relative_gap() < 1e-4  # step 1: only the LoRA up-projections have gradients
    with torch.no_grad():  # step 2 from identical weights (beta amplifies float32 rounding otherwise)
        for name, param in batched.named_params.items():
            accumulated.named_params[name].copy_(param)
    accumulated.compute_gradients(), batched.compute_gradients()
    assert all(p.grad.abs().sum() > 0 for p in batched.params) and relative_gap() < 1e-4


def test_pair_terms_match_the_loss_metrics(eps_dir):
    trainer = _trainer(eps_dir)
    trainer.train_step()
    batch = PairCollator(8, with_images=False)(list(enumerate(PAIRS[:3])))
    output = trainer.forward(batch, stream=1, epoch=0)
    for key in ("d_w_policy", "d_w_ref", "d_l_policy", "d_l_ref"):
        assert output.pair_terms[key].mean().item() == pytest.approx(output.metrics[key].item(), rel=1e-6)
    assert torch.equal(output.pair_terms["z"], output.metrics["per_pair_z"])


def test_evaluation_on_held_out_pairs_and_train_checkpoints(eps_dir, tmp_path):
    logs = []
    held_out = _pairs(3, seed=7)
    trainer = _trainer(
        eps_dir, eval_pairs=held_out, eval_every=2, max_steps=2, on_log=lambda s, m: logs.append((s, m)),
        output_dir=str(tmp_path), save_every=1,
    )
    before = trainer.evaluate()
    assert tuple(before) == EVAL_KEYS and abs(before["eval_loss"] - LN2) < 1e-6
    trainer.train()
    assert [(step, tuple(m)) for step, m in logs] == [(1, TRAIN_KEYS), (2, TRAIN_KEYS), (2, EVAL_KEYS)]
    assert trainer.evaluate() == logs[-1][1]  # fixed noise and t: repeatable
    assert logs[-1][1]["eval_margin"] != 0
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-1", "checkpoint-2"]


# ----------------------------------------------------------------------------- records and config


def test_pair_example_validation():
    good = PAIRS[0]
    with pytest.raises(ValueError, match="uint8"):
        dataclasses.replace(good, winner=good.winner.astype(np.float32))
    with pytest.raises(ValueError, match="x4"):
        dataclasses.replace(good, lq=good.lq[:8])
    with pytest.raises(ValueError, match="empty"):
        dataclasses.replace(good, mask=np.zeros((SIZE, SIZE), bool))
    with pytest.raises(ValueError, match="bool or float"):
        dataclasses.replace(good, mask=good.mask.astype(np.uint8))
    with pytest.raises(ValueError, match="weight"):
        dataclasses.replace(good, weight=-1.0)
    soft = dataclasses.replace(good, mask=good.mask * np.float32(0.5))  # float masks in [0, 1] are fine
    assert soft.mask.dtype == np.float32
    with pytest.raises(ValueError, match="share their image size"):
        small = _pairs(1)[0]
        small = dataclasses.replace(
            small, lq=small.lq[:8, :8], winner=small.winner[:32, :32], loser=small.loser[:32, :32], mask=small.mask[:32, :32]
        )
        PairCollator(8)([(0, good), (1, small)])


def test_config_is_typed_and_checked():
    with pytest.raises(ValidationError):
        TrainConfig(lr_warmup_steps=10)  # warm-up needs a schedule that has one
    with pytest.raises(ValidationError):
        TrainConfig(text_mode="negative")
    with pytest.raises(ValidationError):
        TrainConfig(learning_rate=1e-5, lr=1e-4)  # unknown fields are refused
    with pytest.raises(ValidationError):
        TrainConfig(train_guidance_scale=0.5)
    assert all(field.description for field in TrainConfig.model_fields.values())
    assert set(get_args(TrainConfig.model_fields["loss_type"].annotation)) == set(LOSS_TYPES)
    light = "import sys; from dspo_core.train import TrainConfig; TrainConfig(); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", light], check=True, timeout=60)  # the pipeline parses configs without torch


def test_train_package_imports_no_pipeline_layer():
    forbidden = {"prefect", "storage", "pipeline", "flows"}
    for path in TRAIN_PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            assert not {name.split(".")[0] for name in names} & forbidden, path.name
        assert len(path.read_text().splitlines()) < 400, path.name
