"""Retry of transient storage errors with exponential backoff and full jitter.

Transient: HTTP 5xx, throttling, timeouts, dropped or refused connections.
Permanent: access denied, missing bucket, anything else -- raised at once, translated
into a StoreError that names what was being done.
"""
from __future__ import annotations

import logging
import random
import time
from typing import Callable, TypeVar

from storage.errors import StoragePermissionError, StorageUnavailableError, StoreError

log = logging.getLogger("storage")
T = TypeVar("T")

_TRANSIENT_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeoutException",
    "InternalError", "ServiceUnavailable", "ConditionalRequestConflict", "OperationAborted",
}
_PERMISSION_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled", "Forbidden"}
# pyarrow's native S3 client reports errors as OSError text only.
_TRANSIENT_TEXT = (
    "http status 5", "slowdown", "slow_down", "throttl", "timed out", "timeout", "connection",
    "curlcode", "service unavailable", "service_unavailable", "internal_failure", "network_connection",
    "request_timeout", "response stream", "internal error", "internalerror", "network", "broken pipe",
    "reset by peer", "unexpected eof", "incomplete", "503", "500", "502", "504",
)
_PERMISSION_TEXT = ("access_denied", "accessdenied", "access denied", "http status 403", "forbidden")
_NO_BUCKET_TEXT = ("no_such_bucket", "nosuchbucket", "bucket does not exist", "the specified bucket does not exist")


def _client_error_code(exc: BaseException) -> tuple[str, int]:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return "", 0
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: the same request may well succeed a moment later."""
    if isinstance(exc, StoreError):
        return False
    try:
        from botocore import exceptions as boto_exc
    except ImportError:  # boto3 is only needed for s3:// stores
        boto_exc = None
    if boto_exc is not None:
        if isinstance(exc, (boto_exc.ConnectionError, boto_exc.HTTPClientError, boto_exc.IncompleteReadError,
                            boto_exc.ResponseStreamingError)):
            return True
        if isinstance(exc, boto_exc.ClientError):
            code, status = _client_error_code(exc)
            return status >= 500 or status == 429 or code in _TRANSIENT_CODES
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(exc, OSError):
        text = str(exc).lower()
        if any(marker in text for marker in _PERMISSION_TEXT + _NO_BUCKET_TEXT):
            return False
        return any(marker in text for marker in _TRANSIENT_TEXT)
    return False


def permanent_error(exc: BaseException, what: str) -> StoreError | None:
    """The StoreError a permanent storage failure maps to, or None if it is not one we know."""
    code, status = _client_error_code(exc)
    text = str(exc).lower()
    if status == 403 or code in _PERMISSION_CODES or any(marker in text for marker in _PERMISSION_TEXT):
        return StoragePermissionError(
            f"{what}: access denied by the storage service ({code or 'HTTP 403'}); check credentials and bucket policy"
        )
    if code == "NoSuchBucket" or any(marker in text for marker in _NO_BUCKET_TEXT):
        return StorageUnavailableError(f"{what}: the bucket does not exist")
    return None


def call(fn: Callable[[], T], *, what: str, attempts: int = 4, base_delay: float = 0.1, max_delay: float = 4.0) -> T:
    """Run `fn`, retrying transient errors up to `attempts` times in all.

    `what` names the operation and object (never credentials); it prefixes every message.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as exc:  # classified below; anything unknown is re-raised unchanged
            if not is_transient(exc):
                translated = permanent_error(exc, what)
                if translated is not None:
                    raise translated from exc
                raise
            if attempt == attempts:
                raise StorageUnavailableError(f"{what}: still failing after {attempts} attempts: {exc}") from exc
            delay = random.uniform(0, min(max_delay, base_delay * 2 ** attempt))
            log.warning("%s: transient storage error (%s: %s); retry %d/%d in %.2fs",
                        what, type(exc).__name__, str(exc)[:200], attempt, attempts - 1, delay)
            time.sleep(delay)
