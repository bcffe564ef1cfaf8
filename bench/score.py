"""Instance-scoring cost of ``IQAScorer.score_instances`` vs whole-image pyiqa scoring.

What it measures
    On real photo crops (skimage astronaut, coffee, chelsea; shorter side resized to
    --size, centre-cropped square), N = --candidates candidates are made by realistic
    degradations of the HR crop (bicubic down/up x2 and x4, Gaussian blur, JPEG, noise and
    combinations), and up to M = --instances masks come from FelzenszwalbSegmenter
    (max_instances=M, default post-filter: disjoint, >= 0.5% of the image) run on the HR.
    Per metric (one ``IQAScorer`` with that metric alone), summed over the 3 photos, then
    subtotals per scoring method (masked_map / bbox_fill) and the total over all metrics:

      masked  s   ``scorer.score_instances(candidates, hr, masks)``: M x N scores
      whole   s   baseline: ``load_metric(name)`` (pyiqa itself) on the N candidates vs the
                  HR as one batch, uint8 -> tensor conversion included: N scores
      ms/cand     both per candidate (seconds / (3 photos x N))
      ratio       masked / whole = cost of all M instances of a candidate relative to one
                  whole-image pass of it. Goal: < 1.5x (verdict per metric and in total)
      scores/s    throughput: masked (M x N x metrics) and whole (N x metrics) scores per second
      crop px     bbox_fill metrics only: sum over instances of the padded crop area
                  (bbox side raised to the metric's minimum size) / image area

    Timings: torch.set_num_threads(1) (and OMP/MKL/OpenBLAS = 1) for stable numbers; per
    metric one warm-up pass (first photo), then the median of --repeat passes, masked and
    whole interleaved so both see the same machine load.

How to run
    .venv/bin/python bench/score.py [--size 256] [--candidates 4] [--instances 8]
        [--metrics default|fast|a,b,c] [--repeat 3]
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dspo_core.iqa import DEFAULT_METRICS, IQAConfig, IQAScorer, load_metric
from dspo_core.iqa.crop import bbox
from dspo_core.segment import (
    FelzenszwalbSegmenter,
    PostFilterConfig,
    SegmenterConfig,
    rle,
)

PHOTOS = ("astronaut", "coffee", "chelsea")
FAST_METRICS = ("psnr", "ssim", "gmsd", "fsim", "vsi", "piqe")  # the demo profile's set
GOAL = 1.5


def hr_crop(name: str, size: int) -> np.ndarray:
    from skimage import data as skdata

    img = Image.fromarray(np.asarray(getattr(skdata, name)())[..., :3])
    scale = size / min(img.size)
    img = img.resize((max(size, round(img.width * scale)), max(size, round(img.height * scale))), Image.LANCZOS)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))


def degrade(hr: np.ndarray, kind: int, rng: np.random.Generator) -> np.ndarray:
    img, s = Image.fromarray(hr), hr.shape[0]

    def bicubic(im: Image.Image, f: int) -> Image.Image:
        return im.resize((s // f, s // f), Image.BICUBIC).resize((s, s), Image.BICUBIC)

    def jpeg(im: Image.Image, q: int) -> Image.Image:
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=q)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")

    def noise(im: Image.Image, sigma: float) -> Image.Image:
        arr = np.asarray(im, np.float64) + rng.normal(0, sigma, (s, s, 3))
        return Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8))

    steps = [
        lambda: bicubic(img, 2),
        lambda: img.filter(ImageFilter.GaussianBlur(1.5)),
        lambda: jpeg(img, 30),
        lambda: noise(img, 8.0),
        lambda: bicubic(img, 4),
        lambda: jpeg(bicubic(img, 2), 50),
        lambda: noise(img.filter(ImageFilter.GaussianBlur(1.0)), 5.0),
        lambda: jpeg(noise(img, 4.0), 40),
    ]
    return np.asarray(steps[kind % len(steps)]())


def make_sample(name: str, size: int, n: int, m: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    hr = hr_crop(name, size)
    rng = np.random.default_rng(0)
    cands = np.stack([degrade(hr, k, rng) for k in range(n)])
    seg = FelzenszwalbSegmenter(SegmenterConfig(name="felzenszwalb", postfilter=PostFilterConfig(max_instances=m)))
    masks = [rle.decode(rec.mask) for rec in seg.segment(hr)]
    return hr, cands, masks


def whole(net, cands: np.ndarray, hr: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(cands).permute(0, 3, 1, 2).float().div(255)
    with torch.no_grad():
        if net.metric_mode == "FR":
            y = torch.from_numpy(hr[None].copy()).permute(0, 3, 1, 2).float().div(255).expand_as(x).contiguous()
            return net(x, y)
        return net(x)


def timed_pair(masked, whole_fn, warm, repeat: int) -> tuple[float, float]:
    """Median seconds of `masked` and `whole_fn`, interleaved run by run (both see the same
    machine load), after a warm-up of `warm` (both on the first photo)."""
    warm()
    tm, tw = [], []
    for _ in range(repeat):
        for fn, out in ((masked, tm), (whole_fn, tw)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return statistics.median(tm), statistics.median(tw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--candidates", type=int, default=4)
    ap.add_argument("--instances", type=int, default=8)
    ap.add_argument("--metrics", default="default", help="default | fast | comma-separated pyiqa names")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    metrics = {"default": list(DEFAULT_METRICS), "fast": list(FAST_METRICS)}.get(
        args.metrics, [s.strip() for s in args.metrics.split(",") if s.strip()]
    )
    n = args.candidates
    samples = [make_sample(p, args.size, n, args.instances) for p in PHOTOS]
    ms = [len(s[2]) for s in samples]
    print(f"score_instances vs whole-image pyiqa | {args.size}px, N={n} candidates, M={ms} instances "
          f"({', '.join(PHOTOS)}), torch.set_num_threads(1), median of {args.repeat} after a warm-up")

    scorers = {name: IQAScorer(IQAConfig(metrics=[name])) for name in metrics}
    nets = {name: load_metric(name) for name in metrics}

    def run_masked(name: str, which=samples) -> None:
        for hr, cands, masks in which:
            scorers[name].score_instances(cands, hr, masks)

    def run_whole(name: str, which=samples) -> None:
        for hr, cands, _ in which:
            whole(nets[name], cands, hr)

    per_cand = len(samples) * n
    head = (f"{'metric':10} {'method':10} {'masked s':>9} {'whole s':>8} {'masked ms/cand':>14} "
            f"{'whole ms/cand':>13} {'ratio':>6} {'masked sc/s':>11} {'whole sc/s':>10} {'crop px':>7}  goal")
    print(head)
    print("-" * len(head))
    rows, failed = [], []
    for name in metrics:
        info = scorers[name].metrics[0]
        t_m, t_w = timed_pair(lambda nm=name: run_masked(nm), lambda nm=name: run_whole(nm),
                              lambda nm=name: (run_masked(nm, samples[:1]), run_whole(nm, samples[:1])), args.repeat)
        crop = "-"
        if info.method == "bbox_fill":
            px = [sum(max(b - t, info.min_size) * max(r - le, info.min_size)
                      for t, b, le, r in map(bbox, masks)) for _, _, masks in samples]
            crop = f"{sum(px) / (args.size**2 * len(samples)):.2f}x"
        rows.append((name, info.method, t_m, t_w, crop))
        ok = t_m / t_w < GOAL
        if not ok:
            failed.append(name)
        print(f"{name:10} {info.method:10} {t_m:9.3f} {t_w:8.3f} {1e3 * t_m / per_cand:14.1f} "
              f"{1e3 * t_w / per_cand:13.1f} {t_m / t_w:6.2f} {sum(ms) * n / t_m:11.0f} {per_cand / t_w:10.0f} "
              f"{crop:>7}  {'ok' if ok else 'MISSED'}", flush=True)
    print("-" * len(head))
    groups = [(f"{m} sum", [r for r in rows if r[1] == m]) for m in ("masked_map", "bbox_fill")]
    groups = [g for g in groups if g[1]] + [("total", rows)]
    for label, grp in groups:
        k, t_m, t_w = len(grp), sum(r[2] for r in grp), sum(r[3] for r in grp)
        print(f"{label:21} {t_m:9.3f} {t_w:8.3f} {1e3 * t_m / per_cand:14.1f} {1e3 * t_w / per_cand:13.1f} "
              f"{t_m / t_w:6.2f} {sum(ms) * n * k / t_m:11.0f} {per_cand * k / t_w:10.0f} {'':>7}  "
              f"{'ok' if t_m / t_w < GOAL else 'MISSED'}")
    total = t_m / t_w  # the last group: all metrics
    print(f"\nverdict: all {len(rows)} metrics (one single-metric scorer each, summed), M={ms} instances of a "
          f"candidate cost {total:.2f}x one whole-image pass of it (goal < {GOAL}x): "
          f"{'MET' if total < GOAL else 'MISSED'}" + (f"; per metric missed by: {', '.join(failed)}" if failed
                                                       else "; every metric meets it"))


if __name__ == "__main__":
    main()
