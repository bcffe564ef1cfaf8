"""The S3 test infrastructure itself: moto's server and the fault proxy."""

import http.client
import io
import os
import subprocess
import sys
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError

from support.fault_proxy import FaultProxy

# botocore backs off rand() * 2**(attempt - 1) seconds, up to 20 s, whatever
# the error, so a request unlucky three or four times in a row sleeps many
# seconds: fault rates of 0.3 made one test take 5-25 s. At 0.1 the retries
# still number about ten per test, and the round trips run all at once so
# that the sleeps overlap.
FAULT_RATE = 0.1
ROUND_TRIPS = 50
# total_max_attempts counts the first try; botocore's "max_attempts" key
# counts only retries, so max_attempts=1 still sends a request twice.
RETRYING = Config(retries={"mode": "standard", "total_max_attempts": 10}, max_pool_connections=ROUND_TRIPS)
NO_RETRIES = Config(retries={"mode": "standard", "total_max_attempts": 1})


def error_status(exc_info) -> int:
    return exc_info.value.response["ResponseMetadata"]["HTTPStatusCode"]


def round_trips(s3, bucket: str) -> None:
    """ROUND_TRIPS concurrent put/get pairs, which also makes the proxy serve
    many connections at once."""

    def one(i: int) -> None:
        body = f"object {i}".encode() * (i + 1)
        s3.put_object(Bucket=bucket, Key=f"k/{i}", Body=body)
        assert s3.get_object(Bucket=bucket, Key=f"k/{i}")["Body"].read() == body

    with ThreadPoolExecutor(max_workers=ROUND_TRIPS) as pool:
        list(pool.map(one, range(ROUND_TRIPS)))


def test_moto_honours_conditional_writes(s3_server, s3_bucket):
    s3 = s3_server.client()
    etag = s3.put_object(Bucket=s3_bucket, Key="k", Body=b"v1")["ETag"]

    with pytest.raises(ClientError) as exc_info:
        s3.put_object(Bucket=s3_bucket, Key="k", Body=b"v2", IfNoneMatch="*")
    assert error_status(exc_info) == 412
    assert exc_info.value.response["Error"]["Code"] == "PreconditionFailed"

    with pytest.raises(ClientError) as exc_info:
        s3.put_object(Bucket=s3_bucket, Key="k", Body=b"v2", IfMatch='"0123456789abcdef0123456789abcdef"')
    assert error_status(exc_info) == 412

    s3.put_object(Bucket=s3_bucket, Key="k", Body=b"v3", IfMatch=etag)
    assert s3.get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"v3"


def test_env_points_a_subprocess_at_the_server(s3_server, s3_bucket):
    script = "import boto3; print(' '.join(b['Name'] for b in boto3.client('s3').list_buckets()['Buckets']))"
    env = {**os.environ, **s3_server.env()}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert s3_bucket in out.stdout.split()


def test_proxy_forwards_everything_without_faults(s3_server, s3_bucket):
    big = os.urandom(2 * 1024 * 1024)
    with FaultProxy(s3_server.endpoint_url, seed=0) as proxy:
        s3 = s3_server.client(proxy.url, NO_RETRIES)
        s3.put_object(Bucket=s3_bucket, Key="small", Body=b"hello")
        # A file-like body makes botocore send Expect: 100-continue.
        s3.put_object(Bucket=s3_bucket, Key="big", Body=io.BytesIO(big))
        assert s3.get_object(Bucket=s3_bucket, Key="small")["Body"].read() == b"hello"
        assert s3.get_object(Bucket=s3_bucket, Key="big")["Body"].read() == big
        assert s3.head_object(Bucket=s3_bucket, Key="big")["ContentLength"] == len(big)
        listed = s3.list_objects_v2(Bucket=s3_bucket)["Contents"]
        assert sorted(obj["Key"] for obj in listed) == ["big", "small"]
        with pytest.raises(ClientError) as exc_info:
            s3.get_object(Bucket=s3_bucket, Key="missing")
        assert error_status(exc_info) == 404
        s3.delete_object(Bucket=s3_bucket, Key="small")
        assert proxy.stats == {"requests": 8, "503": 0, "drop_before": 0, "drop_after": 0}


def test_proxy_forwards_chunked_request_bodies(s3_server, s3_bucket):
    # botocore sends Content-Length over plain HTTP, so chunked framing is
    # driven by hand here (pyarrow's aws-chunked part uploads go through the
    # Parquet test below); moto does not check signatures.
    with FaultProxy(s3_server.endpoint_url, seed=0) as proxy:
        url = urllib.parse.urlsplit(proxy.url)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        chunks = [b"first chunk;", b"x" * 70000, b"last"]
        conn.request("PUT", f"/{s3_bucket}/chunked", body=iter(chunks), encode_chunked=True)
        response = conn.getresponse()
        response.read()
        conn.close()
        assert response.status == 200
    assert s3_server.client().get_object(Bucket=s3_bucket, Key="chunked")["Body"].read() == b"".join(chunks)


# The fault counts below are fixed by the seed whatever the thread timing:
# the n-th draw is the same, and the draws stop after 100 successes.


def test_boto3_retries_through_503s(s3_server, s3_bucket):
    with FaultProxy(s3_server.endpoint_url, seed=1, p_503=FAULT_RATE) as proxy:
        round_trips(s3_server.client(proxy.url, RETRYING), s3_bucket)
        stats = proxy.stats
    assert stats["503"] >= 5
    assert stats["requests"] == 2 * ROUND_TRIPS + stats["503"]


def test_boto3_retries_through_connections_dropped_before_forwarding(s3_server, s3_bucket):
    with FaultProxy(s3_server.endpoint_url, seed=2, p_drop_before=FAULT_RATE) as proxy:
        round_trips(s3_server.client(proxy.url, RETRYING), s3_bucket)
        stats = proxy.stats
    assert stats["drop_before"] >= 5
    assert stats["requests"] == 2 * ROUND_TRIPS + stats["drop_before"]


def test_a_put_whose_response_was_dropped_still_landed(s3_server, s3_bucket):
    with FaultProxy(s3_server.endpoint_url, seed=3, p_drop_after=1.0) as proxy:
        with pytest.raises(ConnectionClosedError):
            s3_server.client(proxy.url, NO_RETRIES).put_object(Bucket=s3_bucket, Key="k", Body=b"landed")
        assert proxy.stats["drop_after"] == 1
    assert s3_server.client().get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"landed"


def test_a_retried_create_if_absent_fails_on_its_own_write(s3_server, s3_bucket):
    # What storage code must expect: seed 1 draws 0.13, then 0.85, so the
    # first attempt lands but its response is lost, and boto3's own retry
    # then finds the key taken.
    with FaultProxy(s3_server.endpoint_url, seed=1, p_drop_after=0.5) as proxy:
        with pytest.raises(ClientError) as exc_info:
            s3_server.client(proxy.url, RETRYING).put_object(Bucket=s3_bucket, Key="k", Body=b"mine", IfNoneMatch="*")
        assert proxy.stats == {"requests": 2, "503": 0, "drop_before": 0, "drop_after": 1}
    assert error_status(exc_info) == 412
    assert s3_server.client().get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"mine"


def test_stripping_conditional_headers_makes_the_store_ignore_them(s3_server, s3_bucket):
    direct = s3_server.client()
    direct.put_object(Bucket=s3_bucket, Key="k", Body=b"v1")
    with FaultProxy(s3_server.endpoint_url, seed=4, strip_conditional_headers=True) as proxy:
        s3 = s3_server.client(proxy.url, NO_RETRIES)
        s3.put_object(Bucket=s3_bucket, Key="k", Body=b"v2", IfNoneMatch="*")
        assert direct.get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"v2"
        s3.put_object(Bucket=s3_bucket, Key="k", Body=b"v3", IfMatch='"0123456789abcdef0123456789abcdef"')
        assert direct.get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"v3"
    with pytest.raises(ClientError) as exc_info:
        direct.put_object(Bucket=s3_bucket, Key="k", Body=b"v4", IfNoneMatch="*")
    assert error_status(exc_info) == 412


def test_close_ends_pooled_keepalive_connections(s3_server, s3_bucket):
    proxy = FaultProxy(s3_server.endpoint_url, seed=5)
    s3 = s3_server.client(proxy.url, NO_RETRIES)
    s3.put_object(Bucket=s3_bucket, Key="k", Body=b"v")
    proxy.close()
    with pytest.raises((ConnectionClosedError, EndpointConnectionError)):
        s3.get_object(Bucket=s3_bucket, Key="k")


def test_pyarrow_writes_and_reads_parquet_through_503s(s3_server, s3_bucket):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyarrow import fs

    table = pa.table({"id": list(range(1000)), "text": [f"row {i}" for i in range(1000)]})
    with FaultProxy(s3_server.endpoint_url, seed=6, p_503=0.2) as proxy:
        s3 = fs.S3FileSystem(
            access_key=s3_server.ACCESS_KEY,
            secret_key=s3_server.SECRET_KEY,
            region=s3_server.region,
            endpoint_override=urllib.parse.urlsplit(proxy.url).netloc,
            scheme="http",
            retry_strategy=fs.AwsStandardS3RetryStrategy(max_attempts=10),
        )
        for i in range(5):
            pq.write_table(table, f"{s3_bucket}/t/part-{i}.parquet", filesystem=s3)
        for i in range(5):
            assert pq.read_table(f"{s3_bucket}/t/part-{i}.parquet", filesystem=s3).equals(table)
        assert proxy.stats["503"] > 0
