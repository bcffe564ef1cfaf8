"""Scratch tables: unversioned, overwritable Arrow tables under `<root>/_scratch/<namespace>/`.

Producers stage partial results here (e.g. one table per shard of a long job, keyed by
the job's fingerprint) so a rerun after a crash finds the finished pieces. Nothing in
scratch is a dataset: readers of datasets never see it, and `gc` leaves it alone until
it is older than its own (longer) threshold.
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from storage.backends import Backend
from storage.refs import validate_name

SCRATCH_FOLDER = "_scratch"


class Scratch:
    """Tables by name inside one scratch namespace.

    Arguments:
        backend:   the store's backend.
        namespace: a folder name (a valid dataset-style name), e.g. a job fingerprint.
    """

    def __init__(self, backend: Backend, namespace: str):
        self.backend = backend
        self.prefix = f"{SCRATCH_FOLDER}/{validate_name(namespace, kind='scratch namespace')}"

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{validate_name(name, kind='scratch table name')}.parquet"

    def put(self, name: str, table: pa.Table) -> None:
        """Write (or overwrite) a table in one request."""
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        self.backend.write_file(self._key(name), sink.getvalue())

    def get(self, name: str) -> pa.Table | None:
        """The table, or None if it is absent or unreadable (a write cut short counts as absent)."""
        key = self._key(name)
        if not any(info.key == key for info in self.backend.list(self.prefix)):
            return None
        try:
            # Single-threaded: Arrow's reader threads leave per-thread malloc arenas that grow the
            # process's memory read after read (measured); a shard is too small to gain from them.
            return pq.read_table(pa.BufferReader(self.backend.read_file(key)), use_threads=False)
        except (pa.ArrowInvalid, OSError):
            return None

    def names(self) -> list[str]:
        """Names of the tables present."""
        return sorted(info.key.rsplit("/", 1)[-1][: -len(".parquet")]
                      for info in self.backend.list(self.prefix) if info.key.endswith(".parquet"))

    def clear(self) -> None:
        for info in self.backend.list(self.prefix):
            self.backend.delete(info.key)
