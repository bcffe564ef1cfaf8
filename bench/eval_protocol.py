"""Our evaluation protocol on a folder of SR outputs and the benchmark's HR folder.

    python bench/eval_protocol.py --sr results/ --hr test_HR/ [--protocol osediff] [--metrics psnr ssim]
                                  [--limit N] [--log test_METRICS_<time>.log]

Pairs the files as OSEDiff's test_metrics.py does (both folders' *.png, sorted, by position),
scores each pair with dspo_core.iqa.whole_image.ProtocolScorer (FID over the two folders when
the protocol has it) and prints each metric's mean over the images. For contrast it also prints
what the evaluate stage computed before the protocol: PSNR on RGB and SSIM on YIQ-Y (pyiqa's
defaults). With --log (a log that script wrote: `<dir>/<name> | PSNR: ...; SSIM: ...`) it prints
the log's mean over the same images and the largest per-image difference from ours.

Reproducing OSEDiff's RealSR row: run it on OSEDiff's published outputs
(preset/datasets/benchmark_realsr/results_osediff and test_HR in github cswry/OSEDiff) with its
log; every learned metric needs its weights cached (a missing one stops with the file it needs).
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dspo_core.iqa.protocol import ProtocolMetric, protocol_metrics
from dspo_core.iqa.whole_image import ProtocolScorer

LOG_LINE = re.compile(r"/(?P<name>[^/|]+?) \| (?P<values>[^|]+) \|")
LOG_KEYS = {"PSNR": "psnr", "SSIM": "ssim", "LPIPS": "lpips", "DISTS": "dists", "CLIPIQA": "clipiqa",
            "NIQE": "niqe", "MUSIQ": "musiq", "MANIQA": "maniqa-pipal"}
#: The evaluate stage's PSNR / SSIM before the protocol (pyiqa defaults: RGB, YIQ-Y).
BEFORE = (ProtocolMetric("psnr", "psnr", "PSNR (RGB)", "fr", False, weight_free=True),
          ProtocolMetric("ssim", "ssim", "SSIM (YIQ-Y)", "fr", False, weight_free=True))


def read_log(path: Path) -> dict[str, dict[str, float]]:
    """{file name: {metric key: value}} from a test_metrics.py log."""
    values: dict[str, dict[str, float]] = {}
    for match in LOG_LINE.finditer(path.read_text()):
        pairs = (item.split(": ") for item in match["values"].split("; "))
        values[match["name"]] = {LOG_KEYS[key.strip()]: float(value) for key, value in pairs if key.strip() in LOG_KEYS}
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sr", type=Path, required=True)
    parser.add_argument("--hr", type=Path, required=True)
    parser.add_argument("--protocol", default="osediff")
    parser.add_argument("--metrics", nargs="*", default=None)
    parser.add_argument("--limit", type=int, default=None, help="only the first N pairs")
    parser.add_argument("--log", type=Path, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)
    srs, hrs = sorted(args.sr.glob("*.png"))[:args.limit], sorted(args.hr.glob("*.png"))[:args.limit]
    if len(srs) != len(hrs) or not srs:
        raise SystemExit(f"error: {len(srs)} SR and {len(hrs)} HR images")
    metrics = protocol_metrics(args.protocol, args.metrics)
    ours: dict[str, list[float]] = {m.key: [] for m in metrics if m.level == "image"}
    scorer = ProtocolScorer(metrics, args.device)
    before = ProtocolScorer([m for m in BEFORE if m.key in ours], args.device)
    old: dict[str, list[float]] = {m.key: [] for m in before.metrics}
    start = time.perf_counter()
    images = []
    for sr_path, hr_path in zip(srs, hrs):
        sr, hr = np.asarray(Image.open(sr_path).convert("RGB")), np.asarray(Image.open(hr_path).convert("RGB"))
        images.append((sr, hr))
        for key, value in scorer.score_image(sr, hr).items():
            ours[key].append(value)
        for key, value in before.score_image(sr, hr).items():
            old[key].append(value)
    sets = scorer.score_set([sr for sr, _ in images], [hr for _, hr in images])
    print(f"{len(srs)} pairs, protocol {args.protocol}, {time.perf_counter() - start:.1f} s")
    logged = read_log(args.log) if args.log else {}
    for key, values in ours.items():
        line = f"{key:>13}: {np.mean(values):.4f}"
        if key in old:
            line += f"   before the protocol ({'RGB' if key == 'psnr' else 'YIQ-Y'}): {np.mean(old[key]):.4f}"
        if logged:
            theirs = [logged[path.name][key] for path in srs]
            line += (f"   log: {np.mean(theirs):.4f}, largest per-image difference "
                     f"{np.max(np.abs(np.array(values) - theirs)):.2e}")
        print(line)
    for key, value in sets.items():
        print(f"{key:>13}: {value:.4f} (set-level)")


if __name__ == "__main__":
    main()
