"""The manifest: the commit record of one dataset version.

A manifest is a JSON object with these fields:
    format:       "dspo-store/1"
    name:         dataset name
    version:      version number (int, >= 1)
    created_at:   ISO-8601 UTC time of the commit
    rows:         total row count
    bytes:        total size of the data files
    files:        [{path, rows, bytes, sha256}], paths relative to the dataset folder
    schema:       [{name, type}] -- human-readable
    arrow_schema: base64 of the Arrow IPC-serialised schema (exact, with field metadata)
    fingerprint:  the producer's cache key, or null
    inputs:       pinned refs of the input datasets (lineage), e.g. ["lq_pairs@v3"]
    run_id:       id of the producing run, or null
    metadata:     free JSON metadata of the producer (credentials redacted)
    txn:          unique id of the publish that wrote it
"""
from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime, timezone

import pyarrow as pa

from storage.errors import ManifestError

FORMAT = "dspo-store/1"
_REQUIRED = ("format", "name", "version", "created_at", "rows", "files", "arrow_schema", "inputs", "txn")


def manifest_key(name: str, version: int) -> str:
    return f"{name}/_manifests/v={version:04d}.json"


def parse_manifest_key(filename: str) -> int | None:
    """Version number of a manifest file name `v=NNNN.json`, or None for anything else."""
    if filename.startswith("v=") and filename.endswith(".json"):
        digits = filename[2:-5]
        if digits.isdigit():
            return int(digits)
    return None


def encode_schema(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode("ascii")


def decode_schema(manifest: dict) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(manifest["arrow_schema"])))


def build_manifest(*, name: str, version: int, files: list[dict], schema: pa.Schema, fingerprint: str | None,
                   inputs: list[str], run_id: str | None, metadata: dict, txn: str) -> dict:
    return {
        "format": FORMAT,
        "name": name,
        "version": version,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "rows": sum(item["rows"] for item in files),
        "bytes": sum(item["bytes"] for item in files),
        "files": files,
        "schema": [{"name": field.name, "type": str(field.type)} for field in schema],
        "arrow_schema": encode_schema(schema),
        "fingerprint": fingerprint,
        "inputs": inputs,
        "run_id": run_id,
        "metadata": metadata,
        "txn": txn,
    }


def content_fingerprint(manifest: dict) -> str:
    """A hash of what a version holds: its data files' checksums and row counts in order, and
    its exact Arrow schema. Two versions with equal content fingerprints hold the same rows,
    whatever their version numbers, lineage or metadata say."""
    material = {"files": [[item["rows"], item["sha256"]] for item in manifest["files"]],
                "arrow_schema": manifest["arrow_schema"]}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def encode_manifest(manifest: dict) -> bytes:
    return json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8")


def decode_manifest(data: bytes, where: str) -> dict:
    """Parse and check a manifest; `where` names it in the error."""
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"manifest {where} is unreadable: {exc}") from exc
    if not isinstance(manifest, dict) or any(key not in manifest for key in _REQUIRED):
        raise ManifestError(f"manifest {where} is not a dataset manifest (missing fields)")
    if manifest["format"] != FORMAT:
        raise ManifestError(f"manifest {where} has unknown format {manifest['format']!r}")
    return manifest
