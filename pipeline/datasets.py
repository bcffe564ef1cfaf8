"""Reading the pipeline's own datasets: the lookups every stage, preview and export shares.

    lq_ref = lineage_ref(store, "preferences@v3", "lq_pairs")      # "lq_pairs@v2", the version it came from
    rows = rows_by_sample(store, lq_ref, ["sample_id", "hr"], ids)  # {sample_id: [row, ...]}
    hr = rgb_array(rows[ids[0]][0]["hr"])                           # uint8 (H, W, 3)
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import numpy as np
import pyarrow.compute as pc

from storage import DatasetStore, decode_image


def rgb_array(cell: dict) -> np.ndarray:
    """An image cell (HF `Image` struct) as a uint8 (H, W, 3) RGB array."""
    return np.asarray(decode_image(cell).convert("RGB"))


def lineage_ref(store: DatasetStore, ref: str, name: str) -> str | None:
    """The version of dataset `name` that `ref` was made from (`ref` itself when it is one),
    following manifest inputs breadth-first; None when `name` is not in its lineage."""
    if store.resolve(ref).partition("@")[0] == name:
        return store.resolve(ref)
    queue, seen = deque([ref]), set()
    while queue:
        current = queue.popleft()
        if current in seen:
            continue
        seen.add(current)
        for parent in store.manifest(current).get("inputs", []):
            if parent.partition("@")[0] == name:
                return parent
            queue.append(parent)
    return None


def rows_by_sample(store: DatasetStore, ref: str, columns: list[str], sample_ids: Iterable[str]
                   ) -> dict[str, list[dict]]:
    """The rows of `ref` whose `sample_id` is in `sample_ids` (only their row groups are read),
    grouped by sample id in stored order; `columns` must include "sample_id"."""
    table = store.read_where_in(ref, "sample_id", list(sample_ids), columns=columns)
    grouped: dict[str, list[dict]] = {}
    for row in table.to_pylist():
        grouped.setdefault(row["sample_id"], []).append(row)
    return grouped


def ids_in_splits(store: DatasetStore, ref: str, id_column: str, splits: list[str]) -> list[str]:
    """The `id_column` values of `ref`'s rows whose `split` is one of `splits`, in stored order."""
    table = store.read_arrow(ref, columns=[id_column], filter=pc.field("split").isin(splits))
    return table.column(id_column).to_pylist()
