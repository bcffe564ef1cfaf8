"""Errors raised by the dataset store. Each message names the dataset, ref or key involved."""


class StoreError(Exception):
    """Base class of every error the store raises on purpose."""


class InvalidNameError(StoreError, ValueError):
    """A dataset name, tag or ref is malformed (empty, '/', '..', control characters...)."""


class DatasetNotFoundError(StoreError, LookupError):
    """The dataset has no published version in this store."""


class StoreNotFoundError(DatasetNotFoundError):
    """The store itself is not there: no root folder (file://), no bucket (s3://), nothing written
    (memory://). Reading a mistyped location must say so, not look like reading an empty store;
    a subclass of DatasetNotFoundError because no dataset is found there either."""


class VersionNotFoundError(StoreError, LookupError):
    """The dataset exists but not at the requested version."""


class TagNotFoundError(StoreError, LookupError):
    """No tag of that name exists for the dataset."""


class TagExistsError(StoreError):
    """The tag already points at another version (pass force=True to move it)."""


class ManifestError(StoreError):
    """A manifest is unreadable, truncated or not a manifest of this store."""


class SchemaMismatchError(StoreError, ValueError):
    """Batches handed to one publish do not share one schema."""


class ConditionalWriteUnsupportedError(StoreError):
    """The storage service ignores conditional writes; publishing there could lose versions."""


class StoragePermissionError(StoreError, PermissionError):
    """The service refused access (HTTP 403): credentials or policy are wrong."""


class MissingCredentialsError(StoreError):
    """No credentials were found for an s3:// store (arguments, environment, AWS profile, role)."""


class StorageUnavailableError(StoreError):
    """The bucket or root does not exist, or the service stayed unreachable after retries."""


class ChecksumMismatchError(StoreError):
    """A data file's content differs from the checksum its manifest recorded."""
