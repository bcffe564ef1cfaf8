"""Training-step cost on the tiny backbone: pairs/s and peak RSS, as ratios, in one run.

What it measures (each configuration in its own child process, so ru_maxrss is its own peak)
    mask      DSPO (instance masks, weights) vs image-level Diffusion-DPO
              (``instance_masks=False``) on the same pairs: the masking overhead.
              Goal: time ratio <= 1.05x.
    ref       LoRA with the reference = adapters disabled (the default) vs LoRA with the
              reference = a frozen deep copy of the UNet (adapters disabled in the copy):
              the memory the adapter-disabled reference saves; plus ``full_finetune``
              (the project's frozen-copy mode: every UNet weight trains, AdamW state).
    cache     cached latents (``cache_latents=True``: VAE once per run) vs VAE-encoding every
              micro-batch (``cache_latents=False``): speed.

    Every child builds the same tiny model (``build_tiny_sd`` seed 0), makes the same pairs
    (64 px, random masks), runs --warmup optimizer steps, then times --steps steps
    (``trainer.train_step``); it prints pairs/s and ru_maxrss. The parent runs the
    configurations interleaved --repeat times (shared machines drift) and reports medians and
    the ratios. Also printed: the UNet and LoRA parameter bytes (what the memory ratios
    should reflect; on the tiny model they are small next to the ~0.5 GB of the Python/torch
    runtime, so the RSS ratios are near 1 and the byte counts are the informative figure).

How to run
    .venv/bin/python bench/train.py [--steps 20] [--warmup 3] [--batch-size 4] [--repeat 3]
        [--threads 1] [--text-mode none]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SIZE = 64
CONFIGS = {
    "dspo": {},
    "image": {"instance_masks": False},
    "ref_copy": {"_ref_copy": True},
    "full_ft": {"full_finetune": True},
    "no_cache": {"cache_latents": False},
}


def _pairs(count: int, seed: int = 0):
    import numpy as np

    from dspo_core.train import PairExample

    rng = np.random.default_rng(seed)
    pairs = []
    for index in range(count):
        lq = rng.integers(0, 256, (SIZE // 4, SIZE // 4, 3), dtype=np.uint8)
        base = np.kron(lq, np.ones((4, 4, 1), dtype=np.uint8)).astype(np.int16)
        winner = np.clip(base + rng.integers(-8, 9, base.shape), 0, 255).astype(np.uint8)
        loser = np.clip(base + rng.integers(-60, 61, base.shape), 0, 255).astype(np.uint8)
        mask = np.zeros((SIZE, SIZE), bool)
        top, left = rng.integers(0, SIZE // 2, 2)
        mask[top : top + 20 + index % 7, left : left + 27] = True
        pairs.append(
            PairExample(
                lq=lq, winner=winner, loser=loser, mask=mask, weight=float(rng.uniform(0.2, 1.0)),
                positive_text=f"a photo of object {index}", negative_text=f"garbled texture {index}",
                pair_id=f"p{index}",
            )
        )
    return pairs


def child(name: str, args: argparse.Namespace) -> dict:
    import torch

    from dspo_core.sr import TinySDBackbone, TinySDConfig, build_tiny_sd
    from dspo_core.train import DSPOTrainer, TrainConfig

    torch.set_num_threads(args.threads)
    options = dict(CONFIGS[name])
    ref_copy = options.pop("_ref_copy", False)
    config = TrainConfig(
        seed=0, max_steps=args.warmup + args.steps, batch_size=args.batch_size, learning_rate=1e-4,
        text_mode=args.text_mode, **options,
    )
    with tempfile.TemporaryDirectory(prefix="dspo-bench-train-") as scratch:
        backbone = TinySDBackbone(TinySDConfig(path=build_tiny_sd(scratch, seed=0)))
        trainer = DSPOTrainer(backbone, config, _pairs(args.pairs))
        if ref_copy:  # LoRA policy, reference = a frozen deep copy (adapters disabled in it)
            reference = copy.deepcopy(backbone.unet).requires_grad_(False).eval()
            reference.disable_adapters()
            trainer._ref_unet = reference
        for _ in range(args.warmup):
            trainer.train_step()
        start = time.perf_counter()
        for _ in range(args.steps):
            trainer.train_step()
        seconds = time.perf_counter() - start
        unet = backbone.unet
        return {
            "name": name,
            "pairs_per_s": args.steps * args.batch_size / seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "unet_mb": sum(p.numel() * p.element_size() for p in unet.parameters()) / 2**20,
            "trainable_mb": sum(p.numel() * p.element_size() for p in trainer.params) / 2**20,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per child")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved repeats of every configuration")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--text-mode", default="none", choices=("none", "prompt", "prompt+negative"))
    parser.add_argument("--configs", default=",".join(CONFIGS), help="subset of " + ",".join(CONFIGS))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args)), flush=True)
        return

    names = args.configs.split(",")
    results: dict[str, list[dict]] = {name: [] for name in names}
    passthrough = [
        "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size),
        "--pairs", str(args.pairs), "--threads", str(args.threads), "--text-mode", args.text_mode,
    ]
    print(
        f"tiny-sd, {SIZE}px pairs, batch {args.batch_size}, text_mode {args.text_mode}, {args.threads} thread(s), "
        f"{args.warmup} warm-up + {args.steps} timed steps, {args.repeat} interleaved repeats",
        flush=True,
    )
    for repeat in range(args.repeat):
        for name in names:
            out = subprocess.run(
                [sys.executable, __file__, "--child", name, *passthrough], capture_output=True, text=True, cwd=ROOT
            )
            line = [row for row in out.stdout.splitlines() if row.startswith("RESULT ")]
            if out.returncode or not line:
                raise SystemExit(f"child {name} failed:\n{out.stdout}\n{out.stderr}")
            record = json.loads(line[0][len("RESULT "):])
            results[name].append(record)
            print(f"  repeat {repeat} {name:9s} {record['pairs_per_s']:7.1f} pairs/s  {record['peak_rss_mb']:7.1f} MB", flush=True)

    med = {
        name: {key: statistics.median(r[key] for r in rows) for key in ("pairs_per_s", "peak_rss_mb", "unet_mb", "trainable_mb")}
        for name, rows in results.items()
    }
    print(f"\n{'config':10s} {'pairs/s':>9s} {'peak RSS MB':>12s} {'UNet MB':>9s} {'trainable MB':>13s}")
    for name, row in med.items():
        print(f"{name:10s} {row['pairs_per_s']:9.1f} {row['peak_rss_mb']:12.1f} {row['unet_mb']:9.2f} {row['trainable_mb']:13.3f}")

    def ratio(label: str, a: str, b: str, note: str = "") -> None:
        if a in med and b in med:
            time_ratio = med[b]["pairs_per_s"] / med[a]["pairs_per_s"]  # time per pair of a / of b
            rss_ratio = med[a]["peak_rss_mb"] / med[b]["peak_rss_mb"]
            print(f"{label:44s} time x{time_ratio:5.3f}  peak RSS x{rss_ratio:5.3f}  {note}")

    print()
    ratio("DSPO / image-level DPO", "dspo", "image", "(goal: time <= 1.05x)")
    ratio("frozen-copy ref / adapter-disabled ref (LoRA)", "ref_copy", "dspo")
    ratio("full_finetune / LoRA", "full_ft", "dspo")
    ratio("per-step VAE encode / cached latents", "no_cache", "dspo")
    if "ref_copy" in med and "dspo" in med:
        print(
            f"(the frozen copy adds one UNet: {med['dspo']['unet_mb']:.2f} MB of weights on the tiny model; "
            f"peak RSS difference {med['ref_copy']['peak_rss_mb'] - med['dspo']['peak_rss_mb']:+.1f} MB)"
        )


if __name__ == "__main__":
    main()
