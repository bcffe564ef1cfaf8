"""Preferences in the Pick-a-Pic v2 layout that diffusers' Diffusion-DPO script trains on
(`examples/research_projects/diffusion_dpo/train_diffusion_dpo.py`):

    to_pickapic(store, "preferences@v3", "out/")     # datasets.load_dataset("out/", split="train")

One row per instance pair. The script opens `jpg_0` / `jpg_1` with `Image.open(io.BytesIO(...))`
and swaps the pair when `label_0 == 0`, so anything but 1 or 0 there would train a tie as a
preference; a pair whose two candidates are the same image is a tie here and is dropped, counted
in the folder's manifest.json (`pickapic.dropped_ties`).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.datasets import lineage_ref
from pipeline.materialize import SOURCES, preferences_with_images
from storage import DatasetStore, StoreError, decode_image
from storage.images import encode_png

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

PICKAPIC = pa.schema([
    ("jpg_0", pa.binary()),              # PNG bytes of the winner candidate (whole image)
    ("jpg_1", pa.binary()),              # PNG bytes of the loser candidate
    ("label_0", pa.float64()),           # 1.0: jpg_0 is preferred (always here: the winner comes first)
    ("label_1", pa.float64()),           # 0.0
    ("caption", pa.string()),            # positive_text: what the HR region shows
    ("negative_caption", pa.string()),   # negative_text: what the loser region shows
    ("lq", pa.binary()),                 # PNG bytes of the LQ input (DSPO conditions on it)
    ("hr", pa.binary()),                 # PNG bytes of the HR crop
    ("mask", pa.binary()),               # PNG bytes of the instance mask (0 / 255) at candidate resolution
    ("pair_id", pa.string()),
    ("sample_id", pa.string()),
    ("instance_id", pa.string()),
    ("winner_id", pa.string()),
    ("loser_id", pa.string()),
    ("weight", pa.float64()),            # w_m, the instance's loss weight
    ("margin", pa.float64()),            # IQA reward gap winner - loser
    ("source", pa.string()),             # iqa | human | both
    ("hallucination", pa.bool_()),
    ("feedback_source", pa.string()),
    ("preferences_ref", pa.string()),    # the pinned preferences version the row came from
    ("lq_pairs_ref", pa.string()),
    ("sr_candidates_ref", pa.string()),
])
"""`pull --format pickapic`: Pick-a-Pic v2 columns (`jpg_0`, `jpg_1`, `label_0`, `label_1`,
`caption`) plus DSPO's extras (LQ input, instance mask, ids, weight, margin, lineage refs)."""


def _png(cell: dict) -> bytes:
    """PNG bytes of an image cell, re-encoded losslessly when the store holds another format."""
    data = cell["bytes"]
    return data if data.startswith(PNG_SIGNATURE) else encode_png(decode_image(cell))


def pickapic_batches(store: DatasetStore, ref: str, batch_size: int = 64) -> Iterator[tuple[pa.Table, int]]:
    """(table in the PICKAPIC schema, ties dropped from this batch) for each batch of `ref`."""
    pinned = store.resolve(ref)
    lineage = {name: lineage_ref(store, pinned, name) for name in SOURCES}
    for table in preferences_with_images(store, pinned, batch_size=batch_size):
        rows = table.to_pylist()
        kept = [row for row in rows
                if row["winner_id"] != row["loser_id"] and row["winner"]["bytes"] != row["loser"]["bytes"]]
        columns = {
            "jpg_0": [_png(row["winner"]) for row in kept],
            "jpg_1": [_png(row["loser"]) for row in kept],
            "label_0": [1.0] * len(kept),
            "label_1": [0.0] * len(kept),
            "caption": [row["positive_text"] for row in kept],
            "negative_caption": [row["negative_text"] for row in kept],
            "lq": [_png(row["lq"]) for row in kept],
            "hr": [_png(row["hr"]) for row in kept],
            "mask": [_png(row["mask_image"]) for row in kept],
            "preferences_ref": [pinned] * len(kept),
            "lq_pairs_ref": [lineage["lq_pairs"]] * len(kept),
            "sr_candidates_ref": [lineage["sr_candidates"]] * len(kept),
        }
        for name in PICKAPIC.names:
            if name not in columns:
                columns[name] = [row[name] for row in kept]
        yield pa.table(columns, schema=PICKAPIC), len(rows) - len(kept)


def to_pickapic(store: DatasetStore, ref: str, to: str) -> dict:
    """Write `ref` as Pick-a-Pic Parquet files into the folder `to` (absent or empty) plus
    manifest.json (the source manifest and a `pickapic` block); returns that block:
    {"folder", "rows", "dropped_ties", "columns"}."""
    if os.path.isdir(to) and os.listdir(to):
        raise StoreError(f"cannot pull {ref} into {to}: the folder is not empty")
    pinned = store.resolve(ref)
    os.makedirs(to, exist_ok=True)
    rows = dropped = 0
    for index, (table, ties) in enumerate(pickapic_batches(store, pinned)):
        dropped += ties
        if table.num_rows:
            pq.write_table(table, os.path.join(to, f"train-{index:05d}.parquet"), row_group_size=64)
            rows += table.num_rows
    if rows == 0:
        raise StoreError(f"{pinned} has no pair with two different candidates ({dropped} ties dropped); "
                         "nothing to write in the Pick-a-Pic format")
    report = {"folder": to, "rows": rows, "dropped_ties": dropped, "columns": PICKAPIC.names}
    with open(os.path.join(to, "manifest.json"), "w", encoding="utf-8") as handle:
        json.dump({**store.manifest(pinned), "pickapic": report}, handle, indent=1)
    return report
