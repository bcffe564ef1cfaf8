"""Opens a DatasetStore on each backend kind for the parametrised storage tests: the fixtures
`location` and `store` (registered for every test module by conftest.py's pytest_plugins)."""
from __future__ import annotations

import uuid

import pytest

from storage import DatasetStore

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


@pytest.fixture(params=BACKEND_KINDS)
def location(request, tmp_path):
    """(uri, storage_options) of a fresh store, once per backend kind."""
    return store_location(request.param, tmp_path, request)


@pytest.fixture
def store(location):
    """A DatasetStore on `location`, closed after the test."""
    opened = DatasetStore(*location)
    yield opened
    opened.close()
