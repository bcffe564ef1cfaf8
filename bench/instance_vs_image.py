"""Controlled experiment: instance-level DSPO vs image-level Diffusion-DPO on a planted artifact.

The paper's core claim (DSPO.md, "The problem"): an output that wins *overall* can still
contain a local artifact where the loser was better, so image-level DPO learns the artifact
too, while per-instance preferences do not. This script shows it on the CPU with the tiny
random-init SD backbone (``TinySDBackbone``).

Construction (64 x 64 HR, the tiny VAE's x8 gives an 8 x 8 latent grid)
    base      HR-like image: a random crop of a skimage photo (random scale, flips) resized
              to 64 px, blended with a random smooth colour gradient. Train and held-out
              images come from *disjoint* source photos.
    A, B      instance A = the top-left 32 x 32 quadrant (4 x 4 latent cells, 25 % of the
              image), instance B = the rest (75 %). Both align with the latent cells.
    winner    the clean base everywhere, except a planted artifact in A: diagonal stripes of
              period --period px (default 8), amplitude --artifact (80), optional pixel noise.
    loser     the base blurred (Gaussian, sigma --blur) everywhere except A, where it is clean.
    LQ        the clean base, bicubic-downscaled x4 (16 x 16).

    Image level, the winner is better on 75 % of the pixels: one pair (winner > loser).
    Instance level: on A the loser is preferred (pair with winner/loser swapped, mask A,
    weight 0.25); on B the winner is preferred (mask B, weight 0.75).

    Period 8, not 4: the random VAE encodes 4-px stripes less consistently (the latent
    difference clean - artifact on A has a mean cosine of 0.28 between held-out images at
    4 px, 0.57 at 8 px), so there is less of a common direction for either method to learn.

Training
    Both methods start from the same tiny model (build seed 0) and the same LoRA
    initialisation (``TrainConfig.seed``) and run the same number of optimizer steps on the
    same images per step, with the same lr, beta and objective; text_mode "none" (the
    experiment is about the masks). Image-level DPO: ``instance_masks=False``, one pair per
    image, --batch-size pairs per step. DSPO: ``instance_masks=True``, two instance pairs per
    image, 2 x --batch-size pairs per step (the same images, and with sum_m w_m = 1 per image
    the same per-pixel gradient scale). LoRA on attention and convolutions (``TARGETS``).

Measurement (held-out pairs, new images from other photos), ``TESTS``
    z of a (better, worse) pair on one instance's mask, computed by ``dspo_step`` (->
    ``dspo_loss``) with the trained policy vs the reference (adapters disabled), averaged over
    --draws fixed (noise, t) draws (seeded per pair and draw, identical for both methods).
    accuracy = share of held-out pairs with z > 0 (the model prefers the better side on that
    instance); margin = mean z. At initialisation (policy == reference) z = 0.
      A, B            the pairs as the pipeline builds them: the full winner and loser images,
                      that instance's winner first (A: artifact-free > artifact; B: sharp > blurred).
      A only, B only  the clean image vs a copy degraded in that instance only (artifact in A;
                      blur outside A): nothing outside the instance differs.
    Why both: the tiny random VAE is not local. Its convolutions reach a couple of latent cells
    past A and its GroupNorm layers normalise over the whole image, so the artifact in A also
    moves B's latents (mean square 0.0013 per cell), more than B's blur does (0.0007), and
    against it (cosine -0.47). In "B" that shift is part of the pair, as it is in
    training; "B only" removes it and shows how much of the blur preference itself generalised.

How to run
    .venv/bin/python bench/instance_vs_image.py [--seeds 0,1,2,3,4] [--threads 1]
        [--objective renoise|regression] [--steps 60] [--lr 1e-3] [--beta 500] [--train 96]
    Defaults are what showed the effect: the regression objective (the re-noised surrogate
    learned nothing measurable in 100 steps on the random-init model). --draws matters only
    for renoise (regression with noise strength 0 is deterministic).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dspo_core.loss import pool_mask
from dspo_core.sr import TinySDBackbone, TinySDConfig, build_tiny_sd
from dspo_core.sr.diffusion import LoraSettings, images_to_tensor
from dspo_core.train import DSPOTrainer, PairExample, TrainConfig
from dspo_core.train.data import pair_noise, pair_seed
from dspo_core.train.latents import encode_pairs
from dspo_core.train.step import dspo_step, encode_conditioning

SIZE = 64
QUADRANT = 32  # side of instance A (top-left)
TRAIN_SOURCES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "brick", "grass")
HELDOUT_SOURCES = ("camera", "moon", "gravel", "hubble_deep_field", "colorwheel", "clock", "coins", "retina")
EVAL_STREAM = 7  # pair_seed stream of the held-out (noise, t) draws; distinct from the trainer's


# ----------------------------------------------------------------------------- data


def _source(name: str) -> np.ndarray:
    import skimage.data

    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3]).astype(np.uint8)


def make_bases(count: int, sources: tuple[str, ...], seed: int) -> list[np.ndarray]:
    """`count` HR-like 64 px images: random photo crops blended with smooth colour gradients."""
    rng = np.random.default_rng(seed)
    photos = [_source(name) for name in sources]
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / (SIZE - 1)
    bases = []
    for index in range(count):
        photo = photos[index % len(photos)]
        height, width = photo.shape[:2]
        side = int(rng.integers(96, min(height, width, 320) + 1))
        top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        crop = Image.fromarray(photo[top : top + side, left : left + side]).resize((SIZE, SIZE), Image.BICUBIC)
        crop = np.asarray(crop, np.float32)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        angle = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(angle) * xx + np.sin(angle) * yy  # (H, W) in [-1.4, 1.4]
        colours = rng.uniform(0, 255, (2, 3)).astype(np.float32)
        gradient = colours[0] + (ramp[..., None] - ramp.min()) / (np.ptp(ramp) + 1e-6) * (colours[1] - colours[0])
        bases.append(np.clip(0.7 * crop + 0.3 * gradient, 0, 255).astype(np.uint8))
    return bases


def _artifact(rng: np.random.Generator, amplitude: float, noise_sigma: float, period: int) -> np.ndarray:
    """(S, S, 3) float: diagonal stripes of `period` px (fixed phase) plus Gaussian pixel noise."""
    yy, xx = np.mgrid[0:QUADRANT, 0:QUADRANT].astype(np.float32)
    stripes = amplitude * np.sign(np.sin(2 * np.pi * (xx + yy) / period + np.pi / 4))
    noise = rng.normal(0, noise_sigma, (QUADRANT, QUADRANT, 3)) if noise_sigma > 0 else 0.0
    return np.broadcast_to(stripes[..., None] + noise, (QUADRANT, QUADRANT, 3))


@dataclass
class Item:
    """One image of the experiment: LQ, the clean image, the image-level winner/loser and the two instance masks."""

    lq: np.ndarray  # (16, 16, 3) uint8
    clean: np.ndarray  # (64, 64, 3) uint8: sharp everywhere, no artifact
    winner: np.ndarray  # (64, 64, 3) uint8: sharp, artifact in A
    loser: np.ndarray  # (64, 64, 3) uint8: blurred, clean in A
    mask_a: np.ndarray  # (64, 64) bool
    mask_b: np.ndarray  # (64, 64) bool


def make_items(
    count: int,
    sources: tuple[str, ...],
    seed: int,
    artifact: float = 80.0,
    period: int = 8,
    blur: float = 1.5,
    noise: float = 0.0,
) -> list[Item]:
    rng = np.random.default_rng(seed + 1_000_003)
    mask_a = np.zeros((SIZE, SIZE), bool)
    mask_a[:QUADRANT, :QUADRANT] = True
    items = []
    for base in make_bases(count, sources, seed):
        clean = base.astype(np.float32)
        winner = clean.copy()
        winner[:QUADRANT, :QUADRANT] += _artifact(rng, artifact, noise, period)
        loser = gaussian_filter(clean, sigma=(blur, blur, 0))
        loser[:QUADRANT, :QUADRANT] = clean[:QUADRANT, :QUADRANT]
        items.append(
            Item(
                lq=np.asarray(Image.fromarray(base).resize((SIZE // 4, SIZE // 4), Image.BICUBIC)),
                clean=base,
                winner=np.clip(winner, 0, 255).round().astype(np.uint8),
                loser=np.clip(loser, 0, 255).round().astype(np.uint8),
                mask_a=mask_a,
                mask_b=~mask_a,
            )
        )
    return items


def image_pairs(items: list[Item]) -> list[PairExample]:
    """Image-level labels: winner > loser, one pair per image (the mask is ignored under instance_masks=False)."""
    ones = np.ones((SIZE, SIZE), bool)
    return [PairExample(lq=it.lq, winner=it.winner, loser=it.loser, mask=ones, pair_id=f"img{i}") for i, it in enumerate(items)]


def instance_pairs(items: list[Item]) -> list[PairExample]:
    """Instance-level labels: on A the (artifact-free) loser wins, on B the (sharp) winner wins."""
    pairs = []
    for i, it in enumerate(items):
        w_a = float(it.mask_a.mean())
        pairs.append(PairExample(lq=it.lq, winner=it.loser, loser=it.winner, mask=it.mask_a, weight=w_a, pair_id=f"A{i}"))
        pairs.append(PairExample(lq=it.lq, winner=it.winner, loser=it.loser, mask=it.mask_b, weight=1 - w_a, pair_id=f"B{i}"))
    return pairs


# ----------------------------------------------------------------------------- train and measure

#: LoRA targets: attention (SD's usual choice) plus the ResNet convolutions and the transformer
#: projections, so the adapter can change the UNet's local (convolutional) output. Attention
#: only, seeds 0-2: the same direction, weaker (A accuracy image-DPO 0.06 vs DSPO 0.79, margins
#: -12.5 / +3.7; with these targets, same seeds: 0.02 vs 0.92, -46 / +22).
TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "proj_in", "proj_out")

#: Held-out measurements, per instance: (better side, worse side, mask) of each new image.
#: "A" and "B" are the pairs as the pipeline builds them (the two full images, the instance's
#: winner first); "A only" / "B only" compare the clean image with a copy degraded in that
#: instance alone, so nothing outside the instance differs (see "Measurement").
TESTS = {
    "A": lambda it: (it.loser, it.winner, it.mask_a),
    "B": lambda it: (it.winner, it.loser, it.mask_b),
    "A only": lambda it: (it.clean, it.winner, it.mask_a),
    "B only": lambda it: (it.clean, it.loser, it.mask_b),
}


def train(
    model_dir: str, method: str, items: list[Item], config: TrainConfig, rank: int, targets: tuple[str, ...]
) -> DSPOTrainer:
    """Train the tiny backbone with ``method`` "image" (Diffusion-DPO) or "dspo"; returns the trainer.

    DSPO has two instance pairs per image, so its micro-batch holds twice as many pairs: both
    methods then see the same number of images per step and, since sum_m w_m = 1 per image,
    on average the same per-pixel gradient scale (see ``dspo_core.loss``, "Batch reduction").
    """
    lora = LoraSettings(rank=rank, target_modules=targets)
    backbone = TinySDBackbone(TinySDConfig(path=model_dir, lora=lora))
    if method == "image":
        pairs, config = image_pairs(items), config.model_copy(update={"instance_masks": False})
    elif method == "dspo":
        update = {"instance_masks": True, "batch_size": 2 * config.batch_size}
        pairs, config = instance_pairs(items), config.model_copy(update=update)
    else:
        raise ValueError(method)
    trainer = DSPOTrainer(backbone, config, pairs)
    trainer.train()
    return trainer


@torch.no_grad()
def instance_preference(trainer: DSPOTrainer, items: list[Item], draws: int, batch: int = 16) -> dict[str, dict]:
    """Per test of ``TESTS``: mean-over-draws z of (better > worse) on the test's mask, per held-out image."""
    backbone, config = trainer.backbone, trainer.config
    factor = backbone.vae_scale_factor
    latent_hw = (SIZE // factor, SIZE // factor)
    result = {}
    for name, sides in TESTS.items():
        zs = []
        for start in range(0, len(items), batch):
            better, worse, mask = zip(*(sides(it) for it in items[start : start + batch]))
            lq = [it.lq for it in items[start : start + batch]]
            latents = encode_pairs(backbone, lq, images_to_tensor(better), images_to_tensor(worse))
            masks = pool_mask(torch.from_numpy(np.stack(mask).astype(np.float32)), latent_hw)
            weights = torch.ones(len(lq))
            text = encode_conditioning(backbone, [""] * len(lq), [""] * len(lq), config)
            per_draw = []
            for draw in range(draws):
                seeds = [pair_seed(0, EVAL_STREAM, draw, start + j) for j in range(len(lq))]
                noise, t = pair_noise(seeds, latents.winner.shape[1:], trainer.timestep_range)
                out = dspo_step(backbone, latents, text, masks, weights, noise, t, config, trainer.reference)
                per_draw.append(out.pair_terms["z"].double().cpu())
            zs.append(torch.stack(per_draw).mean(0))
        z = torch.cat(zs)
        result[name] = {"acc": float((z > 0).double().mean()), "margin": float(z.mean()), "z": z}
    return result


def run(
    seed: int = 0,
    steps: int = 60,
    lr: float = 1e-3,
    beta: float = 500.0,
    objective: str = "regression",
    rank: int = 8,
    targets: tuple[str, ...] = TARGETS,
    n_train: int = 96,
    n_eval: int = 32,
    batch_size: int = 8,
    draws: int = 1,
    min_timestep: int = 0,
    max_timestep: int | None = None,
    artifact: float = 80.0,
    period: int = 8,
    blur: float = 1.5,
    noise: float = 0.0,
    build_seed: int = 0,
    model_dir: str | None = None,
    verbose: bool = False,
) -> dict[str, dict[str, dict]]:
    """Train both methods with one seed; returns {method: {test: {acc, margin, z}}} (tests: ``TESTS``)."""
    train_items = make_items(n_train, TRAIN_SOURCES, seed, artifact, period, blur, noise)
    eval_items = make_items(n_eval, HELDOUT_SOURCES, 10_000 + seed, artifact, period, blur, noise)
    config = TrainConfig(
        seed=seed,
        max_steps=steps,
        batch_size=batch_size,
        learning_rate=lr,
        beta=beta,
        one_step_objective=objective,
        text_mode="none",
        min_timestep=min_timestep,
        max_timestep=max_timestep,
        weight_decay=0.0,
    )
    scratch = None
    if model_dir is None:
        scratch = tempfile.TemporaryDirectory(prefix="dspo-ivi-")
        model_dir = build_tiny_sd(scratch.name, seed=build_seed)
    results = {}
    try:
        for method in ("image", "dspo"):
            start = time.perf_counter()
            trainer = train(model_dir, method, train_items, config, rank, targets)
            results[method] = instance_preference(trainer, eval_items, draws)
            if verbose:
                last = trainer.history[-1][1]
                print(
                    f"  seed {seed} {method:5s}: {time.perf_counter() - start:5.1f} s, final train loss "
                    f"{last['loss']:.3f} acc {last['implicit_acc']:.2f} margin {last['margin']:+.2f}",
                    flush=True,
                )
    finally:
        if scratch is not None:
            scratch.cleanup()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated experiment seeds (data, LoRA init, order)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--beta", type=float, default=500.0)
    parser.add_argument("--objective", choices=("renoise", "regression"), default="regression")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--targets", default=",".join(TARGETS), help="LoRA target modules (comma-separated)")
    parser.add_argument("--train", type=int, default=96, help="training images")
    parser.add_argument("--eval", type=int, default=32, help="held-out images")
    parser.add_argument("--batch-size", type=int, default=8, help="images per step (DSPO: 2 instance pairs each)")
    parser.add_argument("--draws", type=int, default=1, help="(noise, t) draws per held-out pair")
    parser.add_argument("--min-timestep", type=int, default=0)
    parser.add_argument("--max-timestep", type=int, default=None)
    parser.add_argument("--artifact", type=float, default=80.0, help="stripe amplitude in A (0..255 scale)")
    parser.add_argument("--period", type=int, default=8, help="stripe period in A (px)")
    parser.add_argument("--blur", type=float, default=1.5, help="Gaussian sigma of the loser's blur outside A")
    parser.add_argument("--noise", type=float, default=0.0, help="sigma of Gaussian pixel noise added to the stripes")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    targets = tuple(args.targets.split(","))
    print(
        f"objective={args.objective} steps={args.steps} lr={args.lr} beta={args.beta} rank={args.rank} "
        f"targets={targets} train={args.train} images eval={args.eval} batch={args.batch_size} images "
        f"draws={args.draws} artifact={args.artifact} period={args.period} noise={args.noise} blur={args.blur} "
        f"threads={torch.get_num_threads()}",
        flush=True,
    )
    scratch = tempfile.TemporaryDirectory(prefix="dspo-ivi-")
    model_dir = build_tiny_sd(scratch.name, seed=0)
    rows: dict[int, dict[str, dict[str, dict]]] = {}
    start = time.perf_counter()
    for seed in seeds:
        rows[seed] = run(
            seed=seed, steps=args.steps, lr=args.lr, beta=args.beta, objective=args.objective, rank=args.rank,
            targets=targets, n_train=args.train, n_eval=args.eval, batch_size=args.batch_size, draws=args.draws,
            min_timestep=args.min_timestep, max_timestep=args.max_timestep, artifact=args.artifact,
            period=args.period, blur=args.blur, noise=args.noise, model_dir=model_dir, verbose=True,
        )
    scratch.cleanup()
    print("\nheld-out accuracy / margin per seed (image-DPO | DSPO)")
    print(f"{'seed':>4s}  " + "  ".join(f"{name:^27s}" for name in TESTS))
    for seed, res in rows.items():
        cells = [
            f"{res['image'][name]['acc']:.2f} {res['image'][name]['margin']:+6.1f} | "
            f"{res['dspo'][name]['acc']:.2f} {res['dspo'][name]['margin']:+6.1f}"
            for name in TESTS
        ]
        print(f"{seed:4d}  " + "  ".join(f"{cell:27s}" for cell in cells))
    print(f"\n{'test':8s} {'image-DPO acc':>15s} {'DSPO acc':>15s} {'image-DPO margin':>18s} {'DSPO margin':>15s}  DSPO better in")
    for name in TESTS:
        acc = {m: [rows[s][m][name]["acc"] for s in seeds] for m in ("image", "dspo")}
        margin = {m: [rows[s][m][name]["margin"] for s in seeds] for m in ("image", "dspo")}
        wins = sum(d > i for d, i in zip(acc["dspo"], acc["image"]))
        spread = lambda xs: statistics.pstdev(xs) if len(xs) > 1 else 0.0
        print(
            f"{name:8s} {statistics.mean(acc['image']):6.2f} +- {spread(acc['image']):.2f} "
            f"{statistics.mean(acc['dspo']):6.2f} +- {spread(acc['dspo']):.2f} "
            f"{statistics.mean(margin['image']):+9.1f} +- {spread(margin['image']):4.1f} "
            f"{statistics.mean(margin['dspo']):+7.1f} +- {spread(margin['dspo']):4.1f}  {wins}/{len(seeds)} seeds (acc)"
        )
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
