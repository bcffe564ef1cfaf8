"""DatasetStore: named, immutable, versioned Arrow/Parquet datasets on file://, memory:// and s3://.

Layout under the store root:
    <name>/v=000N/part-*-<txn>.parquet   immutable data files
    <name>/_manifests/v=000N.json        commit record (see storage.manifest), created only if absent
    <name>/_latest                       hint of the newest version, advanced by compare-and-swap
    <name>/_tags/<tag>                   named versions ("vN")
    <name>/_txns/<txn>                   marker of a publish in progress (gc spares its parts)

Commit protocol: write the parts, then create the manifest with create-if-absent. A lost
race retries at the next version number; readers only ever open files a manifest lists,
so a crashed or losing writer leaves nothing visible (`gc` removes its orphans).
"""
from __future__ import annotations

import logging
import uuid
from typing import Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from storage import latest, retry
from storage.backends import Backend, open_backend
from storage.errors import (
    DatasetNotFoundError, InvalidNameError, StoreNotFoundError, TagExistsError,
    TagNotFoundError, VersionNotFoundError,
)
from storage.gc import TXN_TIMEOUT, collect_garbage
from storage.integrity import checked_dataset, verify_checksums
from storage.probe import require_conditional_writes
from storage.images import image_columns, image_features
from storage.manifest import (
    build_manifest, decode_manifest, decode_schema, encode_manifest, manifest_key, parse_manifest_key,
)
from storage.redact import redact, redact_url
from storage.scratch import Scratch
from storage.refs import LATEST, DatasetRef, format_ref, validate_name, validate_tag
from storage.writer import TXN_FOLDER, PartWriter, as_batches

log = logging.getLogger("storage")


def _parse(ref: "str | DatasetRef") -> DatasetRef:
    """DatasetRef.parse, its errors naming the whole ref as typed ("name@" is not just a bad tag '')."""
    try:
        return DatasetRef.parse(ref)
    except InvalidNameError as exc:
        if isinstance(ref, str) and repr(ref) not in str(exc):
            raise InvalidNameError(f"invalid dataset ref {ref!r} (name@vN, name@latest or name@<tag>): {exc}") from None
        raise


class DatasetStore:
    """A versioned dataset store rooted at one URI.

    Arguments:
        uri:             "s3://bucket/prefix", "file:///abs/path", a plain path, or "memory://name".
        storage_options: backend options; for s3: endpoint_url, region, key, secret, token,
                         max_attempts (defaults come from the AWS environment, e.g. AWS_ENDPOINT_URL).
        max_part_bytes:  size at which a publish starts a new Parquet part file.
    """

    def __init__(self, uri: str, storage_options: dict | None = None, *, max_part_bytes: int = 256 * 1024 * 1024):
        self.backend: Backend = open_backend(str(uri), storage_options)
        self.uri = redact_url(self.backend.uri)
        self.max_part_bytes = max_part_bytes
        self._manifests: dict[tuple[str, int], dict] = {}
        self._conditional_writes_checked = False
        self._verified: set[tuple[str, int]] = set()

    def __repr__(self) -> str:
        return f"DatasetStore({self.uri!r})"

    # ----------------------------------------------------------------- writing
    def publish(self, name: str, data: "pa.Table | pa.RecordBatch | Iterable[pa.RecordBatch]", *,
                inputs: Iterable[str] = (), fingerprint: str | None = None,
                metadata: "dict | Callable[[], dict] | None" = None,
                run_id: str | None = None, schema: pa.Schema | None = None,
                row_group_rows: int | None = None) -> str:
        """Publish `data` as the next version of `name`; returns the new ref, e.g. "preferences@v4".

        `inputs` are refs of datasets in this store; they are pinned (`@latest` -> `@vN`) and
        recorded as lineage. `schema` is needed only to publish an empty iterable. `metadata` may
        be a function, called once the data is written (for facts gathered while streaming).
        Image struct columns get the Hugging Face `Image` metadata automatically.
        """
        validate_name(name)
        pinned_inputs = [self.resolve(ref) for ref in inputs]
        self.check_conditional_writes()
        txn = uuid.uuid4().hex
        # Registered before the first part and removed after the commit: gc spares a live txn's parts.
        marker = f"{name}/{TXN_FOLDER}/{txn}"
        self.backend.create(marker, b"")
        try:
            version, manifest, files = self._write_and_commit(name, data, txn, pinned_inputs, fingerprint,
                                                              metadata, run_id, schema, row_group_rows)
        finally:
            self.backend.delete(marker)
        self._manifests[(name, version)] = manifest
        ref = format_ref(name, version)
        log.info("published %s: %d rows in %d files (%d bytes)", ref, manifest["rows"], len(files), manifest["bytes"])
        return ref

    def _write_and_commit(self, name, data, txn, pinned_inputs, fingerprint, metadata, run_id, schema,
                          row_group_rows) -> tuple[int, dict, list[dict]]:
        """Write the parts of txn `txn`, create its manifest at the first free version and move
        `_latest`; returns (version, manifest, file entries)."""
        # The hint may lag; a taken slot just moves the commit loop on, so no look-ahead here.
        hint, hint_token = latest.checked_hint(self, name)
        guess = hint + 1
        writer = PartWriter(self.backend, f"{name}/v={guess:04d}", txn, name,
                            row_group_rows=row_group_rows, max_part_bytes=self.max_part_bytes)
        files = writer.write(as_batches(data), schema=schema)
        metadata = redact((metadata() if callable(metadata) else metadata) or {})
        version = guess
        while True:
            manifest = build_manifest(
                name=name, version=version, files=files, schema=writer.schema, fingerprint=fingerprint,
                inputs=pinned_inputs, run_id=run_id, metadata=metadata, txn=txn,
            )
            if self.backend.create(manifest_key(name, version), encode_manifest(manifest)):
                break
            # A retried request may have created it for us: the txn tells.
            if self._load_manifest(name, version)["txn"] == txn:
                break
            version += 1
        latest.advance(self, name, version, (hint, hint_token))
        return version, manifest, files

    def check_conditional_writes(self) -> None:
        """Refuse a store whose service ignores create-if-absent or compare-and-swap (probed once)."""
        if not self._conditional_writes_checked:
            require_conditional_writes(self.backend, self.uri)
            self._conditional_writes_checked = True

    def tag(self, ref: str, tag: str, *, force: bool = False) -> str:
        """Name a version: `tag("preferences@v3", "paper-repro")`; returns the pinned ref.

        Tags do not move unless `force=True`.
        """
        pinned = DatasetRef.parse(self.resolve(ref))
        validate_tag(tag)
        self.check_conditional_writes()  # without create-if-absent a tag would silently move
        key = f"{pinned.name}/_tags/{tag}"
        value = f"v{pinned.version}".encode()
        while not self.backend.create(key, value):
            current = self.backend.get(key)
            if current is None:
                continue
            if current[0] == value:
                break
            if not force:
                raise TagExistsError(
                    f"tag {pinned.name}@{tag} already points at {current[0].decode()}; use force to move it")
            if self.backend.swap(key, value, current[1]):
                break
        return str(pinned)

    # ----------------------------------------------------------------- existence
    def exists(self) -> bool:
        """Whether the store is there: file:// its root folder exists; s3:// its bucket exists
        and answers (any prefix of it is a store, empty until the first publish); memory://
        something was written under its root in this process. Opening a store creates nothing;
        reads of one that is not there see no datasets. Raises MissingCredentialsError,
        StoragePermissionError or StorageUnavailableError when the service cannot tell."""
        return self.backend.missing_root() is None

    def require(self, *, publishing: bool = False) -> None:
        """Raise StoreNotFoundError naming the store and why it is not there, unless it exists
        or (`publishing`) a publish can create it: a folder can be created, a bucket cannot."""
        reason = self.backend.missing_root()
        if reason is not None and not (publishing and self.backend.creates_root):
            raise StoreNotFoundError(f"no dataset store at {self.uri} ({reason})")

    def _not_found(self, name: str) -> DatasetNotFoundError:
        """The error for a dataset without versions: StoreNotFoundError when the whole store is absent."""
        reason = self.backend.missing_root()
        if reason is not None:
            return StoreNotFoundError(f"no dataset store at {self.uri} ({reason}), so no dataset {name!r}")
        return DatasetNotFoundError(f"dataset {name!r} has no published version in {self.uri}")

    # ----------------------------------------------------------------- naming
    def datasets(self) -> list[str]:
        """Names of the datasets with at least one published version."""
        names = []
        for name in self.backend.children(""):
            if name.startswith("_") or not name[:1].isalnum():
                continue
            if self.versions(name):
                names.append(name)
        return names

    def versions(self, name: str) -> list[int]:
        """Published version numbers of `name`, ascending ([] if it has none)."""
        validate_name(name)
        found = (parse_manifest_key(info.key.rsplit("/", 1)[-1]) for info in self.backend.list(f"{name}/_manifests"))
        return sorted(version for version in found if version is not None)

    def latest_version(self, name: str) -> int:
        """Newest version number of `name`, 0 if none. Follows the `_latest` hint, checks past
        it, and falls back to the manifests when the hint names a version that has none."""
        return latest.checked_hint(self, name)[0]

    def tags(self, name: str) -> dict[str, str]:
        """{tag: pinned ref} for `name`."""
        validate_name(name)
        found = {}
        for info in self.backend.list(f"{name}/_tags"):
            tag = info.key.rsplit("/", 1)[-1]
            current = self.backend.get(info.key)
            if current is not None:
                found[tag] = f"{name}@{current[0].decode()}"
        return found

    def resolve(self, ref: "str | DatasetRef") -> str:
        """Pin a ref: "preferences@latest" -> "preferences@v2"; also checks that a pinned version exists."""
        parsed = _parse(ref)
        if parsed.version is not None:
            self.manifest(str(parsed))
            return str(parsed)
        if parsed.selector == LATEST:
            version = self.latest_version(parsed.name)
            if version == 0:
                raise self._not_found(parsed.name)
            return format_ref(parsed.name, version)
        current = self.backend.get(f"{parsed.name}/_tags/{parsed.selector}")
        if current is None:
            if not self.versions(parsed.name):
                raise self._not_found(parsed.name)
            known = sorted(self.tags(parsed.name))
            raise TagNotFoundError(f"no tag {parsed.selector!r} for dataset {parsed.name!r} in {self.uri} "
                                   f"(tags: {', '.join(known) or 'none'})")
        return f"{parsed.name}@{current[0].decode()}"

    def manifest(self, ref: "str | DatasetRef") -> dict:
        """The manifest of a version (see storage.manifest for its fields)."""
        parsed = _parse(ref)
        if parsed.version is None:
            parsed = DatasetRef.parse(self.resolve(parsed))
        return self._load_manifest(parsed.name, parsed.version)

    def _load_manifest(self, name: str, version: int) -> dict:
        cached = self._manifests.get((name, version))
        if cached is not None:
            return cached
        found = self.backend.get(manifest_key(name, version))
        if found is None:
            if not self.versions(name):
                raise self._not_found(name)
            raise VersionNotFoundError(f"{format_ref(name, version)} does not exist in {self.uri} "
                                       f"(latest is v{self.latest_version(name)})")
        manifest = decode_manifest(found[0], f"{format_ref(name, version)} in {self.uri}")
        self._manifests[(name, version)] = manifest
        return manifest

    def find(self, fingerprint: str, name: str | None = None) -> str | None:
        """The newest ref published with `fingerprint` (in dataset `name`, or any), else None."""
        for candidate in ([name] if name else self.datasets()):
            for version in reversed(self.versions(candidate)):
                if self._load_manifest(candidate, version).get("fingerprint") == fingerprint:
                    return format_ref(candidate, version)
        return None

    # ----------------------------------------------------------------- reading
    def data_files(self, ref: str) -> list[str]:
        """URLs of a version's data files, for pandas / datasets / fsspec with `storage_options()`."""
        manifest = self.manifest(ref)
        return [self.backend.url(f"{manifest['name']}/{item['path']}") for item in manifest["files"]]

    def storage_options(self) -> dict:
        """fsspec storage_options matching `data_files` (a fresh copy: `datasets` mutates it)."""
        return dict(self.backend.fsspec_options())

    def _dataset(self, manifest: dict, verify: bool) -> pads.Dataset:
        """The version's parts, checked for size and rows (always) and sha256 (`verify`, once per store object)."""
        if verify and (manifest["name"], manifest["version"]) not in self._verified:
            verify_checksums(self.backend, manifest)
            self._verified.add((manifest["name"], manifest["version"]))
        return checked_dataset(self.backend, manifest)

    @staticmethod
    def _expression(filter):
        if filter is None or isinstance(filter, pc.Expression):
            return filter
        return pq.filters_to_expression(filter)

    def read_arrow(self, ref: str, columns: list[str] | None = None, filter=None, *, verify: bool = False) -> pa.Table:
        """Read a version as a pyarrow Table. `filter`: a pyarrow Expression or DNF tuples
        like [("split", "==", "train")]. Every read checks each part's size and row count;
        `verify` also checks their sha256 (see storage.integrity)."""
        manifest = self.manifest(ref)
        table = retry.call(
            lambda: self._dataset(manifest, verify).to_table(columns=columns, filter=self._expression(filter)),
            what=f"read {format_ref(manifest['name'], manifest['version'])}",
        )
        if columns is not None and image_columns(table.schema):
            table = table.replace_schema_metadata(image_features(table.schema, image_columns(table.schema)).metadata)
        return table

    def read_where_in(self, ref: str, column: str, values: Iterable, columns: list[str] | None = None, *,
                      verify: bool = False) -> pa.Table:
        """Rows whose `column` is one of `values`, with `columns` (default all).

        Reads `column` first and then the other columns of only the row groups holding a
        match: fetching a shard's few rows by id costs a few row groups, not a scan of every
        image in the dataset (ids are hashes, so row-group statistics cannot prune them).
        Row groups are decoded on the calling thread: Arrow's reader threads leave per-thread
        malloc arenas that made a stage's memory grow with the number of reads (measured).
        """
        manifest = self.manifest(ref)
        schema = decode_schema(manifest)
        wanted = pa.array(list(values), type=schema.field(column).type)
        selected = columns if columns is None or column in columns else [*columns, column]
        pieces = []
        for fragment in self._dataset(manifest, verify).get_fragments():
            for row_group in fragment.split_by_row_group():
                keys = row_group.to_table(columns=[column], use_threads=False).column(0)
                if not pc.any(pc.is_in(keys, value_set=wanted)).as_py():
                    continue
                table = row_group.to_table(columns=selected, use_threads=False)
                pieces.append(table.filter(pc.is_in(table.column(column), value_set=wanted)))
        if not pieces:
            empty = schema.empty_table()
            return empty if columns is None else empty.select(columns)
        table = pa.concat_tables(pieces)
        return table if columns is None else table.select(columns)

    def read_pandas(self, ref: str, columns: list[str] | None = None, filter=None):
        """Read a version as a pandas DataFrame (image cells are {bytes, path} dicts)."""
        return self.read_arrow(ref, columns=columns, filter=filter).to_pandas()

    def iter_batches(self, ref: str, batch_size: int = 1024, columns: list[str] | None = None,
                     filter=None, *, verify: bool = False) -> Iterator[pa.RecordBatch]:
        """Stream a version batch by batch. One row group is read at a time (the dataset
        scanner would pre-buffer whole files), so memory stays bounded by a row group."""
        manifest = self.manifest(ref)
        expression = self._expression(filter)
        for fragment in self._dataset(manifest, verify).get_fragments():
            for row_group in fragment.split_by_row_group():
                yield from row_group.to_batches(columns=columns, filter=expression, batch_size=batch_size,
                                                use_threads=False)

    def to_hf_dataset(self, ref: str, columns: list[str] | None = None, cache_dir: str | None = None):
        """A Hugging Face `datasets.Dataset` of a version; image columns decode to PIL images.

        Remote files are first copied to a local checksum-addressed cache, so this works
        with HF_HUB_OFFLINE=1 and memory-maps instead of holding the data in RAM.
        """
        from storage.transfer import hf_dataset

        return hf_dataset(self, ref, columns=columns, cache_dir=cache_dir)

    def pull(self, ref: str, to: str, format: str = "parquet") -> str:
        """Copy a version to a local folder as Parquet files + manifest.json, or as a saved HF dataset."""
        from storage.transfer import pull

        return pull(self, ref, to, format=format)

    def verify(self, ref: str) -> None:
        """Re-read every data file of a version and check its recorded size and sha256."""
        verify_checksums(self.backend, self.manifest(ref))

    def gc(self, older_than: float = 3600.0, dry_run: bool = False,
           scratch_older_than: float = 7 * 86400.0, txn_timeout: float = TXN_TIMEOUT) -> list[str]:
        """Delete data files no manifest lists and no live publish wrote, older than `older_than`
        seconds (safe beside running publishes even at 0), publishes' leftovers once their txn
        is older than `txn_timeout`, and scratch tables older than `scratch_older_than`;
        returns their keys (see storage.gc)."""
        return collect_garbage(self, older_than=older_than, dry_run=dry_run,
                               scratch_older_than=scratch_older_than, txn_timeout=txn_timeout)

    def scratch(self, namespace: str) -> "Scratch":
        """Unversioned staging tables for resumable jobs (see storage.scratch)."""
        return Scratch(self.backend, namespace)

    def close(self) -> None:
        self.backend.close()
