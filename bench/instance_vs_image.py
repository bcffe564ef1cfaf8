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
    same images per step, with the same lr, beta and objective; image-level DPO and the
    mask comparison use text_mode "none". Image-level DPO: ``instance_masks=False``, one pair per
    image, --batch-size pairs per step. DSPO: ``instance_masks=True``, two instance pairs per
    image, 2 x --batch-size pairs per step (the same images, and with sum_m w_m = 1 per image
    the same per-pixel gradient scale). LoRA on attention and convolutions (``TARGETS``).

Text feedback (``--text-modes``, default none,prompt,prompt+negative)
    DSPO once per ``TrainConfig.text_mode``, everything else equal (same LoRA init, order,
    noise): "none" (empty prompts), "prompt" (each pair's ``positive_text``: the image's
    caption, "a photo of <source photo>"), "prompt+negative" (also the ``negative_text`` as
    negative-prompt guidance, g = ``train_guidance_scale`` 2: on A the hallucination
    description ``ARTIFACT_TEXT``, on B ``BLUR_TEXT``). The tiny text encoder is random-init
    over the real CLIP tokenizer, so a text is a fixed but meaningless embedding: what can be
    learned is "this negative text goes with this kind of region", not its words.
    Measured twice: with the held-out pair's own texts under the run's text mode (what the
    trainer's eval_* metrics do) and with no text (as at inference, where no hallucination
    description exists). Read: does the feedback text change A's held-out accuracy or margin?

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
        [--text-modes none,prompt,prompt+negative]
    Defaults are what showed the effect: the regression objective (the re-noised surrogate
    learned nothing measurable in 100 steps on the random-init model). --draws matters only
    for renoise (regression with noise strength 0 is deterministic).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from instance_vs_image_data import (
    ARTIFACT_TEXT,
    BLUR_TEXT,
    HELDOUT_SOURCES,
    SIZE,
    TEXT_MODES,
    TRAIN_SOURCES,
    Item,
    image_pairs,
    instance_pairs,
    make_items,
)
from instance_vs_image_report import print_masks_report, print_text_report

from dspo_core.loss import pool_mask
from dspo_core.sr import TinySDBackbone, TinySDConfig, build_tiny_sd
from dspo_core.sr.diffusion import LoraSettings, images_to_tensor
from dspo_core.train import DSPOTrainer, TrainConfig
from dspo_core.train.data import pair_noise, pair_seed
from dspo_core.train.latents import encode_pairs
from dspo_core.train.step import dspo_step, encode_conditioning

EVAL_STREAM = 7  # pair_seed stream of the held-out (noise, t) draws; distinct from the trainer's


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
#: The negative text of each test's pairs (the worse side's flaw), as in training.
TEST_NEGATIVES = {"A": ARTIFACT_TEXT, "B": BLUR_TEXT, "A only": ARTIFACT_TEXT, "B only": BLUR_TEXT}


def train(
    model_dir: str, method: str, items: list[Item], config: TrainConfig, rank: int, targets: tuple[str, ...],
    text_mode: str = "none",
) -> DSPOTrainer:
    """Train the tiny backbone with ``method`` "image" (Diffusion-DPO, no text) or "dspo" (with
    ``text_mode``); returns the trainer.

    DSPO has two instance pairs per image, so its micro-batch holds twice as many pairs: both
    methods then see the same number of images per step and, since sum_m w_m = 1 per image,
    on average the same per-pixel gradient scale (see ``dspo_core.loss``, "Batch reduction").
    """
    lora = LoraSettings(rank=rank, target_modules=targets)
    backbone = TinySDBackbone(TinySDConfig(path=model_dir, lora=lora))
    if method == "image":
        pairs, config = image_pairs(items), config.model_copy(update={"instance_masks": False})
    elif method == "dspo":
        update = {"instance_masks": True, "batch_size": 2 * config.batch_size, "text_mode": text_mode}
        pairs, config = instance_pairs(items), config.model_copy(update=update)
    else:
        raise ValueError(method)
    trainer = DSPOTrainer(backbone, config, pairs)
    trainer.train()
    return trainer


@torch.no_grad()
def instance_preference(
    trainer: DSPOTrainer, items: list[Item], draws: int, batch: int = 16, with_text: bool = True
) -> dict[str, dict]:
    """Per test of ``TESTS``: mean-over-draws z of (better > worse) on the test's mask, per held-out image.
    ``with_text``: the pairs' texts under the run's text mode (caption, ``TEST_NEGATIVES``); else none."""
    backbone, config = trainer.backbone, trainer.config
    if not with_text:
        config = config.model_copy(update={"text_mode": "none"})
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
            captions = [it.caption for it in items[start : start + batch]]
            text = encode_conditioning(backbone, captions, [TEST_NEGATIVES[name]] * len(lq), config)
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
    text_modes: tuple[str, ...] = ("none",),
) -> dict[str, dict[str, dict]]:
    """Train the methods with one seed; returns {method: {test: {acc, margin, z}}} (tests: ``TESTS``).

    Methods: "image" (image-level DPO), "dspo" (text_mode none), and for each other mode of
    ``text_modes`` "dspo:<mode>" (measured with the pairs' texts) and "dspo:<mode>, no text"
    (the same run measured without text)."""
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
    unknown = set(text_modes) - set(TEXT_MODES)
    if unknown:
        raise ValueError(f"unknown text modes {sorted(unknown)}; modes: {', '.join(TEXT_MODES)}")
    runs = [("image", "image", "none"), ("dspo", "dspo", "none")]
    runs += [(f"dspo:{mode}", "dspo", mode) for mode in text_modes if mode != "none"]
    results = {}
    try:
        for name, method, text_mode in runs:
            start = time.perf_counter()
            trainer = train(model_dir, method, train_items, config, rank, targets, text_mode)
            results[name] = instance_preference(trainer, eval_items, draws)
            if text_mode != "none":
                results[f"{name}, no text"] = instance_preference(trainer, eval_items, draws, with_text=False)
            if verbose:
                last = trainer.history[-1][1]
                print(
                    f"  seed {seed} {name:20s}: {time.perf_counter() - start:5.1f} s, final train loss "
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
    parser.add_argument("--text-modes", default=",".join(TEXT_MODES),
                        help=f"DSPO text modes to compare (comma-separated, of {', '.join(TEXT_MODES)})")
    args = parser.parse_args()
    text_modes = tuple(args.text_modes.split(","))
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    targets = tuple(args.targets.split(","))
    print(
        f"objective={args.objective} steps={args.steps} lr={args.lr} beta={args.beta} rank={args.rank} "
        f"targets={targets} train={args.train} images eval={args.eval} batch={args.batch_size} images "
        f"draws={args.draws} artifact={args.artifact} period={args.period} noise={args.noise} blur={args.blur} "
        f"text_modes={text_modes} threads={torch.get_num_threads()}",
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
            text_modes=text_modes,
        )
    scratch.cleanup()
    print_masks_report(rows, seeds, tuple(TESTS))
    if any(mode != "none" for mode in text_modes):
        print_text_report(rows, seeds)
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
