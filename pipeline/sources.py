"""Where ingest finds images: a local folder, an s3:// prefix, a Parquet / Hugging Face dataset
folder, or `demo:` (photos that ship inside installed packages, for offline demos).

Each source lists `SourceItem`s in a stable order; an item's `identity` (size, mtime or
etag) feeds the ingest fingerprint, so changed files make a new version.
"""
from __future__ import annotations

import functools
import io
import itertools
import os
import threading
from dataclasses import dataclass
from importlib import util as importlib_util
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from storage import IMAGE_TYPE

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}
DEMO_SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")


@dataclass(frozen=True)
class SourceItem:
    """One image to ingest: `name` (shown in errors and stored as `source`), `identity`
    (changes when the content may have), and `read` returning the encoded bytes."""

    name: str
    identity: str
    read: Callable[[], bytes]


def _local_items(root: Path) -> list[SourceItem]:
    if not root.is_dir():
        raise FileNotFoundError(f"ingest source {root} is not a folder")
    items = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        stat = path.stat()
        items.append(SourceItem(str(path.relative_to(root)), f"{stat.st_size}:{stat.st_mtime_ns}", path.read_bytes))
    return items


def _s3_items(uri: str) -> list[SourceItem]:
    import fsspec

    fs, root = fsspec.core.url_to_fs(uri)
    items = []
    for path, info in sorted(fs.find(root, detail=True).items()):
        if Path(path).suffix.lower() in IMAGE_SUFFIXES:
            identity = f"{info.get('size')}:{info.get('ETag') or info.get('etag') or info.get('LastModified')}"
            items.append(SourceItem(path[len(root):].lstrip("/"), identity, lambda p=path: fs.cat_file(p)))
    return items


class _TableFile:
    """One Parquet file, or Arrow stream file (what `datasets.save_to_disk` writes), of a table
    source, read a row group / record batch at a time so that a large source is never held
    in memory. The chunk last read is kept (items are read in order, a shard at a time)."""

    def __init__(self, file: Path):
        self.file = file
        self._lock = threading.Lock()
        self._cached: tuple[int, list] | None = None
        self.column = next((field.name for field in self._schema() if field.type == IMAGE_TYPE), None)
        if self.column is None:
            raise ValueError(f"ingest source {file}: no image column ({{bytes, path}} struct)")

    def _schema(self) -> pa.Schema:
        if self.file.suffix == ".arrow":
            with pa.memory_map(str(self.file)) as source:
                return pa.ipc.open_stream(source).schema
        return pq.ParquetFile(self.file).schema_arrow

    def _chunks(self, columns: list[str]) -> Iterator[pa.StructArray]:
        """The image column (restricted to `columns`' subfields) chunk by chunk."""
        if self.file.suffix == ".arrow":
            with pa.memory_map(str(self.file)) as source:
                for batch in pa.ipc.open_stream(source):
                    yield batch.column(self.column)
        else:
            parquet = pq.ParquetFile(self.file)
            for index in range(parquet.num_row_groups):
                yield parquet.read_row_group(index, columns=columns).column(self.column).combine_chunks()

    def image_paths(self) -> Iterator[tuple[int, list[str | None]]]:
        """(chunk index, the `path` of each image in it); reads no image bytes from Parquet."""
        for index, chunk in enumerate(self._chunks([f"{self.column}.path"])):
            yield index, chunk.field("path").to_pylist()

    def image_bytes(self, chunk_index: int, row: int) -> bytes:
        with self._lock:
            if self._cached is None or self._cached[0] != chunk_index:
                chunk = next(itertools.islice(self._chunks([self.column]), chunk_index, None))
                self._cached = (chunk_index, chunk.field("bytes").to_pylist())
            return self._cached[1][row] or b""


def _table_items(root: Path) -> list[SourceItem]:
    """Rows of Parquet files (or a `save_to_disk` folder's Arrow files) with an image column;
    an item is named by the image's own `path` when it has one, else `<file>#<row>`. An
    item's identity is its file's size and mtime with its position (listing reads no image bytes)."""
    items = []
    for file in sorted(root.glob("*.arrow")) or sorted(root.glob("*.parquet")):
        table_file = _TableFile(file)
        stat = file.stat()
        row = 0
        for chunk_index, paths in table_file.image_paths():
            for offset, path in enumerate(paths):
                identity = f"{stat.st_size}:{stat.st_mtime_ns}#{row}"
                read = functools.partial(table_file.image_bytes, chunk_index, offset)
                items.append(SourceItem(path or f"{file.name}#{row}", identity, read))
                row += 1
    return items


def _demo_items() -> list[SourceItem]:
    import numpy as np
    import skimage
    from PIL import Image
    from skimage import data as skdata

    def png_of(loader: Callable[[], "np.ndarray"]) -> Callable[[], bytes]:
        def read() -> bytes:
            buffer = io.BytesIO()
            Image.fromarray(loader()).save(buffer, format="PNG")
            return buffer.getvalue()
        return read

    items = [SourceItem(f"skimage/{name}", f"skimage-{skimage.__version__}", png_of(getattr(skdata, name)))
             for name in DEMO_SKIMAGE_PHOTOS]
    spec = importlib_util.find_spec("pyiqa")
    if spec and spec.submodule_search_locations:
        ref_dir = Path(list(spec.submodule_search_locations)[0]).parent / "ResultsCalibra" / "ref_dir"
        if ref_dir.is_dir():
            items += [SourceItem(f"pyiqa/{item.name}", item.identity, item.read) for item in _local_items(ref_dir)]
    return items


def list_source(source: str) -> list[SourceItem]:
    """The items of an ingest source (see the module docstring for the forms)."""
    if source == "demo:":
        return _demo_items()
    if source.startswith("s3://"):
        return _s3_items(source)
    root = Path(source[len("file://"):] if source.startswith("file://") else os.path.expanduser(source))
    if root.is_dir() and (any(root.glob("*.parquet")) or (root / "dataset_info.json").exists()):
        return _table_items(root)
    return _local_items(root)
