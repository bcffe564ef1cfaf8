"""Publish/read throughput of storage.DatasetStore against plain pyarrow.parquet.

What it measures
    One table, built once: `--rows` rows, each an `--size`x`--size` RGB PNG (random crops of
    skimage's astronaut / coffee / chelsea photos, encoded by `storage.image_array`, so the
    PNG sizes are those of real photos) plus scalar columns id (string), score (float64)
    and split (string). For every backend in `--backends`:

      write  raw   pq.write_table(table, path, filesystem=fs)        (pyarrow defaults)
             ours  store.publish("bench", table)                     (a fresh version each run)
      read   raw   pq.read_table(path, filesystem=fs)
             ours  store.read_arrow(ref)                             (a second store, manifest cache
                                                                      cleared: a cold reader)
             ver   store.read_arrow(ref, verify=True)                (cold: sha256 of every part first;
                                                                      printed as time ver / time ours)
      iter   ours  for b in store.iter_batches(ref, batch_size=64)   (informational: also the
                                                                      peak RSS / Arrow-pool growth)

    `fs` is the filesystem kind the store itself uses: pyarrow LocalFileSystem on a temp dir
    for file://, pyarrow S3FileSystem (scheme http, endpoint_override) for s3://, served by
    moto's real S3 HTTP server running in this process (fake credentials, passed explicitly).

    Each operation runs once as a warm-up (this also pays the store's one-off conditional-write
    probe), then `--repeat` times, interleaved raw/ours; the table shows the median. MB/s is of
    the Parquet bytes each side wrote/read (the files differ: the store writes PNG bytes
    uncompressed, zstd elsewhere, 64-row row groups, HF metadata; pyarrow's default is snappy
    everywhere and one row group). The ratio ours/raw is of rows/s, i.e. of wall time for the
    same table. Goals: ours/raw >= 0.9 for reads and >= 0.8 for writes. Raw files are kept,
    like the store's versions (deleting them frees page cache and flatters raw's next write).
    Single operations take milliseconds: on a shared machine use --repeat 15 or more before
    trusting a verdict. The streaming memory figure to trust is the Arrow-pool growth; RSS
    growth under-reports once earlier reads have left freed pages in the allocator (mimalloc).

How to run
    .venv/bin/python bench/store.py [--rows 200] [--size 256] [--repeat 3] [--backends file,s3]
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from contextlib import contextmanager

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from storage import DatasetStore, image_array

try:
    import psutil

    def rss() -> int:
        return psutil.Process().memory_info().rss
except ImportError:  # pragma: no cover - psutil is in the dev extras
    psutil = None

    def rss() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

GOALS = {"write": 0.8, "read": 0.9}
KEY, SECRET, REGION, BUCKET = "bench-key", "bench-secret", "us-east-1", "bench"


def build_table(rows: int, size: int, seed: int = 0) -> pa.Table:
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea()]
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(rows):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        if h < size or w < size:
            raise SystemExit(f"--size {size} exceeds the {h}x{w} source photo")
        y, x = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
        crop = photo[y:y + size, x:x + size, :3]
        crops.append(np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop))
    return pa.table({
        "id": pa.array([f"img-{i:06d}" for i in range(rows)]),
        "image": image_array(crops),
        "score": pa.array(rng.random(rows)),
        "split": pa.array(rng.choice(["train", "val", "test"], size=rows, p=[0.8, 0.1, 0.1]).tolist()),
    })


@contextmanager
def file_backend():
    root = tempfile.mkdtemp(prefix="bench-store-")
    try:
        yield {"fs": pafs.LocalFileSystem(), "raw_dir": os.path.join(root, "raw"),
               "uri": "file://" + os.path.join(root, "store"), "options": None}
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def s3_backend():
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        client = boto3.client("s3", endpoint_url=endpoint, region_name=REGION,
                              aws_access_key_id=KEY, aws_secret_access_key=SECRET)
        client.create_bucket(Bucket=BUCKET)
        client.close()
        fs = pafs.S3FileSystem(access_key=KEY, secret_key=SECRET, region=REGION,
                               endpoint_override=f"{host}:{port}", scheme="http")
        yield {"fs": fs, "raw_dir": f"{BUCKET}/raw", "uri": f"s3://{BUCKET}/store",
               "options": {"endpoint_url": endpoint, "region": REGION, "key": KEY, "secret": SECRET}}
    finally:
        server.stop()
        server._server.server_close()  # stop() leaves the listening socket open


BACKENDS = {"file": file_backend, "s3": s3_backend}


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def stream(store: DatasetStore, ref: str) -> tuple[float, int, int, int]:
    """Consume iter_batches; returns (seconds, rows, peak RSS growth, peak Arrow-pool growth in bytes).

    Sampled at each yield and by a thread every 0.5 ms (peaks fall between yields too)."""
    settle = time.perf_counter() + 1.0  # a finished read's threads free their buffers a few ms later
    while time.perf_counter() < settle:
        before = pa.total_allocated_bytes()
        time.sleep(0.02)
        if pa.total_allocated_bytes() >= before:
            break
    base = peak = (rss(), pa.total_allocated_bytes())
    done = threading.Event()

    def observe():
        nonlocal peak
        peak = (max(peak[0], rss()), max(peak[1], pa.total_allocated_bytes()))

    def sample():
        while not done.is_set():
            observe()
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    rows = 0
    start = time.perf_counter()
    try:
        for batch in store.iter_batches(ref, batch_size=64):
            rows += batch.num_rows
            observe()  # also at each yield: on a busy machine the sampler may barely run
            del batch
        seconds = time.perf_counter() - start
    finally:
        done.set()
        sampler.join()
    return seconds, rows, peak[0] - base[0], peak[1] - base[1]


def run_backend(kind: str, table: pa.Table, repeat: int) -> dict:
    samples: dict[tuple[str, str], list[tuple[float, int]]] = {}
    memory: list[tuple[int, int]] = []

    def add(op, impl, seconds, nbytes):
        samples.setdefault((op, impl), []).append((seconds, nbytes))

    with BACKENDS[kind]() as env:
        fs, raw_dir = env["fs"], env["raw_dir"]
        fs.create_dir(raw_dir, recursive=True)
        writer = DatasetStore(env["uri"], env["options"])
        reader = DatasetStore(env["uri"], env["options"])
        try:
            for run in range(repeat + 1):  # run 0 is the warm-up
                path = f"{raw_dir}/run-{run}.parquet"
                seconds, _ = timed(lambda path=path: pq.write_table(table, path, filesystem=fs))
                raw_bytes = fs.get_file_info(path).size
                write_raw = (seconds, raw_bytes)
                seconds, ref = timed(lambda: writer.publish("bench", table))
                ours_bytes = writer.manifest(ref)["bytes"]
                write_ours = (seconds, ours_bytes)

                seconds, got = timed(lambda path=path: pq.read_table(path, filesystem=fs))
                assert got.num_rows == table.num_rows
                read_raw = (seconds, raw_bytes)
                del got
                reader._manifests.clear()  # a cold reader: fetch the manifest like a new process would
                seconds, got = timed(lambda ref=ref: reader.read_arrow(ref))
                assert got.num_rows == table.num_rows
                read_ours = (seconds, ours_bytes)
                del got

                reader._manifests.clear()
                reader._verified.clear()  # cold: the sha256 of every part is computed again
                seconds, got = timed(lambda ref=ref: reader.read_arrow(ref, verify=True))
                assert got.num_rows == table.num_rows
                read_verified = (seconds, ours_bytes)
                del got

                reader._manifests.clear()
                seconds, rows, rss_growth, pool_growth = stream(reader, ref)
                assert rows == table.num_rows
                if run:
                    add("write", "raw", *write_raw)
                    add("write", "ours", *write_ours)
                    add("read", "raw", *read_raw)
                    add("read", "ours", *read_ours)
                    add("read", "ver", *read_verified)
                    add("iter", "ours", seconds, ours_bytes)
                    memory.append((rss_growth, pool_growth))
                # raw files are kept, like the store's versions: deleting them would hand their
                # page cache back and make raw's next (new-file) write cheaper than ours.
        finally:
            writer.close()
            reader.close()
    return {"samples": samples, "memory": memory}


def summarise(samples, rows: int) -> dict:
    out = {}
    for key, values in samples.items():
        seconds = statistics.median(s for s, _ in values)
        nbytes = statistics.median(b for _, b in values)
        out[key] = {"s": seconds, "mb": nbytes / 1e6, "mbps": nbytes / 1e6 / seconds, "rps": rows / seconds,
                    "spread": (min(s for s, _ in values), max(s for s, _ in values))}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--backends", default="file,s3")
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.backends.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in BACKENDS]
    if unknown or args.repeat < 1:
        parser.error(f"unknown backend(s) {unknown}; choose from {sorted(BACKENDS)}" if unknown else "--repeat >= 1")

    start, table = timed(lambda: build_table(args.rows, args.size))
    png = table.column("image").combine_chunks().field("bytes")
    png_sizes = [len(v) for v in png.to_pylist()]
    print(f"table: {args.rows} rows, {args.size}x{args.size} RGB PNG, {table.nbytes / 1e6:.1f} MB in memory, "
          f"PNG median {statistics.median(png_sizes) / 1e3:.0f} kB (min {min(png_sizes) / 1e3:.0f}, "
          f"max {max(png_sizes) / 1e3:.0f}); built in {start:.1f}s")
    print(f"pyarrow {pa.__version__}, {os.cpu_count()} CPUs, repeat {args.repeat} after 1 warm-up, median shown\n")

    header = f"{'backend':7} {'op':5} {'impl':4} {'MB':>6} {'median s':>9} {'min-max s':>13} {'MB/s':>8} {'rows/s':>8} {'ours/raw':>9}"
    print(header)
    print("-" * len(header))
    verdicts = []
    for kind in kinds:
        result = run_backend(kind, table, args.repeat)
        stats = summarise(result["samples"], args.rows)
        for op in ("write", "read", "iter"):
            for impl in ("raw", "ours", "ver"):
                s = stats.get((op, impl))
                if s is None:
                    continue
                ratio = ""
                if impl == "ours" and (op, "raw") in stats:
                    value = s["rps"] / stats[(op, "raw")]["rps"]
                    ratio = f"{value:.2f}"
                    verdicts.append((kind, op, value, GOALS[op]))
                elif impl == "ver":
                    ratio = f"[{s['s'] / stats[('read', 'ours')]['s']:.2f}]"
                elif impl == "ours" and op == "iter" and ("read", "raw") in stats:
                    ratio = f"({s['rps'] / stats[('read', 'raw')]['rps']:.2f})"
                print(f"{kind:7} {op:5} {impl:4} {s['mb']:6.1f} {s['s']:9.3f} "
                      f"{s['spread'][0]:6.3f}-{s['spread'][1]:6.3f} {s['mbps']:8.1f} {s['rps']:8.0f} {ratio:>9}")
        rss_growth = statistics.median(m[0] for m in result["memory"]) / 1e6
        pool_growth = statistics.median(m[1] for m in result["memory"]) / 1e6
        print(f"{kind:7} iter_batches(batch_size=64): peak RSS growth {rss_growth:.1f} MB, peak Arrow-pool growth "
              f"{pool_growth:.1f} MB (table {table.nbytes / 1e6:.1f} MB; RSS via {'psutil' if psutil else '/proc'})")
    print("\n(iter ratio in parentheses: against raw read_table, informational)")
    print("[ver]: read_arrow(ref, verify=True), sha256 of every part first; in brackets its time / plain read_arrow")
    print("goals:")
    ok = True
    for kind, op, value, goal in verdicts:
        met = value >= goal
        ok &= met
        print(f"  {kind:5} {op:5} ours/raw {value:.2f} >= {goal:.1f}: {'MET' if met else 'MISSED'}")
    print("all goals met" if ok else "some goals missed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
