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
    winner    the clean base everywhere, except a planted high-frequency artifact in A
              (diagonal stripes of period 4 px, amplitude --artifact, plus pixel noise).
    loser     the base blurred (Gaussian, sigma --blur) everywhere except A, where it is clean.
    LQ        the clean base, bicubic-downscaled x4 (16 x 16).

    Image level, the winner is better on 75 % of the pixels: one pair (winner > loser).
    Instance level: on A the loser is preferred (pair with winner/loser swapped, mask A,
    weight 0.25); on B the winner is preferred (mask B, weight 0.75).

Training
    Both methods start from the same tiny model (``--build-seed``) and the same LoRA
    initialisation (``TrainConfig.seed``), and run the same number of optimizer steps with
    the same batch size, lr, beta and objective; text_mode "none" (the experiment is
    about the masks). Image-level DPO: ``instance_masks=False`` on the image pairs.
    DSPO: ``instance_masks=True`` on the instance pairs (two per image).

Measurement (held-out pairs, new images)
    For instance A: z of the pair (artifact-free image = winner, artifact image = loser)
    computed with the instance-A mask by ``dspo_step`` (-> ``dspo_loss``) with the trained
    policy vs the reference (adapters disabled); for instance B: z of (sharp = winner,
    blurred = loser) with the B mask. Each pair's z is averaged over --draws fixed
    (noise, t) draws (seeded per pair and draw, identical for both methods).
    accuracy = share of held-out pairs with mean z > 0 (the model prefers the better side
    of that instance); margin = mean z. At initialisation (policy == reference) z = 0.

How to run
    .venv/bin/python bench/instance_vs_image.py [--objective renoise|regression]
        [--steps 60] [--lr 1e-3] [--beta 500] [--rank 8] [--seeds 0,1,2]
    Defaults are what showed the effect: the regression objective (the re-noised surrogate
    learned nothing measurable in 100 steps on the random-init model). --draws matters only
    for renoise (regression with noise strength 0 is deterministic).
"""

from __future__ import annotations

import argparse
import os
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
from dspo_core.loss import pool_mask  # noqa: E402
from dspo_core.sr import TinySDBackbone, TinySDConfig, build_tiny_sd  # noqa: E402
from dspo_core.sr.diffusion import LoraSettings, images_to_tensor  # noqa: E402
from dspo_core.train import DSPOTrainer, PairExample, TrainConfig  # noqa: E402
from dspo_core.train.data import pair_noise, pair_seed  # noqa: E402
from dspo_core.train.latents import encode_pairs  # noqa: E402
from dspo_core.train.step import dspo_step, encode_conditioning  # noqa: E402

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


def _artifact(rng: np.random.Generator, amplitude: float, noise_sigma: float) -> np.ndarray:
    """(S, S, 3) float: diagonal stripes of period 4 px (fixed phase) plus Gaussian pixel noise."""
    yy, xx = np.mgrid[0:QUADRANT, 0:QUADRANT].astype(np.float32)
    stripes = amplitude * np.sign(np.sin(2 * np.pi * (xx + yy) / 4 + np.pi / 4))
    noise = rng.normal(0, noise_sigma, (QUADRANT, QUADRANT, 3)) if noise_sigma > 0 else 0.0
    return stripes[..., None] + noise


@dataclass
class Item:
    """One image of the experiment: LQ, the image-level winner/loser and the two instance masks."""

    lq: np.ndarray  # (16, 16, 3) uint8
    winner: np.ndarray  # (64, 64, 3) uint8: clean, artifact in A
    loser: np.ndarray  # (64, 64, 3) uint8: blurred, clean in A
    mask_a: np.ndarray  # (64, 64) bool
    mask_b: np.ndarray  # (64, 64) bool


def make_items(
    count: int, sources: tuple[str, ...], seed: int, artifact: float = 80.0, blur: float = 1.5, noise: float = 0.0
) -> list[Item]:
    rng = np.random.default_rng(seed + 1_000_003)
    mask_a = np.zeros((SIZE, SIZE), bool)
    mask_a[:QUADRANT, :QUADRANT] = True
    items = []
    for base in make_bases(count, sources, seed):
        clean = base.astype(np.float32)
        winner = clean.copy()
        winner[:QUADRANT, :QUADRANT] += _artifact(rng, artifact, noise)
        loser = gaussian_filter(clean, sigma=(blur, blur, 0))
        loser[:QUADRANT, :QUADRANT] = clean[:QUADRANT, :QUADRANT]
        lq = np.asarray(Image.fromarray(base).resize((SIZE // 4, SIZE // 4), Image.BICUBIC))
        items.append(
            Item(
                lq=lq,
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


def train(model_dir: str, method: str, items: list[Item], config: TrainConfig, rank: int, targets: tuple[str, ...]) -> DSPOTrainer:
    """Train the tiny backbone with ``method`` "image" (Diffusion-DPO) or "dspo"; returns the trainer."""
    lora = LoraSettings(rank=rank, target_modules=targets)
    backbone = TinySDBackbone(TinySDConfig(path=model_dir, lora=lora))
    if method == "image":
        pairs, config = image_pairs(items), config.model_copy(update={"instance_masks": False})
    elif method == "dspo":
        pairs, config = instance_pairs(items), config.model_copy(update={"instance_masks": True})
    else:
        raise ValueError(method)
    trainer = DSPOTrainer(backbone, config, pairs)
    trainer.train()
    return trainer


@torch.no_grad()
def instance_preference(trainer: DSPOTrainer, items: list[Item], draws: int, batch: int = 16) -> dict[str, dict]:
    """Per instance: mean-over-draws z of (better side > worse side) on that instance's mask, per held-out pair."""
    backbone, config = trainer.backbone, trainer.config
    factor = backbone.vae_scale_factor
    latent_hw = (SIZE // factor, SIZE // factor)
    result = {}
    for name in ("A", "B"):
        zs = []
        for start in range(0, len(items), batch):
            chunk = items[start : start + batch]
            if name == "A":  # artifact-free (the image-level loser) vs the artifact image
                better, worse, mask = [it.loser for it in chunk], [it.winner for it in chunk], [it.mask_a for it in chunk]
            else:  # sharp (the image-level winner) vs blurred
                better, worse, mask = [it.winner for it in chunk], [it.loser for it in chunk], [it.mask_b for it in chunk]
            latents = encode_pairs(backbone, [it.lq for it in chunk], images_to_tensor(better), images_to_tensor(worse))
            masks = pool_mask(torch.from_numpy(np.stack(mask).astype(np.float32)), latent_hw)
            weights = torch.ones(len(chunk))
            text = encode_conditioning(backbone, [""] * len(chunk), [""] * len(chunk), config)
            per_draw = []
            for draw in range(draws):
                seeds = [pair_seed(0, EVAL_STREAM, draw, start + j) for j in range(len(chunk))]
                noise, t = pair_noise(seeds, latents.winner.shape[1:], trainer.timestep_range)
                out = dspo_step(backbone, latents, text, masks, weights, noise, t, config, trainer.reference)
                per_draw.append(out.pair_terms["z"].double().cpu())
            zs.append(torch.stack(per_draw).mean(0))
        z = torch.cat(zs)
        result[name] = {"acc": float((z > 0).double().mean()), "margin": float(z.mean()), "z": z}
    return result


def run(
    seed: int = 0,
    steps: int = 150,
    lr: float = 1e-3,
    beta: float = 5000.0,
    objective: str = "renoise",
    rank: int = 8,
    targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0"),
    n_train: int = 48,
    n_eval: int = 32,
    batch_size: int = 8,
    draws: int = 4,
    min_timestep: int = 0,
    max_timestep: int | None = None,
    artifact: float = 80.0,
    blur: float = 1.5,
    noise: float = 0.0,
    build_seed: int = 0,
    model_dir: str | None = None,
    verbose: bool = False,
) -> dict[str, dict[str, dict]]:
    """Train both methods with one seed; returns {method: {instance: {acc, margin, z}}}."""
    train_items = make_items(n_train, TRAIN_SOURCES, seed, artifact, blur, noise)
    eval_items = make_items(n_eval, HELDOUT_SOURCES, 10_000 + seed, artifact, blur, noise)
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
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated experiment seeds (data, LoRA init, noise)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--beta", type=float, default=500.0)
    parser.add_argument("--objective", choices=("renoise", "regression"), default="regression")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--targets", default="to_q,to_k,to_v,to_out.0", help="LoRA target modules (comma-separated)")
    parser.add_argument("--train", type=int, default=32, help="training images")
    parser.add_argument("--eval", type=int, default=32, help="held-out images")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--draws", type=int, default=1, help="(noise, t) draws per held-out pair")
    parser.add_argument("--min-timestep", type=int, default=0)
    parser.add_argument("--max-timestep", type=int, default=None)
    parser.add_argument("--artifact", type=float, default=80.0, help="stripe amplitude in A (0..255 scale)")
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
        f"targets={targets} train={args.train} images eval={args.eval} draws={args.draws} "
        f"artifact={args.artifact} noise={args.noise} blur={args.blur} threads={torch.get_num_threads()}",
        flush=True,
    )
    scratch = tempfile.TemporaryDirectory(prefix="dspo-ivi-")
    model_dir = build_tiny_sd(scratch.name, seed=0)
    table: dict[tuple[str, str], list[tuple[float, float]]] = {}
    diffs = []
    start = time.perf_counter()
    for seed in seeds:
        res = run(
            seed=seed, steps=args.steps, lr=args.lr, beta=args.beta, objective=args.objective, rank=args.rank,
            targets=targets, n_train=args.train, n_eval=args.eval, batch_size=args.batch_size, draws=args.draws,
            min_timestep=args.min_timestep, max_timestep=args.max_timestep, artifact=args.artifact, blur=args.blur, noise=args.noise,
            model_dir=model_dir, verbose=True,
        )
        for method, per in res.items():
            for inst, values in per.items():
                table.setdefault((method, inst), []).append((values["acc"], values["margin"]))
        diff = res["dspo"]["A"]["acc"] - res["image"]["A"]["acc"]
        diffs.append(diff)
        print(
            f"seed {seed}: acc A image {res['image']['A']['acc']:.3f} dspo {res['dspo']['A']['acc']:.3f} (diff {diff:+.3f}); "
            f"acc B image {res['image']['B']['acc']:.3f} dspo {res['dspo']['B']['acc']:.3f}",
            flush=True,
        )
    scratch.cleanup()
    print(f"\n{'method':8s} {'instance':28s} {'accuracy':>18s} {'margin':>20s}")
    labels = {"A": "A (artifact; prefer clean)", "B": "B (blur; prefer sharp)"}
    for method in ("image", "dspo"):
        for inst in ("A", "B"):
            values = table[(method, inst)]
            accs, margins = [v[0] for v in values], [v[1] for v in values]
            spread = lambda xs: statistics.pstdev(xs) if len(xs) > 1 else 0.0  # noqa: E731
            print(
                f"{'image-DPO' if method == 'image' else 'DSPO':8s}  {labels[inst]:28s} "
                f"{statistics.mean(accs):8.3f} +- {spread(accs):.3f} {statistics.mean(margins):+10.3f} +- {spread(margins):.3f}"
            )
    print(
        f"\nDSPO - image-DPO accuracy on A over {len(diffs)} seeds: min {min(diffs):+.3f} "
        f"mean {statistics.mean(diffs):+.3f} max {max(diffs):+.3f}; total {time.perf_counter() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
