"""Reads check each part against its manifest: size and rows always, sha256 when asked
(pull, to_hf_dataset, training reads), on file://, memory:// and s3:// (moto)."""
from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage import ChecksumMismatchError, DatasetStore, image_array


def image_table(rows: int, seed: int) -> pa.Table:
    pixels = np.random.default_rng(seed).integers(0, 255, (rows, 16, 16, 3), dtype=np.uint8)
    return pa.table({"id": [f"img-{seed}-{i}" for i in range(rows)], "image": image_array(pixels)})


def part_key(store: DatasetStore, ref: str) -> str:
    manifest = store.manifest(ref)
    return f"{manifest['name']}/{manifest['files'][0]['path']}"


def every_read(store: DatasetStore, ref: str, verify: bool = False) -> list:
    return [lambda: store.read_arrow(ref, verify=verify),
            lambda: list(store.iter_batches(ref, verify=verify)),
            lambda: store.read_where_in(ref, "id", ["img-1-0"], verify=verify)]


def test_a_part_swapped_for_another_parquet_file_fails_every_read(store):
    ref = store.publish("d", image_table(6, seed=1))
    other = io.BytesIO()
    pq.write_table(image_table(4, seed=2), other)
    store.backend.write_file(part_key(store, ref), other.getvalue())
    for read in every_read(store, ref):
        with pytest.raises(ChecksumMismatchError, match=r"d@v1: part v=0001/part-00000-\w+\.parquet is \d+ bytes"):
            read()


def test_a_part_with_the_right_size_but_other_rows_fails(store):
    ref = store.publish("d", pa.table({"id": ["img-1-0", "b"], "n": [1, 2]}))
    size = store.manifest(ref)["files"][0]["bytes"]
    # Another valid Parquet file of exactly the same size (one uncompressed string, grown byte by byte).
    for pad in range(size):
        buffer = io.BytesIO()
        pq.write_table(pa.table({"id": ["x" * pad]}), buffer, compression="NONE", use_dictionary=False,
                       write_statistics=False)
        if len(buffer.getvalue()) >= size:
            break
    assert len(buffer.getvalue()) == size
    store.backend.write_file(part_key(store, ref), buffer.getvalue())
    with pytest.raises(ChecksumMismatchError, match=r"d@v1: part .* holds 1 rows, its manifest says 2"):
        store.read_arrow(ref)


def test_a_missing_part_is_named(store):
    ref = store.publish("d", image_table(3, seed=1))
    store.backend.delete(part_key(store, ref))
    with pytest.raises(ChecksumMismatchError, match=r"d@v1: part .* is missing"):
        store.read_arrow(ref)


def flip_a_pixel_byte(store: DatasetStore, ref: str) -> None:
    key = part_key(store, ref)
    data = bytearray(store.backend.read_file(key))
    at = data.index(b"IDAT") + 20  # inside the first image's compressed pixels, stored uncompressed
    data[at] ^= 0x01
    store.backend.write_file(key, bytes(data))


def test_a_flipped_byte_fails_verified_reads_pull_and_hf(store, location, tmp_path):
    ref = store.publish("d", image_table(6, seed=1))
    for read in every_read(store, ref, verify=True):
        read()  # intact: passes
    flip_a_pixel_byte(store, ref)
    reader = DatasetStore(*location)  # a fresh store object: nothing verified yet
    for read in every_read(reader, ref, verify=True):
        with pytest.raises(ChecksumMismatchError, match=r"d@v1: part .* does not match its manifest's sha256"):
            read()
    with pytest.raises(ChecksumMismatchError, match="d@v1"):
        reader.pull(ref, str(tmp_path / "pulled"))
    with pytest.raises(ChecksumMismatchError, match="d@v1"):
        reader.to_hf_dataset(ref, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ChecksumMismatchError, match="d@v1"):
        reader.verify(ref)
