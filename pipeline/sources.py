"""Where ingest finds images: a local folder, an s3:// prefix, a Parquet / Hugging Face dataset
folder, or `demo:` (photos that ship inside installed packages, for offline demos).

Each source lists `SourceItem`s in a stable order; an item's `identity` (size, mtime or
etag) feeds the ingest fingerprint, so changed files make a new version.
"""
from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from importlib import util as importlib_util
from pathlib import Path
from typing import Callable

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


def _table_items(root: Path) -> list[SourceItem]:
    """Rows of Parquet files (or a `save_to_disk` folder's Arrow files) with an image column;
    an item is named by the image's own `path` when it has one, else `<file>#<row>`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from storage import IMAGE_TYPE

    def read(file: Path) -> "pa.Table":
        if file.suffix == ".arrow":  # `datasets.save_to_disk` writes the Arrow streaming format
            with pa.memory_map(str(file)) as source:
                return pa.ipc.open_stream(source).read_all()
        return pq.read_table(file)

    items = []
    for file in sorted(root.glob("*.arrow")) or sorted(root.glob("*.parquet")):
        table = read(file)
        columns = [field.name for field in table.schema if field.type == IMAGE_TYPE]
        if not columns:
            raise ValueError(f"ingest source {file}: no image column ({{bytes, path}} struct)")
        for index, cell in enumerate(table.column(columns[0]).to_pylist()):
            data = (cell or {}).get("bytes") or b""
            name = (cell or {}).get("path") or f"{file.name}#{index}"
            items.append(SourceItem(name, f"{len(data)}:{hashlib.sha256(data).hexdigest()[:16]}", lambda d=data: d))
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
