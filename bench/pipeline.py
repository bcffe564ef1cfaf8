"""Wall time of the whole pipeline run as Prefect flows, split into model compute vs orchestration + storage.

What it measures
    For each N in `--images` (default 4,16,64): a folder of N distinct photos (random crops,
    300-512 px, of skimage's astronaut, chelsea, coffee, rocket, immunohistochemistry and
    hubble_deep_field, seeded by i, flipped at random) is the ingest source; a fresh file:// store
    in a temp dir. Each N runs in its own child process (so its peak RSS and its model builds
    are its own), which:

      1. starts Prefect's temporary API, runs a no-op flow and waits until the server process is
         idle (not timed: a long-running server pays its start once, not per pipeline),
      2. runs the parent flow `dspo` with mode="subflows" (each stage a subflow, its shards
         Prefect tasks on the ThreadPoolTaskRunner, `DSPO_SHARD_WORKERS` threads) on the
         `--profile` (default demo) with `ingest.source=<folder>`: WALL,
      3. records every `Stage.run_shard` call (start, end) -- model compute plus the shard's
         own input reads -- and reports COMPUTE as the union of those intervals (time when at
         least one shard was computing; with threads, overlapping shards count once), and
         ORCH+STORAGE = WALL - COMPUTE: flow/task run bookkeeping, API calls, artifacts and
         previews, plans, scratch writes, publishes, manifest reads,
    Unless --no-baseline, another child runs the same stages with `pipeline.stage.run_stage` in a
    loop, no Prefect at all (what `dspo run` does), on a fresh store: the Prefect-free wall time
    (same cold model builds).

    Peak RSS is the child's `ru_maxrss` (the pipeline's process; Prefect's temporary server is a
    separate process of ~250 MB, not included). Model builds happen inside the first shard of a
    stage, so they count as compute; at small N they dominate.
    Goal: ORCH+STORAGE < 10% of WALL at 64 images.

How to run
    .venv/bin/python bench/pipeline.py [--images 4,16,64] [--profile demo] [--workers 2] [--no-baseline]
                                       [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GOAL = 0.10


def make_photos(folder: Path, count: int, seed: int = 0) -> None:
    """`count` distinct RGB photos as PNG: random crops (300-512 px) of skimage's colour photos."""
    import numpy as np
    from PIL import Image
    from skimage import data

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.immunohistochemistry(),
              data.hubble_deep_field()]
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        photo = photos[index % len(photos)][..., :3]
        height, width = photo.shape[:2]
        side_h = int(rng.integers(min(300, height), min(512, height) + 1))
        side_w = int(rng.integers(min(300, width), min(512, width) + 1))
        top, left = int(rng.integers(0, height - side_h + 1)), int(rng.integers(0, width - side_w + 1))
        crop = photo[top:top + side_h, left:left + side_w]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        Image.fromarray(np.ascontiguousarray(crop)).save(folder / f"photo-{index:04d}.png")


class ShardClock:
    """Records (stage, start, end) of every Stage.run_shard call, from any thread."""

    def __init__(self):
        self.calls: list[tuple[str, float, float]] = []
        self.lock = threading.Lock()

    def install(self, stages) -> None:
        for cls in {type(stage) for stage in stages}:
            original = cls.run_shard

            def timed(self_, *args, _original=original, _clock=self, **kwargs):
                started = time.perf_counter()
                try:
                    return _original(self_, *args, **kwargs)
                finally:
                    with _clock.lock:
                        _clock.calls.append((self_.name, started, time.perf_counter()))

            cls.run_shard = timed

    def union(self, stage: str | None = None, since: float = 0.0) -> float:
        spans = sorted((start, end) for name, start, end in self.calls if (stage is None or name == stage)
                       and start >= since)
        total, current_start, current_end = 0.0, None, None
        for start, end in spans:
            if current_end is None or start > current_end:
                if current_end is not None:
                    total += current_end - current_start
                current_start, current_end = start, end
            else:
                current_end = max(current_end, end)
        if current_end is not None:
            total += current_end - current_start
        return total

    def summed(self, since: float = 0.0) -> float:
        return sum(end - start for _, start, end in self.calls if start >= since)


def settle(limit: float = 60.0) -> None:
    """Wait until Prefect's temporary server (a child process) stops burning CPU after its start
    (migrations, services): a long-running server does not pay that per pipeline run."""
    import psutil

    servers = [child for child in psutil.Process().children(recursive=True)
               if "uvicorn" in " ".join(child.cmdline()) or "prefect" in " ".join(child.cmdline())]
    for server in servers:
        server.cpu_percent(interval=None)  # primes the counter
    deadline = time.monotonic() + limit
    quiet = 0
    while servers and time.monotonic() < deadline and quiet < 2:
        time.sleep(1.0)
        busy = sum(server.cpu_percent(interval=None) for server in servers)
        quiet = quiet + 1 if busy < 5 else 0


def child(images: int, profile: str, baseline: bool) -> dict:
    """One N, in this process: returns the figures as a dict (printed as JSON by --child).
    baseline: time `run_stage` in a loop instead of the flows."""
    import logging

    logging.getLogger("prefect").setLevel(logging.WARNING)
    from prefect import flow

    from flows import stage_flows
    from flows.parent import dspo, pipeline_stages
    from pipeline.config import load_config
    from pipeline.stage import run_stage
    from pipeline.stages import STAGES
    from storage import DatasetStore

    clock = ShardClock()
    clock.install(STAGES.values())
    stage_walls: dict[str, float] = {}
    original_body = stage_flows.run_stage_flow

    def timed_body(name, *args, **kwargs):
        started = time.perf_counter()
        try:
            return original_body(name, *args, **kwargs)
        finally:
            stage_walls[name] = time.perf_counter() - started

    stage_flows.run_stage_flow = timed_body

    @flow(name="bench-warm-up")
    def warm_up() -> int:
        return 1

    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as scratch:
        source = Path(scratch) / "photos"
        make_photos(source, images)
        overrides = (f"ingest.source={source}",)
        if baseline:
            config = load_config(profile, overrides)
            store = DatasetStore((Path(scratch) / "baseline").as_uri())
            started = time.perf_counter()
            walls = {}
            for name in pipeline_stages():
                stage_started = time.perf_counter()
                run_stage(STAGES[name], store, config)
                walls[name] = time.perf_counter() - stage_started
            return {"images": images, "baseline_wall_s": time.perf_counter() - started,
                    "baseline_compute_s": clock.union(since=started), "baseline_stages": walls,
                    "baseline_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        warm_up()
        settle()
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        outputs = dspo(store=(Path(scratch) / "store").as_uri(), profile=profile, overrides=overrides, mode="subflows")
        wall = time.perf_counter() - started
        compute = clock.union(since=started)
        figures = {
            "images": images, "profile": profile, "workers": int(os.environ.get("DSPO_SHARD_WORKERS", "2")),
            "wall_s": wall, "compute_s": compute, "compute_sum_s": clock.summed(since=started),
            "orchestration_storage_s": wall - compute, "ratio": (wall - compute) / wall,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_before_mb": rss_before / 1024,
            "rows": {name: DatasetStore((Path(scratch) / "store").as_uri()).manifest(ref)["rows"]
                     for name, ref in outputs.items()},
            "stages": {name: {"wall_s": stage_walls.get(name, 0.0), "compute_s": clock.union(name, since=started)}
                       for name in pipeline_stages()},
        }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default="4,16,64", help="Comma-separated image counts.")
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--workers", type=int, default=None, help="DSPO_SHARD_WORKERS (default: 2).")
    parser.add_argument("--no-baseline", action="store_true", help="Skip the Prefect-free run_stage baseline.")
    parser.add_argument("--json", metavar="PATH", help="Also write the figures as JSON.")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print("BENCH-JSON " + json.dumps(child(args.child, args.profile, args.plain)), flush=True)
        return

    env = dict(os.environ)
    if args.workers:
        env["DSPO_SHARD_WORKERS"] = str(args.workers)
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The temporary API must come up while the machine is busy (20 s, Prefect's default, is not
    # enough on a loaded 2-core machine); its start is not part of the figures.
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    results = []
    for count in [int(item) for item in args.images.split(",") if item.strip()]:
        figures = run_child(count, args.profile, False, env)
        if not args.no_baseline:
            figures.update(run_child(count, args.profile, True, env))
        results.append(figures)
        report(figures)
    print()
    print(f"{'images':>6} {'wall s':>8} {'compute s':>9} {'orch+stor s':>11} {'ratio':>7} {'goal':>5} "
          f"{'no-Prefect s':>12} {'Prefect/plain':>13} {'peak RSS MB':>11} {'(no Prefect)':>12}")
    for item in results:
        plain = item.get("baseline_wall_s")
        print(f"{item['images']:>6} {item['wall_s']:>8.1f} {item['compute_s']:>9.1f} "
              f"{item['orchestration_storage_s']:>11.1f} {item['ratio']:>7.1%} "
              f"{'ok' if item['ratio'] < GOAL else 'MISS':>5} {plain if plain is None else round(plain, 1)!s:>12} "
              f"{(item['wall_s'] / plain if plain else float('nan')):>13.2f} {item['peak_rss_mb']:>11.0f} "
              f"{item.get('baseline_peak_rss_mb', float('nan')):>12.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def run_child(count: int, profile: str, plain: bool, env: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-prefect-home-") as home:
        child_env = {**env, "PREFECT_HOME": home}
        child_env.pop("PREFECT_API_URL", None)  # a temporary API per child, not someone's server
        argv = [sys.executable, __file__, "--child", str(count), "--profile", profile] + (["--plain"] if plain else [])
        print(f"running {count} images ({profile} profile, {'run_stage, no Prefect' if plain else 'Prefect flows'})...",
              flush=True)
        done = subprocess.run(argv, env=child_env, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("BENCH-JSON ")]
    if done.returncode != 0 or not lines:
        sys.exit(f"the {count}-image run failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(lines[-1].removeprefix("BENCH-JSON "))


def report(item: dict) -> None:
    print(f"  {item['images']} images: wall {item['wall_s']:.1f}s, compute {item['compute_s']:.1f}s "
          f"(sum over threads {item['compute_sum_s']:.1f}s), orchestration+storage "
          f"{item['orchestration_storage_s']:.1f}s = {item['ratio']:.1%} of wall; peak RSS {item['peak_rss_mb']:.0f} MB; "
          f"rows {item['rows']}")
    for name, stage in item["stages"].items():
        overhead = stage["wall_s"] - stage["compute_s"]
        print(f"    {name:<8} flow body {stage['wall_s']:6.1f}s  compute {stage['compute_s']:6.1f}s  "
              f"other {overhead:5.1f}s")
    outside = item["wall_s"] - sum(stage["wall_s"] for stage in item["stages"].values())
    print(f"    outside stage bodies (flow/subflow engine, parent): {outside:.1f}s")
    if "baseline_wall_s" in item:
        print(f"  no Prefect (run_stage in a loop): {item['baseline_wall_s']:.1f}s "
              f"(compute {item['baseline_compute_s']:.1f}s): "
              + ", ".join(f"{name} {seconds:.1f}s" for name, seconds in item["baseline_stages"].items()))


if __name__ == "__main__":
    main()
