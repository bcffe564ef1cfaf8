"""The store over an unreliable S3 service: a fault-injecting proxy in front of moto's HTTP server."""
from __future__ import annotations

import logging
import time

import numpy as np
import pyarrow as pa
import pytest

from botocore.exceptions import ClientError, EndpointConnectionError

from storage import (
    ConditionalWriteUnsupportedError, DatasetStore, StoragePermissionError, StorageUnavailableError, image_array,
    retry,
)
from store_params import s3_options
from support.fault_proxy import FaultProxy


def table_for(index: int) -> pa.Table:
    rng = np.random.default_rng(index)
    return pa.table({
        "index": pa.array([index] * 3),
        "value": pa.array(rng.normal(size=3)),
        "image": image_array(rng.integers(0, 255, (3, 16, 16, 3), dtype=np.uint8)),
    })


def test_publish_and_read_through_faults(s3_server, s3_bucket, caplog):
    caplog.set_level(logging.WARNING, logger="storage")
    with FaultProxy(s3_server.endpoint_url, seed=7, p_503=0.05, p_drop_before=0.04, p_drop_after=0.04) as proxy:
        store = DatasetStore(f"s3://{s3_bucket}/flaky", s3_options(s3_server, proxy.url))
        refs = [store.publish("flaky", table_for(i)) for i in range(50)]
        assert refs == [f"flaky@v{i}" for i in range(1, 51)]
        for i, ref in enumerate(refs):
            assert store.read_arrow(ref).equals(table_for(i).replace_schema_metadata(
                store.read_arrow(ref).schema.metadata))
        stats = proxy.stats
    assert stats["503"] > 0 and stats["drop_before"] > 0 and stats["drop_after"] > 0, stats

    direct = DatasetStore(f"s3://{s3_bucket}/flaky", s3_options(s3_server))
    assert direct.versions("flaky") == list(range(1, 51))
    manifests = [direct.manifest(f"flaky@v{i}") for i in range(1, 51)]
    assert len({manifest["txn"] for manifest in manifests}) == 50  # no publish landed twice
    assert "testing" not in caplog.text  # retry logs never carry the credentials


def test_store_ignoring_conditional_writes_is_refused(s3_server, s3_bucket):
    with FaultProxy(s3_server.endpoint_url, seed=1, strip_conditional_headers=True) as proxy:
        store = DatasetStore(f"s3://{s3_bucket}/lax", s3_options(s3_server, proxy.url))
        with pytest.raises(ConditionalWriteUnsupportedError, match="ignores conditional writes"):
            store.publish("anything", table_for(0))
    assert DatasetStore(f"s3://{s3_bucket}/lax", s3_options(s3_server)).versions("anything") == []


def test_missing_bucket_fails_at_once(s3_server):
    store = DatasetStore("s3://no-such-bucket-here/x", s3_options(s3_server))
    started = time.perf_counter()
    with pytest.raises(StorageUnavailableError, match="bucket does not exist"):
        store.publish("t", table_for(0))
    assert time.perf_counter() - started < 5


def client_error(status: int, code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


def test_retry_classification():
    calls = []

    def denied():
        calls.append(1)
        raise client_error(403, "AccessDenied")

    with pytest.raises(StoragePermissionError, match="write x: access denied"):
        retry.call(denied, what="write x")
    assert len(calls) == 1

    outcomes = [client_error(503, "SlowDown"), EndpointConnectionError(endpoint_url="http://x"), "done"]

    def flaky():
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert retry.call(flaky, what="read y", base_delay=0.001) == "done"
    with pytest.raises(StorageUnavailableError, match="still failing after 2 attempts"):
        retry.call(lambda: (_ for _ in ()).throw(client_error(500, "InternalError")), what="z", attempts=2,
                   base_delay=0.001)


def test_load_dataset_on_manifest_files_over_s3(s3_server, s3_bucket):
    import datasets

    store = DatasetStore(f"s3://{s3_bucket}/hf", s3_options(s3_server))
    ref = store.publish("imgs", table_for(3))
    loaded = datasets.load_dataset("parquet", data_files=store.data_files(ref),
                                   storage_options=store.storage_options(), split="train")
    expected = np.random.default_rng(3)
    expected.normal(size=3)
    pixels = expected.integers(0, 255, (3, 16, 16, 3), dtype=np.uint8)
    for row, image in zip(loaded, pixels):
        np.testing.assert_array_equal(np.asarray(row["image"]), image)
