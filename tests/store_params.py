"""Opens a DatasetStore on each backend kind for the parametrised storage tests."""
from __future__ import annotations

import uuid

BACKEND_KINDS = ["file", "memory", "s3"]


def s3_options(server, endpoint_url: str | None = None) -> dict:
    return {"endpoint_url": endpoint_url or server.endpoint_url, "key": server.ACCESS_KEY,
            "secret": server.SECRET_KEY, "region": server.region}


def store_location(kind: str, tmp_path, request) -> tuple[str, dict | None]:
    """(uri, storage_options) of a fresh, empty store of that kind."""
    if kind == "file":
        return f"file://{tmp_path}/store", None
    if kind == "memory":
        return f"memory://test-{uuid.uuid4().hex}", None
    server = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/root", s3_options(server)
