"""Training-step cost on the tiny backbone: pairs/s and peak RSS, as ratios, in one run.

What it measures (memory: each configuration in its own child process, so ru_maxrss is its own peak)
    mask      DSPO (instance masks, weights) vs image-level Diffusion-DPO
              (``instance_masks=False``) on the same pairs: the masking overhead.
              Goal: time ratio <= 1.05x.
    ref       LoRA with the reference = adapters disabled (the default) vs LoRA with the
              reference = a frozen deep copy of the UNet (adapters disabled in the copy):
              the memory the adapter-disabled reference saves; plus ``full_finetune``
              (the project's frozen-copy mode: every UNet weight trains, AdamW state).
    cache     cached latents (``cache_latents=True``: VAE once per run) vs VAE-encoding every
              micro-batch (``cache_latents=False``): speed.

    The parent builds the tiny model once (``build_tiny_sd`` seed 0); children load it and
    make the same pairs (64 px, random masks). Speed is pairs per CPU-second
    (``time.process_time``): with one thread that is the compute time, which other processes
    on a shared machine move much less than wall time (also printed).
      time ratios   one "race" child per comparison (``COMPARISONS``) builds both trainers and
                    alternates single optimizer steps (ABBA order) after --warmup steps each,
                    so both see the same machine state; --repeat races, median and range.
      memory        one child per configuration: peak RSS (ru_maxrss) and "training RSS", the
                    peak minus the RSS after loading the model, before building the trainer
                    (what the trainer, its reference and its optimizer state added); also its
                    standalone speed and the trainer's setup time (the latent cache fill).
    Also printed: the UNet and LoRA parameter bytes (what the memory ratios should reflect;
    on the tiny model they are small next to the ~0.9 GB of the Python/torch runtime, so the
    peak RSS ratios are near 1).

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


#: (baseline, variant, label, note): each ratio is variant time per pair / baseline's.
COMPARISONS = (
    ("image", "dspo", "DSPO / image-level DPO", "(goal: time <= 1.05x)"),
    ("dspo", "ref_copy", "frozen-copy ref / adapter-disabled ref (LoRA)", ""),
    ("dspo", "full_ft", "full_finetune / LoRA", ""),
    ("dspo", "no_cache", "per-step VAE encode / cached latents", ""),
)


def _rss_mb() -> float:
    """Current resident set size of this process, MB (Linux /proc)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _backbone(args: argparse.Namespace):
    from dspo_core.sr import TinySDBackbone, TinySDConfig

    return TinySDBackbone(TinySDConfig(path=args.model_dir))


def _trainer(name: str, args: argparse.Namespace, backbone):
    from dspo_core.train import DSPOTrainer, TrainConfig

    options = dict(CONFIGS[name])
    ref_copy = options.pop("_ref_copy", False)
    config = TrainConfig(
        seed=0, max_steps=args.warmup + args.steps, batch_size=args.batch_size, learning_rate=1e-4,
        text_mode=args.text_mode, **options,
    )
    trainer = DSPOTrainer(backbone, config, _pairs(args.pairs))
    if ref_copy:  # LoRA policy, reference = a frozen deep copy (adapters disabled in it)
        reference = copy.deepcopy(backbone.unet).requires_grad_(False).eval()
        reference.disable_adapters()
        trainer._ref_unet = reference
    return trainer


def child(name: str, args: argparse.Namespace) -> dict:
    """One configuration alone: its memory, and its speed on its own."""
    import torch

    torch.set_num_threads(args.threads)
    backbone = _backbone(args)
    rss_before = _rss_mb()
    start = time.perf_counter()
    trainer = _trainer(name, args, backbone)
    setup = time.perf_counter() - start
    for _ in range(args.warmup):
        trainer.train_step()
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        trainer.train_step()
    cpu, wall = time.process_time() - cpu_start, time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "name": name,
        "pairs_per_cpu_s": args.steps * args.batch_size / cpu,
        "pairs_per_s": args.steps * args.batch_size / wall,
        "setup_s": setup,
        "peak_rss_mb": peak,
        "train_rss_mb": peak - rss_before,
        "unet_mb": sum(p.numel() * p.element_size() for p in trainer.backbone.unet.parameters()) / 2**20,
        "trainable_mb": sum(p.numel() * p.element_size() for p in trainer.params) / 2**20,
    }


def race(names: list[str], args: argparse.Namespace) -> dict[str, float]:
    """Two configurations in one process, one optimizer step each in turn: pairs per CPU-second.

    Alternating single steps (in ABBA order) exposes both to the same machine state, which on
    a shared machine moves far more between processes minutes apart than the ratio does.
    """
    import torch

    torch.set_num_threads(args.threads)
    trainers = {name: _trainer(name, args, _backbone(args)) for name in names}
    for trainer in trainers.values():
        for _ in range(args.warmup):
            trainer.train_step()
    cpu = dict.fromkeys(names, 0.0)
    for step in range(args.steps):
        for name in names if step % 2 == 0 else names[::-1]:
            start = time.process_time()
            trainers[name].train_step()
            cpu[name] += time.process_time() - start
    return {name: args.steps * args.batch_size / seconds for name, seconds in cpu.items()}


def _run_child(mode: str, value: str, passthrough: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, mode, value, *passthrough], capture_output=True, text=True, cwd=ROOT, check=False
    )
    line = [row for row in out.stdout.splitlines() if row.startswith("RESULT ")]
    if out.returncode or not line:
        raise SystemExit(f"child {mode} {value} failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(line[0][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per configuration and child")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3, help="repeats of every comparison (and memory child)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--text-mode", default="none", choices=("none", "prompt", "prompt+negative"))
    parser.add_argument("--configs", default=",".join(CONFIGS), help="subset of " + ",".join(CONFIGS))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--race", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args)), flush=True)
        return
    if args.race:
        print("RESULT " + json.dumps(race(args.race.split(","), args)), flush=True)
        return

    from dspo_core.sr import build_tiny_sd

    names = args.configs.split(",")
    comparisons = [c for c in COMPARISONS if c[0] in names and c[1] in names]
    scratch = tempfile.TemporaryDirectory(prefix="dspo-bench-train-")
    # Built once here, so no child's peak RSS includes building it.
    model_dir = build_tiny_sd(scratch.name, seed=0)
    passthrough = [
        "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size),
        "--pairs", str(args.pairs), "--threads", str(args.threads), "--text-mode", args.text_mode,
        "--model-dir", model_dir,
    ]
    print(
        f"tiny-sd, {SIZE}px pairs, batch {args.batch_size}, text_mode {args.text_mode}, {args.threads} thread(s), "
        f"{args.warmup} warm-up + {args.steps} timed steps, {args.repeat} repeats",
        flush=True,
    )
    results: dict[str, list[dict]] = {name: [] for name in names}
    ratios: dict[str, list[float]] = {c[2]: [] for c in comparisons}
    for repeat in range(args.repeat):
        for name in names:
            record = _run_child("--child", name, passthrough)
            results[name].append(record)
            print(
                f"  repeat {repeat} {name:9s} {record['pairs_per_cpu_s']:6.1f} pairs/CPU-s {record['pairs_per_s']:6.1f} "
                f"pairs/s  peak {record['peak_rss_mb']:6.1f} MB  training +{record['train_rss_mb']:5.1f} MB",
                flush=True,
            )
        for baseline, variant, label, _ in comparisons:
            speed = _run_child("--race", f"{baseline},{variant}", passthrough)
            ratios[label].append(speed[baseline] / speed[variant])
            print(f"  repeat {repeat} race {variant} vs {baseline}: time x{ratios[label][-1]:.3f}", flush=True)
    scratch.cleanup()

    keys = ("pairs_per_cpu_s", "pairs_per_s", "setup_s", "peak_rss_mb", "train_rss_mb", "unet_mb", "trainable_mb")
    med = {name: {key: statistics.median(r[key] for r in rows) for key in keys} for name, rows in results.items()}
    print(
        f"\n{'config':10s} {'pairs/CPU-s':>11s} {'pairs/s':>8s} {'setup s':>8s} {'peak RSS MB':>12s} "
        f"{'training MB':>12s} {'UNet MB':>8s} {'trainable MB':>13s}   (medians, one process each)"
    )
    for name, row in med.items():
        print(
            f"{name:10s} {row['pairs_per_cpu_s']:11.1f} {row['pairs_per_s']:8.1f} {row['setup_s']:8.2f} "
            f"{row['peak_rss_mb']:12.1f} {row['train_rss_mb']:12.1f} {row['unet_mb']:8.2f} {row['trainable_mb']:13.3f}"
        )
    print("\nratios: time from the alternating races (median, range over repeats); memory from the medians above")
    for baseline, variant, label, note in comparisons:
        times = ratios[label]
        rss = med[variant]["peak_rss_mb"] / med[baseline]["peak_rss_mb"]
        grown = med[variant]["train_rss_mb"] / max(med[baseline]["train_rss_mb"], 1e-9)
        print(
            f"{label:46s} time x{statistics.median(times):5.3f} ({min(times):.3f}-{max(times):.3f})  "
            f"peak RSS x{rss:5.3f}  training RSS x{grown:5.2f}  {note}"
        )
    if "ref_copy" in med and "dspo" in med:
        print(
            f"(the frozen copy adds one UNet: {med['dspo']['unet_mb']:.2f} MB of weights on the tiny model; "
            f"training RSS difference {med['ref_copy']['train_rss_mb'] - med['dspo']['train_rss_mb']:+.1f} MB)"
        )
    if "no_cache" in med and "dspo" in med:
        print(
            f"(cached latents pay once at setup: {med['dspo']['setup_s']:.2f} s for {args.pairs} pairs vs "
            f"{med['no_cache']['setup_s']:.2f} s without the cache)"
        )


if __name__ == "__main__":
    main()
