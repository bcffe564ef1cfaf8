"""Shared pytest fixtures.

S3 tests run against one in-process moto S3 HTTP server per session
(tests/support/s3server.py) and get a fresh bucket each. Put a FaultProxy
(tests/support/fault_proxy.py) in front of s3_server.endpoint_url to inject
faults. Modules that use torch set torch.set_num_threads(1) themselves:
importing torch here would slow down every test run.
"""

import uuid

import pytest

from support.s3server import S3TestServer

# The storage tests' `location` and `store` fixtures, one store per backend kind.
pytest_plugins = ["store_params"]


@pytest.fixture(scope="session")
def s3_server():
    with S3TestServer() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server):
    """A new, empty bucket on s3_server; yields its name, deletes it after."""
    name = s3_server.create_bucket(f"test-{uuid.uuid4().hex[:16]}")
    yield name
    s3_server.delete_bucket(name)
