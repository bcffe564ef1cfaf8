"""S3-compatible backend (`s3://bucket/prefix`): AWS, MinIO, Ceph, R2, moto...

Control objects go through boto3, whose `IfNoneMatch="*"` / `IfMatch=<etag>` give
create-if-absent and compare-and-swap. Data files go through pyarrow's native S3
filesystem (ranged reads, column projection). Credentials come from the arguments or
the usual AWS chain (environment, profile, instance role); they are handed to the
clients and never stored on this object's printable fields.
"""
from __future__ import annotations

import os
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from storage import retry
from storage.backends.base import Backend, ObjectInfo
from storage.errors import MissingCredentialsError, StorageUnavailableError, StoreError
from storage.redact import redact_url

# What to set when no credentials are found: named in the error, since botocore only says
# "Unable to locate credentials".
CREDENTIALS_HINT = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE for a profile in ~/.aws), "
                    "plus AWS_ENDPOINT_URL for a service other than AWS itself")
_MISSING_BUCKET_CODES = ("404", "NoSuchBucket", "NotFound")


def endpoint_from_env() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


class S3Backend(Backend):
    """Backend over an S3-compatible service.

    Arguments:
        bucket:        bucket name (must exist).
        prefix:        key prefix of the store root inside the bucket ("" for the whole bucket).
        endpoint_url:  service URL, e.g. "http://127.0.0.1:9000"; default: $AWS_ENDPOINT_URL_S3,
                       $AWS_ENDPOINT_URL, else AWS itself.
        region:        region name; default: $AWS_REGION, $AWS_DEFAULT_REGION, else "us-east-1".
        key, secret, token: explicit credentials; default: the AWS credential chain.
        max_attempts:  attempts per request inside each client for transient errors (default:
                       $AWS_MAX_ATTEMPTS, else 3); the store retries whole operations on top.
    """

    # One PUT per part, retried whole: pyarrow's streaming multipart upload does not retry
    # every transient failure, and a half-sent stream cannot be replayed.
    buffers_parts = True
    creates_root = False

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 region: str | None = None, key: str | None = None, secret: str | None = None,
                 token: str | None = None, max_attempts: int | None = None):
        import boto3
        from botocore.config import Config

        max_attempts = max_attempts or int(os.environ.get("AWS_MAX_ATTEMPTS") or 3)
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url or endpoint_from_env()
        self.region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self._credentials = {"key": key, "secret": secret, "token": token}
        self._client = boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            aws_session_token=token,
            config=Config(
                retries={"mode": "standard", "max_attempts": max_attempts},
                connect_timeout=10,
                read_timeout=60,
                s3={"addressing_style": "path"} if self.endpoint_url else {},
            ),
        )
        arrow_kwargs = {
            "region": self.region,
            "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=max_attempts),
            "connect_timeout": 10,
            "request_timeout": 60,
        }
        if self.endpoint_url:
            parts = urlsplit(self.endpoint_url)
            arrow_kwargs.update(endpoint_override=parts.netloc or parts.path, scheme=parts.scheme or "https")
        if key:
            arrow_kwargs.update(access_key=key, secret_key=secret, session_token=token)
        self.arrow_fs = pafs.S3FileSystem(**arrow_kwargs)

    @property
    def endpoint(self) -> str:
        """The service, safe to print: the endpoint URL without credentials, else AWS's region."""
        return redact_url(self.endpoint_url) if self.endpoint_url else f"AWS S3 ({self.region})"

    def _translated(self, exc: BaseException, what: str) -> StoreError | None:
        """The StoreError naming the store and what to do for a missing credential or an
        unreachable endpoint (botocore's messages name neither), else None."""
        from botocore import exceptions as boto_exc

        if isinstance(exc, (boto_exc.NoCredentialsError, boto_exc.PartialCredentialsError)):
            return MissingCredentialsError(f"{what}: no usable AWS credentials ({exc}); {CREDENTIALS_HINT}")
        cause = exc.__cause__ if isinstance(exc, StorageUnavailableError) else exc
        if isinstance(cause, boto_exc.ConnectionError):
            return StorageUnavailableError(f"{what}: cannot reach the S3 endpoint {self.endpoint} ({cause}); check "
                                           "AWS_ENDPOINT_URL (or the store's endpoint_url) and that the service runs")
        return None

    def _call(self, fn, *, what: str):
        """`retry.call(fn)`, with credential and connection failures named as `_translated` does."""
        try:
            return retry.call(fn, what=what)
        except Exception as exc:  # translated when we can say more, else re-raised unchanged
            translated = self._translated(exc, what)
            if translated is None:
                raise
            raise translated from exc

    def missing_root(self) -> str | None:
        """The store exists when its bucket does and answers. The prefix is not checked: S3 has
        no folders, a prefix exists exactly while some object lies under it, so an unused prefix
        of an existing bucket is an empty store (the first publish fills it); the bucket is what
        someone creates beforehand, and can mistype. One request with only the client's own
        retries: an unreachable endpoint is one error after a few seconds, not a warning per
        store-level retry first."""
        from botocore.exceptions import BotoCoreError, ClientError

        what = f"open {self.uri}"
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING_BUCKET_CODES:
                return f"no bucket {self.bucket!r} at {self.endpoint}"
            raise retry.permanent_error(exc, what) or StorageUnavailableError(f"{what}: {exc}") from exc
        except BotoCoreError as exc:
            raise self._translated(exc, what) or StorageUnavailableError(f"{what}: {exc}") from exc
        return None

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def data_path(self, key: str) -> str:
        return f"{self.bucket}/{self._key(key)}"

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def fsspec_options(self) -> dict:
        options: dict = {"client_kwargs": {"region_name": self.region}}
        if self.endpoint_url:
            options["client_kwargs"]["endpoint_url"] = self.endpoint_url
        options.update({name: value for name, value in self._credentials.items() if value})
        return options

    def get(self, key: str) -> tuple[bytes, str] | None:
        from botocore.exceptions import ClientError

        def fetch():
            try:
                response = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise
            return response["Body"].read(), response["ETag"]

        return self._call(fetch, what=f"read {self.url(key)}")

    def _conditional_put(self, key: str, data: bytes, **condition) -> bool:
        from botocore.exceptions import ClientError

        def put():
            try:
                self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **condition)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
                    return False
                raise
            return True

        return self._call(put, what=f"conditional write {self.url(key)}")

    def create(self, key: str, data: bytes) -> bool:
        return self._conditional_put(key, data, IfNoneMatch="*")

    def swap(self, key: str, data: bytes, token: str | None) -> bool:
        if token is None:
            return self.create(key, data)
        return self._conditional_put(key, data, IfMatch=token)

    def delete(self, key: str) -> None:
        self._call(lambda: self._client.delete_object(Bucket=self.bucket, Key=self._key(key)),
                   what=f"delete {self.url(key)}")

    def _pages(self, what: str, **kwargs):
        def collect():
            return list(self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, **kwargs))

        return self._call(collect, what=what)

    def list(self, prefix: str) -> list[ObjectInfo]:
        base = self._key(prefix).rstrip("/") + "/" if prefix or self.prefix else ""
        strip = len(self.prefix) + 1 if self.prefix else 0
        return [
            ObjectInfo(item["Key"][strip:], int(item["Size"]), item["LastModified"])
            for page in self._pages(f"list {self.url(prefix)}", Prefix=base)
            for item in page.get("Contents", [])
        ]

    def children(self, prefix: str) -> list[str]:
        base = self._key(prefix).rstrip("/") + "/" if prefix or self.prefix else ""
        names = [
            common["Prefix"][len(base):].rstrip("/")
            for page in self._pages(f"list {self.url(prefix)}", Prefix=base, Delimiter="/")
            for common in page.get("CommonPrefixes", [])
        ]
        return sorted(names)

    def write_file(self, key: str, data) -> None:
        retry.call(lambda: Backend.write_file(self, key, data), what=f"write {self.url(key)}")

    def read_file(self, key: str) -> bytes:
        return retry.call(lambda: Backend.read_file(self, key), what=f"read {self.url(key)}")

    def close(self) -> None:
        self._client.close()
