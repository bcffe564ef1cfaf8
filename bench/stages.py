"""Per-stage wall time, throughput and peak memory of the pipeline as the input grows.

What it measures
    For each size N in `--sizes`, a source folder of N distinct HR photos is built
    deterministically (image i: a random crop >= 300x300 of one of the 11 demo photos --
    skimage's astronaut, chelsea, coffee, rocket, hubble_deep_field, immunohistochemistry and
    pyiqa's ResultsCalibra/ref_dir -- cycled in turn, plus a random horizontal flip and, where
    the photo leaves room, a small rotation; seeded by i, so the N=8 set is a prefix of the
    N=64 set), saved as PNG. Then every stage in `pipeline.stages.STAGES`, in order, runs on a
    fresh file:// store in a temp dir (`ingest.source=<folder>`, the rest of `--profile`
    unchanged), each stage in its OWN subprocess, so each stage's peak RSS is its own:

      s       wall seconds of `run_stage(...)` in the child (imports excluded; model loads included)
      img/s   input images / s (ingest: source files; degrade: hr_images rows; every later
              stage: samples, i.e. lq_pairs rows -- N here, as the demo takes 1 crop per image)
      RSS MB  the child's peak RSS (VmHWM) during `run_stage`: the mark is reset
              (/proc/self/clear_refs) just before it, so import transients do not count, but
              the resident imports (~1 GB: torch, diffusers, ...) do; "work" = that peak minus
              the RSS just before `run_stage` (what the stage itself added)

    Then, per stage, growth from the smallest to the largest size: time ratio (vs the size
    ratio), peak-RSS and work-RSS deltas, and the Arrow memory pool's peak. A stage whose peak
    RSS grows by more than `--flag` (default 25%) is flagged GROWS; one whose work RSS grows
    by more than `--flag` and 16 MB is flagged "work grows" (the ~1 GB import baseline hides
    growth from the first test). Stages stream shards and must not hold the whole dataset, so
    their memory should stay flat as N grows.

    Wall times are only as good as the machine is quiet (on a shared 2-CPU box they varied
    up to 10x between runs); the memory figures do not depend on load.

    Threads: OMP/MKL/OpenBLAS/NUMEXPR = `--threads` (default 2) and torch.set_num_threads(same)
    in every child; ncnn (Real-ESRGAN) uses its own default (all cores).

How to run
    .venv/bin/python bench/stages.py [--sizes 8,32,64] [--profile demo] [--threads 2]
                                    [--stages ingest,degrade,...] [--keep] [--json out.json]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")
MIN_SIDE, MAX_SIDE, MAX_ANGLE = 300, 640, 6.0


# ------------------------------------------------------------------ source images
def base_photos() -> list[tuple[str, object]]:
    import numpy as np
    import pyiqa
    from PIL import Image
    from skimage import data as skdata

    photos = [(name, np.asarray(getattr(skdata, name)())[..., :3]) for name in SKIMAGE_PHOTOS]
    ref_dir = Path(pyiqa.__file__).resolve().parent.parent / "ResultsCalibra" / "ref_dir"
    photos += [(p.stem, np.asarray(Image.open(p).convert("RGB"))) for p in sorted(ref_dir.glob("*.bmp"))]
    return photos


def make_sources(folder: Path, count: int, photos) -> None:
    """`count` distinct PNGs in `folder`; image i depends only on i (so sizes share a prefix)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    seen: set[str] = set()
    for i in range(count):
        name, pixels = photos[i % len(photos)]
        rng = np.random.default_rng(1000 + i)
        height, width = pixels.shape[:2]
        crop_h = int(rng.integers(MIN_SIDE, min(height, MAX_SIDE) + 1))
        crop_w = int(rng.integers(MIN_SIDE, min(width, MAX_SIDE) + 1))
        angle = float(rng.uniform(-MAX_ANGLE, MAX_ANGLE))
        # A rotation needs a margin so no fill shows inside the final crop.
        margin = int(np.ceil(max(crop_h, crop_w) * abs(np.sin(np.radians(angle))))) + 2
        if crop_h + 2 * margin > height or crop_w + 2 * margin > width:
            angle, margin = 0.0, 0
        top = int(rng.integers(0, height - crop_h - 2 * margin + 1))
        left = int(rng.integers(0, width - crop_w - 2 * margin + 1))
        image = Image.fromarray(pixels[top:top + crop_h + 2 * margin, left:left + crop_w + 2 * margin])
        if angle:
            image = image.rotate(angle, resample=Image.BICUBIC)
        image = image.crop((margin, margin, margin + crop_w, margin + crop_h))
        if rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        array = np.ascontiguousarray(np.asarray(image))
        digest = hashlib.sha256(array.tobytes()).hexdigest()
        assert digest not in seen, f"image {i} repeats an earlier one"
        seen.add(digest)
        Image.fromarray(array).save(folder / f"{i:04d}-{name}.png")


# ------------------------------------------------------------------ child: one stage
def status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0),
    so the peak read after the stage is the stage's own, not a transient of the imports."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    import pyarrow as pa

    from pipeline.config import load_config
    from pipeline.sources import list_source
    from pipeline.stage import run_stage
    from pipeline.stages import STAGES
    from storage import DatasetStore

    stage = STAGES[args.stage]
    config = load_config(args.profile, [f"ingest.source={args.source}"])
    store = DatasetStore(args.store)
    if not stage.inputs:
        inputs = len(list_source(config.ingest.source).items)
    else:  # per-sample stages count samples (lq_pairs rows), not e.g. instance_scores rows
        unit = stage.inputs[0] if stage.inputs[0] in ("hr_images", "lq_pairs") else "lq_pairs"
        inputs = store.manifest(store.resolve(f"{unit}@latest"))["rows"]
    before = status_mb("VmRSS")
    peak_reset = reset_peak()
    started = time.perf_counter()
    result = run_stage(stage, store, config)
    seconds = time.perf_counter() - started
    # VmHWM, not ru_maxrss: clear_refs resets only VmHWM on some kernels (seen here: ru_maxrss
    # kept the import transient, so every small stage showed the same ~1 GB "peak").
    peak = status_mb("VmHWM") if peak_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps({
        "stage": args.stage, "seconds": seconds, "inputs": inputs, "rows": result.rows,
        "cache_hit": result.cache_hit, "shards": result.shards_total, "quarantined": len(result.quarantined),
        "peak_mb": peak, "before_mb": before, "peak_reset": peak_reset, "arrow_peak_mb": pa.default_memory_pool().max_memory() / 2**20,
        "ref": result.ref,
    }), flush=True)
    sys.stderr.flush()
    # Skip interpreter teardown: a native thread pool (seen after `sample`) can abort the process
    # at exit ("terminate called without an active exception") after the stage has finished.
    os._exit(0)


# ------------------------------------------------------------------ parent
def run_child(stage: str, store: str, source: Path, args: argparse.Namespace, env: dict) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--child", "--stage", stage, "--store", store,
               "--source", str(source), "--profile", args.profile, "--threads", str(args.threads)]
    proc = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        sys.exit(f"stage {stage} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    record = json.loads(lines[-1][len("RESULT "):])
    if proc.returncode:
        print(f"  warning: stage {stage} exited with rc {proc.returncode} after reporting its result", flush=True)
    if record["cache_hit"]:
        sys.exit(f"stage {stage}: unexpected cache hit on a fresh store")
    return record


def report(results: dict, sizes: list[int], stages: list[str], flag: float) -> None:
    head = f"{'stage':<10}" + "".join(f" | N={n:<4} {'s':>7} {'img/s':>7} {'RSS MB':>7} {'work':>6}" for n in sizes)
    print("\n" + head + "\n" + "-" * len(head))
    for stage in stages:
        cells = []
        for n in sizes:
            r = results[(stage, n)]
            cells.append(f" | {'':6} {r['seconds']:7.2f} {r['inputs'] / r['seconds']:7.2f} "
                         f"{r['peak_mb']:7.0f} {r['peak_mb'] - r['before_mb']:6.0f}")
        print(f"{stage:<10}" + "".join(cells))
    print("(s: wall seconds of run_stage; img/s: input images/s; RSS MB: child peak RSS during run_stage, "
          "resident imports included; work: that peak minus RSS before run_stage)")
    if not all(r["peak_reset"] for r in results.values()):
        print("warning: /proc/self/clear_refs not writable: peaks may be import transients")
    small, large = sizes[0], sizes[-1]
    print(f"\nGrowth {small} -> {large} images (size ratio {large / small:.0f}x); flag: peak RSS > +{flag:.0%}")
    flagged = []
    for stage in stages:
        a, b = results[(stage, small)], results[(stage, large)]
        grow = b["peak_mb"] / a["peak_mb"] - 1
        work_a, work_b = a["peak_mb"] - a["before_mb"], b["peak_mb"] - b["before_mb"]
        work_grows = work_b - work_a > max(16.0, flag * work_a)
        verdict = "GROWS" if grow > flag else "work grows" if work_grows else "flat"
        if verdict != "flat":
            flagged.append(f"{stage} ({verdict})")
        print(f"  {stage:<8} time x{b['seconds'] / a['seconds']:5.2f} (per image x"
              f"{(b['seconds'] / b['inputs']) / (a['seconds'] / a['inputs']):4.2f}) | "
              f"peak RSS {a['peak_mb']:6.0f} -> {b['peak_mb']:6.0f} MB ({b['peak_mb'] - a['peak_mb']:+5.0f} MB, "
              f"{grow:+6.1%}) | work {work_a:5.0f} -> {work_b:5.0f} MB | arrow pool peak "
              f"{a['arrow_peak_mb']:5.1f} -> {b['arrow_peak_mb']:5.1f} MB | {verdict}")
    print("flagged: " + (", ".join(flagged) if flagged else "none"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="8,32,64", help="comma-separated image counts")
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--threads", type=int, default=2, help="OMP/MKL/torch threads in every child")
    parser.add_argument("--flag", type=float, default=0.25, help="flag peak-RSS growth above this fraction")
    parser.add_argument("--stages", help="comma-separated subset of STAGES (each needs its inputs in the list)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (sources and stores)")
    parser.add_argument("--json", help="also write the raw per-run records here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    args = parser.parse_args()
    threads = str(args.threads)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[var] = threads
    if args.child:
        return child(args)

    sizes = sorted(int(s) for s in args.sizes.split(","))
    from pipeline.stages import STAGES

    stages = [name for name in STAGES if not args.stages or name in args.stages.split(",")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    print(f"stages {stages}; sizes {sizes}; profile {args.profile}; threads {threads} "
          f"(OMP/MKL/OpenBLAS/torch; ncnn default); {os.cpu_count()} CPUs")
    photos = base_photos()
    tmp = Path(tempfile.mkdtemp(prefix="dspo-bench-stages-"))
    results: dict = {}
    total = time.perf_counter()
    try:
        for n in sizes:
            source, store = tmp / f"n{n}" / "source", tmp / f"n{n}" / "store"
            make_sources(source, n, photos)
            uri = store.as_uri()
            for stage in stages:
                record = run_child(stage, uri, source, args, env)
                results[(stage, n)] = record
                print(f"  N={n:<3} {stage:<8} {record['seconds']:7.2f} s  {record['inputs']:3d} in -> "
                      f"{record['rows']:4d} rows ({record['shards']} shards, {record['quarantined']} quarantined)  "
                      f"peak {record['peak_mb']:.0f} MB", flush=True)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    report(results, sizes, stages, args.flag)
    print(f"\ntotal {time.perf_counter() - total:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps([{"size": n, **r} for (s, n), r in results.items()], indent=1))


if __name__ == "__main__":
    main()
