"""Where ingest finds images: a local folder, an s3:// prefix, a Parquet / Hugging Face dataset
folder, or `demo:` (photos that ship inside installed packages, for offline demos).

A source lists everything it finds (`SourceListing`), in a stable order, so that ingest can
account for each entry: `SourceItem`s to decode, and `Skipped` entries with the reason they
are not read. The rules:

- Folders and s3:// prefixes: a file is an item when its extension is in IMAGE_SUFFIXES
  (case-insensitive); any other file is skipped ("not an image extension (.txt)", "no file
  extension"). Hidden files (name starting with ".") are skipped, and a hidden folder is one
  skipped entry with its file count. Symlinks to files and folders are followed; a symlink
  loop, a broken symlink, something not a regular file (FIFO, socket, device) and an
  unreadable folder are skipped, each with its reason.
- Table sources: every row of every Parquet / Arrow file below the folder is an item, named
  by the image's own `path` (made unique with "(<file>#<row>)" when a path repeats), else
  `<file>#<row>`. Table metadata (dataset_info.json, ...), other files, and data files
  without an image column or that cannot be read are skipped.

An item's `identity` (size, mtime or etag) feeds the ingest fingerprint, so changed files
make a new version.
"""
from __future__ import annotations

import collections
import errno
import functools
import io
import itertools
import os
import stat
import threading
from dataclasses import dataclass
from importlib import util as importlib_util
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from storage import IMAGE_TYPE

# Formats this pipeline takes as images. Those this Pillow has no decoder for (HEIC/HEIF and
# JPEG XL without a plugin) are still items: ingest quarantines them with "no decoder".
IMAGE_SUFFIXES = {".png", ".apng", ".jpg", ".jpeg", ".jpe", ".jfif", ".mpo", ".bmp", ".tif", ".tiff", ".webp",
                  ".gif", ".ppm", ".pgm", ".pbm", ".pnm", ".avif", ".heic", ".heif", ".jxl", ".jp2", ".j2k",
                  ".qoi", ".tga"}
TABLE_SUFFIXES = {".parquet", ".arrow"}
# Files a table folder holds besides its data (written by `datasets.save_to_disk` and `dspo pull`).
TABLE_METADATA_FILES = {"dataset_info.json", "state.json", "dataset_dict.json", "manifest.json"}
DEMO_SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")


@dataclass(frozen=True)
class SourceItem:
    """One image to ingest: `name` (shown in errors and stored as `source`), `identity`
    (changes when the content may have), and `read` returning the encoded bytes."""

    name: str
    identity: str
    read: Callable[[], bytes]


@dataclass(frozen=True)
class Skipped:
    """An entry of the source that is not read: `name` (a folder's ends with "/") and `reason`."""

    name: str
    reason: str


@dataclass(frozen=True)
class SourceListing:
    """Everything a source holds, in its stable order: items and skipped entries."""

    entries: list[SourceItem | Skipped]

    @property
    def items(self) -> list[SourceItem]:
        return [entry for entry in self.entries if isinstance(entry, SourceItem)]


class MissingImageBytes(OSError):
    """A table row whose image cell holds no bytes."""


def _extension_reason(name: str) -> str | None:
    """Why a file named `name` is not an image item, or None when it is one."""
    if PurePosixPath(name).name.startswith("."):
        return "hidden file"
    suffix = PurePosixPath(name).suffix.lower()
    if not suffix:
        return "no file extension"
    return None if suffix in IMAGE_SUFFIXES else f"not an image extension ({suffix})"


def _stat_reason(error: OSError, is_link: bool) -> str:
    if error.errno == errno.ELOOP:
        return "symlink loop"
    if is_link and error.errno == errno.ENOENT:
        return "broken symlink (its target is missing)"
    return f"unreadable: {error.strerror or error}"


def _hidden_folder(name: str, path: str) -> Skipped:
    count = sum(len(files) for _, _, files in os.walk(path))
    return Skipped(f"{name}/", f"hidden folder: its {count} files not read")


def _walk(root: Path) -> Iterator[tuple[str, Path, os.stat_result] | Skipped]:
    """Regular files below `root` as (name relative to root, path, stat), and Skipped entries
    (hidden, symlink loops, ...), depth first in name order (the order of sorted path components)."""

    def visit(folder: Path, prefix: str, enclosing: frozenset[str]):
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError as exc:
            yield Skipped(prefix or "./", f"unreadable folder: {exc.strerror or exc}")
            return
        for entry in entries:
            name = prefix + entry.name
            if entry.name.startswith("."):
                yield (_hidden_folder(name, entry.path) if entry.is_dir(follow_symlinks=False)
                       else Skipped(name, "hidden file"))
                continue
            try:
                info = os.stat(entry.path)
            except OSError as exc:
                yield Skipped(name, _stat_reason(exc, entry.is_symlink()))
                continue
            if stat.S_ISDIR(info.st_mode):
                real = os.path.realpath(entry.path)
                if real in enclosing:
                    yield Skipped(f"{name}/", "symlink loop (points back to an enclosing folder)")
                else:
                    yield from visit(Path(entry.path), f"{name}/", enclosing | {real})
            elif stat.S_ISREG(info.st_mode):
                yield name, Path(entry.path), info
            else:
                yield Skipped(name, "not a regular file (FIFO, socket or device)")

    yield from visit(root, "", frozenset({os.path.realpath(root)}))


def _local_listing(root: Path) -> SourceListing:
    if not root.is_dir():
        raise FileNotFoundError(f"ingest source {root} is not a folder")
    entries: list[SourceItem | Skipped] = []
    for found in _walk(root):
        if isinstance(found, Skipped):
            entries.append(found)
            continue
        name, path, info = found
        reason = _extension_reason(name)
        entries.append(Skipped(name, reason) if reason else
                       SourceItem(name, f"{info.st_size}:{info.st_mtime_ns}", path.read_bytes))
    return SourceListing(entries)


def _is_folder_marker(path: str, info: dict) -> bool:
    """A directory entry, or the empty "name/" object consoles create for a folder: not a file."""
    return info.get("type") == "directory" or (path.endswith("/") and not info.get("size"))


def _s3_listing(uri: str) -> SourceListing:
    import fsspec

    fs, root = fsspec.core.url_to_fs(uri)
    objects = [(path[len(root):].lstrip("/"), path, info) for path, info in sorted(fs.find(root, detail=True).items())
               if not _is_folder_marker(path, info)]

    def hidden_folder(name: str) -> str | None:
        parts = name.split("/")
        hidden_at = next((index for index, part in enumerate(parts[:-1]) if part.startswith(".")), None)
        return None if hidden_at is None else "/".join(parts[:hidden_at + 1]) + "/"

    hidden_counts = collections.Counter(folder for name, _, _ in objects if (folder := hidden_folder(name)))
    entries: list[SourceItem | Skipped] = []
    for name, path, info in objects:
        folder = hidden_folder(name)
        if folder:
            count = hidden_counts.pop(folder, None)
            if count is not None:  # the folder's first object stands for all of them
                entries.append(Skipped(folder, f"hidden folder: its {count} files not read"))
            continue
        reason = _extension_reason(name)
        identity = f"{info.get('size')}:{info.get('ETag') or info.get('etag') or info.get('LastModified')}"
        entries.append(Skipped(name, reason) if reason else
                       SourceItem(name, identity, lambda p=path: fs.cat_file(p)))
    return SourceListing(entries)


class _TableFile:
    """One Parquet file, or Arrow stream file (what `datasets.save_to_disk` writes), of a table
    source, read a row group / record batch at a time so that a large source is never held
    in memory. The chunk last read is kept (items are read in order, a shard at a time).
    `column` is the image column's name, None when the file has none."""

    def __init__(self, file: Path, name: str):
        self.file, self.name = file, name
        self._lock = threading.Lock()
        self._cached: tuple[int, list] | None = None
        self.column = next((field.name for field in self._schema() if field.type == IMAGE_TYPE), None)

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

    def image_bytes(self, chunk_index: int, row: int, position: int) -> bytes:
        """The image bytes of `row` of chunk `chunk_index` (row `position` of the file);
        MissingImageBytes when the cell holds none."""
        with self._lock:
            if self._cached is None or self._cached[0] != chunk_index:
                chunk = next(itertools.islice(self._chunks([self.column]), chunk_index, None))
                self._cached = (chunk_index, chunk.field("bytes").to_pylist())
            data = self._cached[1][row]
        if data is None:
            raise MissingImageBytes(f"row {position} of {self.name} has no image bytes (a null cell, or only a path)")
        return data


def _table_rows(table_file: _TableFile, info: os.stat_result, taken: set[str]) -> Iterator[SourceItem]:
    position = 0
    for chunk_index, paths in table_file.image_paths():
        for offset, path in enumerate(paths):
            where = f"{table_file.name}#{position}"
            name = where if not path else path if path not in taken else f"{path} ({where})"
            taken.add(name)
            read = functools.partial(table_file.image_bytes, chunk_index, offset, position)
            yield SourceItem(name, f"{info.st_size}:{info.st_mtime_ns}#{position}", read)
            position += 1


def _table_listing(root: Path) -> SourceListing:
    """Rows of the Parquet / Arrow files below `root` (see the module docstring); an item's
    identity is its file's size and mtime with its position (listing reads no image bytes)."""
    entries: list[SourceItem | Skipped] = []
    taken: set[str] = set()
    without_image_column = False
    for found in _walk(root):
        if isinstance(found, Skipped):
            entries.append(found)
            continue
        name, path, info = found
        if path.name in TABLE_METADATA_FILES:
            entries.append(Skipped(name, "table metadata"))
        elif path.suffix.lower() not in TABLE_SUFFIXES:
            entries.append(Skipped(name, f"not a table data file ({path.suffix.lower() or 'no extension'})"))
        else:
            try:
                table_file = _TableFile(path, name)
                if table_file.column is None:
                    without_image_column = True
                    entries.append(Skipped(name, "table file without an image column ({bytes, path} struct): "
                                                 "its rows not read"))
                    continue
                rows = list(_table_rows(table_file, info, taken))
                entries.extend(rows)
            except (OSError, pa.ArrowException) as exc:  # Arrow's message names the file by its local path
                entries.append(Skipped(name, f"unreadable table file: {str(exc).replace(str(path), name)}"))
    listing = SourceListing(entries)
    if without_image_column and not listing.items:
        raise ValueError(f"ingest source {root}: no table file has an image column ({{bytes, path}} struct)")
    return listing


def _demo_listing() -> SourceListing:
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

    entries: list[SourceItem | Skipped] = [
        SourceItem(f"skimage/{name}", f"skimage-{skimage.__version__}", png_of(getattr(skdata, name)))
        for name in DEMO_SKIMAGE_PHOTOS]
    spec = importlib_util.find_spec("pyiqa")
    if spec and spec.submodule_search_locations:
        ref_dir = Path(list(spec.submodule_search_locations)[0]).parent / "ResultsCalibra" / "ref_dir"
        if ref_dir.is_dir():
            entries += [SourceItem(f"pyiqa/{entry.name}", entry.identity, entry.read)
                        if isinstance(entry, SourceItem) else Skipped(f"pyiqa/{entry.name}", entry.reason)
                        for entry in _local_listing(ref_dir).entries]
    return SourceListing(entries)


def _is_table_folder(root: Path) -> bool:
    """Whether a local source folder is read as a table source (Parquet files or a saved HF dataset)."""
    return root.is_dir() and (any(root.glob("*.parquet")) or (root / "dataset_info.json").exists()
                              or (root / "dataset_dict.json").exists())


def list_source(source: str) -> SourceListing:
    """Everything an ingest source holds (see the module docstring for the forms and rules)."""
    if source == "demo:":
        return _demo_listing()
    if source.startswith("s3://"):
        return _s3_listing(source)
    root = Path(source[len("file://"):] if source.startswith("file://") else os.path.expanduser(source))
    return _table_listing(root) if _is_table_folder(root) else _local_listing(root)
