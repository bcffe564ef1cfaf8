"""Writes a stream of record batches as immutable Parquet part files.

Parts stream to their file as row groups are encoded, hashed on the way, so a checksum
costs no second pass. On backends that buffer parts (S3) a part is built in memory
(bounded by `max_part_bytes`) and uploaded in one retryable request. A part cut short by
a crash is harmless: only files a manifest lists are ever read, and `gc` removes orphans.
Image byte columns are stored uncompressed (PNG does not compress further) and without
dictionary encoding; every other leaf column is zstd-compressed.
"""
from __future__ import annotations

import hashlib
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from storage.backends import Backend
from storage.errors import SchemaMismatchError, StoreError
from storage.images import image_columns, image_features

IMAGE_ROW_GROUP_ROWS = 64
#: Image row groups also end at this many bytes: a reader holds one row group at a time, so
#: this bounds a stage's memory whatever the image size (64 full-size photos are ~30 MB+).
IMAGE_ROW_GROUP_BYTES = 8 * 1024 * 1024
PLAIN_ROW_GROUP_ROWS = 64 * 1024
#: Folder of a dataset holding one marker per publish in progress (`<name>/_txns/<txn>`): gc spares its parts.
TXN_FOLDER = "_txns"


def part_key(folder: str, index: int, txn: str) -> str:
    return f"{folder}/part-{index:05d}-{txn}.parquet"


def txn_of_part(key: str) -> str | None:
    """The txn id in a part's key (`.../part-00003-<txn>.parquet`, or a temp file of it), else None."""
    filename = key.rsplit("/", 1)[-1]
    if not filename.startswith("part-"):
        return None
    pieces = filename.split(".", 1)[0].split("-")
    return pieces[2] if len(pieces) == 3 else None


def as_batches(data: "pa.Table | pa.RecordBatch | Iterable[pa.RecordBatch | pa.Table]") -> Iterator[pa.RecordBatch]:
    if isinstance(data, pa.Table):
        yield from data.to_batches()
    elif isinstance(data, pa.RecordBatch):
        yield data
    else:
        for item in data:
            if isinstance(item, pa.Table):
                yield from item.to_batches()
            elif isinstance(item, pa.RecordBatch):
                yield item
            else:
                raise TypeError(f"publish takes pyarrow Tables or RecordBatches, got {type(item).__name__}")


def _leaf_paths(schema: pa.Schema) -> list[str]:
    sink = pa.BufferOutputStream()
    pq.write_table(schema.empty_table(), sink)
    parquet_schema = pq.ParquetFile(pa.BufferReader(sink.getvalue())).schema
    return [parquet_schema.column(i).path for i in range(len(parquet_schema))]


def storage_schema(schema: pa.Schema) -> pa.Schema:
    """The schema as stored: image struct columns carry the Hugging Face `Image` metadata."""
    images = image_columns(schema)
    if images and b"huggingface" not in (schema.metadata or {}):
        return image_features(schema, images)
    return schema


class PartWriter:
    """Writes one publish's data files under `folder` and returns their manifest entries.

    Arguments:
        backend:        where the files go.
        folder:         key prefix of the parts, e.g. "preferences/v=0003".
        txn:            the publish's unique id, part of every file name.
        dataset:        dataset name, for error messages.
        row_group_rows: rows per Parquet row group; default 64 for tables with image columns
                        (so a reader fetches few images at a time), 65536 otherwise.
        row_group_bytes: a row group of a table with image columns also ends once its
                        uncompressed Arrow size would pass this (default 8 MiB; at least
                        one row per group); tables without images are bounded by rows only.
        max_part_bytes: a new part file starts once the current one reaches this size.
    """

    def __init__(self, backend: Backend, folder: str, txn: str, dataset: str,
                 row_group_rows: int | None = None, max_part_bytes: int = 256 * 1024 * 1024,
                 row_group_bytes: int = IMAGE_ROW_GROUP_BYTES):
        self.backend = backend
        self.folder = folder
        self.txn = txn
        self.dataset = dataset
        self.row_group_rows = row_group_rows
        self.row_group_bytes = row_group_bytes
        self.max_part_bytes = max_part_bytes
        self.files: list[dict] = []
        self.schema: pa.Schema | None = None

    def write(self, batches: Iterable[pa.RecordBatch], schema: pa.Schema | None = None) -> list[dict]:
        """Write every batch; returns [{path, rows, bytes, sha256}] with paths relative to the dataset."""
        pending: list[pa.RecordBatch] = []
        pending_rows = pending_bytes = 0
        part = None
        for batch in batches:
            if self.schema is None:
                self._start(batch.schema)
            elif not batch.schema.equals(self.schema, check_metadata=False):
                raise SchemaMismatchError(
                    f"publish of {self.dataset!r}: batch schema {batch.schema.to_string(show_schema_metadata=False)} "
                    f"differs from the first batch's {self.schema.to_string(show_schema_metadata=False)}"
                )
            pending.append(batch)
            pending_rows += batch.num_rows
            pending_bytes += batch.nbytes
            while rows := self._full_group_rows(pending_rows, pending_bytes):
                table = pa.Table.from_batches(pending, schema=self.schema)
                head, rest = table.slice(0, rows), table.slice(rows)
                part = self._write_group(part, head)
                pending, pending_rows, pending_bytes = rest.to_batches(), rest.num_rows, rest.nbytes
        if self.schema is None:
            if schema is None:
                raise StoreError(f"publish of {self.dataset!r} got no rows and no schema; "
                                 "pass schema= to publish an empty dataset")
            self._start(schema)
        if pending_rows or (part is None and not self.files):
            part = self._write_group(part, pa.Table.from_batches(pending, schema=self.schema))
        self._finish_part(part)
        return self.files

    def _full_group_rows(self, rows: int, nbytes: int) -> int:
        """Rows of the next row group to write now, or 0 while the pending rows fill less than one."""
        if self._byte_bounded and rows and nbytes >= self.row_group_bytes:
            # Rows are cut by their average size: exact per-row sizes would cost a pass over the offsets.
            return max(1, min(rows, self.row_group_rows, rows * self.row_group_bytes // nbytes))
        return self.row_group_rows if rows >= self.row_group_rows else 0

    def _start(self, schema: pa.Schema) -> None:
        self.schema = storage_schema(schema)
        images = image_columns(self.schema)
        if self.row_group_rows is None:
            self.row_group_rows = IMAGE_ROW_GROUP_ROWS if images else PLAIN_ROW_GROUP_ROWS
        self._byte_bounded = bool(images)
        raw_paths = {f"{column}.bytes" for column in images}
        leaves = _leaf_paths(self.schema)
        self._compression = {path: ("NONE" if path in raw_paths else "ZSTD") for path in leaves}
        self._dictionary = [path for path in leaves if path not in raw_paths]

    def _open_part(self) -> "_Part":
        key = part_key(self.folder, len(self.files), self.txn)
        target = (pa.BufferOutputStream() if self.backend.buffers_parts
                  else self.backend.arrow_fs.open_output_stream(self.backend.data_path(key)))
        sink = _HashingSink(target)
        writer = pq.ParquetWriter(sink, self.schema, compression=self._compression, use_dictionary=self._dictionary)
        return _Part(key, writer, sink)

    def _write_group(self, part: "_Part | None", table: pa.Table) -> "_Part | None":
        if part is None:
            part = self._open_part()
        part.writer.write_table(table, row_group_size=self.row_group_rows)
        part.rows += table.num_rows
        if part.sink.size >= self.max_part_bytes:
            self._finish_part(part)
            return None
        return part

    def _finish_part(self, part: "_Part | None") -> None:
        if part is None:
            return
        part.writer.close()
        if self.backend.buffers_parts:
            self.backend.write_file(part.key, part.sink.target.getvalue())
        else:
            part.sink.target.close()
        self.files.append({
            "path": part.key.split("/", 1)[1],
            "rows": part.rows,
            "bytes": part.sink.size,
            "sha256": part.sink.sha256.hexdigest(),
        })


class _HashingSink:
    """A write-only file for ParquetWriter that forwards bytes to `target` while keeping a
    running sha256 and size, so a part's checksum costs no second pass over its bytes."""

    def __init__(self, target):
        self.target = target
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data) -> int:
        self.sha256.update(data)
        self.target.write(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.target.flush()

    def close(self) -> None:
        self.closed = True


class _Part:
    """The part file being written: its key, Parquet writer, sink and row count."""

    def __init__(self, key: str, writer: pq.ParquetWriter, sink: _HashingSink):
        self.key, self.writer, self.sink, self.rows = key, writer, sink, 0
