"""A generic versioned Arrow/Parquet dataset store on file://, memory:// and s3://.

    from storage import DatasetStore
    store = DatasetStore("s3://bucket/prefix")
    ref = store.publish("preferences", table, inputs=["sr_candidates@v2"], fingerprint="...")
    store.read_pandas("preferences@latest")

It knows nothing of DSPO: any Arrow table, by name and version.
"""
from storage.errors import (
    ChecksumMismatchError, ConditionalWriteUnsupportedError, DatasetNotFoundError, InvalidNameError,
    ManifestError, MissingCredentialsError, SchemaMismatchError, StorageUnavailableError, StoragePermissionError,
    StoreError, StoreNotFoundError, TagExistsError, TagNotFoundError, VersionNotFoundError,
)
from storage.images import IMAGE_TYPE, decode_image, encode_png, image_array, image_cell, image_columns
from storage.refs import DatasetRef, validate_name
from storage.store import DatasetStore

__all__ = [
    "DatasetStore", "DatasetRef", "validate_name",
    "IMAGE_TYPE", "decode_image", "encode_png", "image_array", "image_cell", "image_columns",
    "StoreError", "InvalidNameError", "DatasetNotFoundError", "VersionNotFoundError", "TagNotFoundError",
    "TagExistsError", "ManifestError", "SchemaMismatchError", "ConditionalWriteUnsupportedError",
    "StoragePermissionError", "StorageUnavailableError", "ChecksumMismatchError", "StoreNotFoundError",
    "MissingCredentialsError",
]
