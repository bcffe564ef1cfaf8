"""Preferences with their images: the LQ input, HR crop, winner and loser candidates and the
instance mask, joined from the exact dataset versions in the preferences manifest's lineage.

    for table in preferences_with_images(store, "preferences@v3"): ...
    pull_with_images(store, "preferences@v3", "out/", format="hf")   # datasets.load_from_disk("out/")

Streams in batches, so memory stays bounded by one batch of rows and their images.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dspo_core.segment import rle
from pipeline.datasets import lineage_ref, rows_by_sample
from storage import DatasetStore, StoreError, image_array
from storage.images import IMAGE_TYPE, image_features

IMAGE_COLUMNS = ("lq", "hr", "winner", "loser", "mask_image")
SOURCES = ("lq_pairs", "sr_candidates")    # where the images are
PAIR_COLUMNS = ("sample_id", "winner_id", "loser_id", "mask")   # what names them


def _sources(store: DatasetStore, ref: str) -> dict[str, str]:
    """{"lq_pairs": ref, "sr_candidates": ref}: the versions `ref` was made from; StoreError
    naming `ref` when it is not a preferences dataset (a source or a column is missing)."""
    pinned = store.resolve(ref)
    found = {name: lineage_ref(store, pinned, name) for name in SOURCES}
    missing = [name for name, source in found.items() if source is None]
    if missing:
        raise StoreError(f"{pinned} has no {' / '.join(missing)} in its lineage; "
                         "--with-images (or --format pickapic) needs a preferences dataset")
    present = {column["name"] for column in store.manifest(pinned)["schema"]}
    columns = [column for column in PAIR_COLUMNS if column not in present]
    if columns:
        raise StoreError(f"{pinned} has no column {', '.join(columns)}; "
                         "--with-images (or --format pickapic) needs a preferences dataset")
    return found


def preferences_with_images(store: DatasetStore, ref: str, batch_size: int = 64) -> Iterator[pa.Table]:
    """Batches of the preferences rows plus image columns lq, hr, winner, loser and mask_image
    (the instance mask as a black/white PNG)."""
    sources = _sources(store, ref)
    for batch in store.iter_batches(ref, batch_size=batch_size):
        table = pa.Table.from_batches([batch])
        lq_rows = rows_by_sample(store, sources["lq_pairs"], ["sample_id", "lq", "hr"],
                                 table.column("sample_id").unique().to_pylist())
        by_sample = {sample_id: rows[0] for sample_id, rows in lq_rows.items()}
        wanted = pc.unique(pa.concat_arrays([table.column("winner_id").combine_chunks(),
                                             table.column("loser_id").combine_chunks()]))
        candidates = store.read_where_in(sources["sr_candidates"], "candidate_id", wanted,
                                         columns=["candidate_id", "image"])
        images = dict(zip(candidates.column("candidate_id").to_pylist(), candidates.column("image").to_pylist()))
        sample_ids = table.column("sample_id").to_pylist()
        columns = {
            "lq": [by_sample[sample_id]["lq"] for sample_id in sample_ids],
            "hr": [by_sample[sample_id]["hr"] for sample_id in sample_ids],
            "winner": [images[cid] for cid in table.column("winner_id").to_pylist()],
            "loser": [images[cid] for cid in table.column("loser_id").to_pylist()],
        }
        for name, cells in columns.items():
            table = table.append_column(name, pa.array(cells, type=IMAGE_TYPE))
        masks = [rle.decode(cell).astype(np.uint8) * 255 for cell in table.column("mask").to_pylist()]
        table = table.append_column("mask_image", image_array(masks))
        yield table.replace_schema_metadata(image_features(table.schema, IMAGE_COLUMNS).metadata)


def pull_with_images(store: DatasetStore, ref: str, to: str, format: str = "parquet") -> str:
    """Write the preferences with images to the folder `to` (absent or empty): Parquet files
    (with Hugging Face Image metadata) or a saved HF dataset, plus the source manifest."""
    if format not in ("parquet", "hf"):
        raise StoreError(f"unknown pull format {format!r}; use parquet or hf")
    if os.path.isdir(to) and os.listdir(to):
        raise StoreError(f"cannot pull {ref} into {to}: the folder is not empty")
    pinned = store.resolve(ref)
    os.makedirs(to, exist_ok=True)
    with tempfile.TemporaryDirectory() as staging:
        parquet_dir = to if format == "parquet" else staging
        files = []
        for index, table in enumerate(preferences_with_images(store, pinned)):
            files.append(os.path.join(parquet_dir, f"part-{index:05d}.parquet"))
            pq.write_table(table, files[-1], row_group_size=64)
        if format == "hf":
            import datasets

            datasets.load_dataset("parquet", data_files=files, split="train",
                                  cache_dir=os.path.join(staging, "hf-cache")).save_to_disk(to)
    with open(os.path.join(to, "manifest.json"), "w", encoding="utf-8") as handle:
        json.dump({**store.manifest(pinned), "materialized_images": list(IMAGE_COLUMNS)}, handle, indent=1)
    return to
