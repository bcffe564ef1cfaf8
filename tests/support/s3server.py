"""An S3 server for tests: moto's real S3 HTTP endpoint, in this process.

Tests talk to it over HTTP with real clients (boto3, pyarrow, s3fs), so the
code under test runs its production S3 paths, not a mock of boto3. Nothing
process-wide is changed: no environment variables are set; credentials and
the endpoint are handed to clients explicitly (or to subprocesses via env()).
"""

from __future__ import annotations

import boto3
from botocore.config import Config
from moto.server import ThreadedMotoServer


class S3TestServer:
    """Moto's S3 server on 127.0.0.1 and a free port.

    Arguments: region, the region clients are told to use ("us-east-1", where
    buckets need no LocationConstraint).

    Use as a context manager, or call start() and stop(). After start():
    endpoint_url is "http://127.0.0.1:PORT", credentials holds the fake static
    keys as boto3 client keyword arguments, and client_kwargs(), client(),
    env(), create_bucket() and delete_bucket() build on them.
    """

    ACCESS_KEY = "testing"
    SECRET_KEY = "testing"

    def __init__(self, region: str = "us-east-1") -> None:
        self.region = region
        self.endpoint_url: str | None = None
        self._moto: ThreadedMotoServer | None = None

    def start(self) -> "S3TestServer":
        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._moto.start()
        host, port = self._moto.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        if self._moto is not None:
            self._moto.stop()
            # stop() only ends the serving loop; the listening socket would
            # stay open, accepting connections nobody answers.
            self._moto._server.server_close()
            self._moto = None

    def __enter__(self) -> "S3TestServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def credentials(self) -> dict[str, str]:
        return {
            "aws_access_key_id": self.ACCESS_KEY,
            "aws_secret_access_key": self.SECRET_KEY,
            "region_name": self.region,
        }

    def client_kwargs(self, endpoint_url: str | None = None) -> dict[str, str]:
        """boto3.client("s3", **kwargs) arguments; endpoint_url lets a test
        point the client at a proxy in front of this server instead."""
        return {**self.credentials, "endpoint_url": endpoint_url or self.endpoint_url}

    def client(self, endpoint_url: str | None = None, config: Config | None = None):
        """A boto3 S3 client for this server (or for endpoint_url)."""
        return boto3.client("s3", config=config, **self.client_kwargs(endpoint_url))

    def env(self) -> dict[str, str]:
        """Environment variables that point a subprocess's AWS clients here;
        merge into a copy of os.environ, never into os.environ itself.
        boto3 and s3fs honour AWS_ENDPOINT_URL; pyarrow's S3FileSystem (26)
        does not and needs endpoint_override and scheme="http" passed."""
        return {
            "AWS_ACCESS_KEY_ID": self.ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": self.SECRET_KEY,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            # Without it, SDKs that miss a setting probe the EC2 metadata
            # service and stall for seconds before giving up.
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def delete_bucket(self, name: str) -> None:
        """Delete a bucket with everything in it (object versions, unfinished
        multipart uploads), so a long session does not pile up data."""
        s3 = self.client()
        for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=name):
            for upload in page.get("Uploads", []):
                s3.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
        # Versions, not objects: a bucket with versioning on keeps them all.
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=name):
            entries = page.get("Versions", []) + page.get("DeleteMarkers", [])
            keys = [{"Key": e["Key"], "VersionId": e["VersionId"]} for e in entries]
            if keys:
                s3.delete_objects(Bucket=name, Delete={"Objects": keys})
        s3.delete_bucket(Bucket=name)
