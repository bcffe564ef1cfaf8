"""The dataset store's contract, run unchanged on file://, memory:// and s3:// (moto's HTTP server)."""
from __future__ import annotations

import json
import socket

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from storage import (
    DatasetNotFoundError, DatasetStore, InvalidNameError, ManifestError, MissingCredentialsError, SchemaMismatchError,
    StorageUnavailableError, StoreNotFoundError, TagExistsError, TagNotFoundError, VersionNotFoundError, image_array,
)
from store_params import s3_options


def make_table(rows: int, offset: int = 0, with_images: bool = False) -> pa.Table:
    columns = {
        "id": pa.array([f"item-{offset + i:05d}" for i in range(rows)]),
        "value": pa.array(np.arange(offset, offset + rows, dtype=np.float64)),
        "split": pa.array(["train" if i % 4 else "test" for i in range(rows)]),
    }
    if with_images:
        rng = np.random.default_rng(offset)
        columns["image"] = image_array(rng.integers(0, 255, (rows, 8, 8, 3), dtype=np.uint8))
    return pa.table(columns)


def test_publish_read_roundtrip_and_versions(store):
    assert store.versions("scores") == []
    ref1 = store.publish("scores", make_table(10))
    ref2 = store.publish("scores", make_table(5, offset=100), inputs=[ref1], fingerprint="fp-2",
                         metadata={"stage": "score", "note": "second"}, run_id="run-7")
    assert (ref1, ref2) == ("scores@v1", "scores@v2")
    assert store.versions("scores") == [1, 2]
    assert store.datasets() == ["scores"]
    assert store.resolve("scores@latest") == "scores@v2"
    assert store.resolve("scores") == "scores@v2"
    assert store.read_arrow("scores@v1").equals(make_table(10))
    assert store.read_arrow("scores@latest").column("value").to_pylist() == [100.0, 101, 102, 103, 104]
    manifest = store.manifest(ref2)
    assert manifest["rows"] == 5 and manifest["inputs"] == ["scores@v1"] and manifest["fingerprint"] == "fp-2"
    assert manifest["run_id"] == "run-7" and manifest["metadata"] == {"stage": "score", "note": "second"}
    assert [field["name"] for field in manifest["schema"]] == ["id", "value", "split"]
    assert all(len(item["sha256"]) == 64 and item["bytes"] > 0 for item in manifest["files"])
    assert manifest["created_at"].endswith("+00:00")


def test_inputs_are_pinned_and_must_exist(store):
    store.publish("a", make_table(3))
    store.publish("a", make_table(3))
    ref = store.publish("b", make_table(3), inputs=["a@latest"])
    assert store.manifest(ref)["inputs"] == ["a@v2"]
    with pytest.raises(DatasetNotFoundError, match="'missing'"):
        store.publish("b", make_table(3), inputs=["missing@latest"])
    assert store.versions("b") == [1]


def test_columns_filter_and_pandas(store):
    ref = store.publish("t", make_table(40))
    table = store.read_arrow(ref, columns=["id", "split"], filter=pc.field("split") == "test")
    assert table.column_names == ["id", "split"] and table.num_rows == 10
    assert store.read_arrow(ref, filter=[("value", ">=", 35)]).num_rows == 5
    frame = store.read_pandas(ref)
    assert list(frame["id"][:2]) == ["item-00000", "item-00001"] and len(frame) == 40


def test_iter_batches_streams_every_part(store):
    store.max_part_bytes = 1  # one part per row group: exercises multi-file versions
    ref = store.publish("big", make_table(300), row_group_rows=64)
    assert len(store.manifest(ref)["files"]) == 5
    batches = list(store.iter_batches(ref, batch_size=50))
    assert max(batch.num_rows for batch in batches) <= 50
    assert pa.Table.from_batches(batches).equals(store.read_arrow(ref))
    assert sum(batch.num_rows for batch in store.iter_batches(ref, filter=pc.field("split") == "test")) == 75


def test_publish_from_batches_and_schema_mismatch(store):
    batches = make_table(20).to_batches(max_chunksize=3)
    ref = store.publish("stream", iter(batches))
    assert store.read_arrow(ref).num_rows == 20
    other = pa.table({"id": ["x"], "value": ["not a float"], "split": ["a"]})
    with pytest.raises(SchemaMismatchError, match="'stream'"):
        store.publish("stream", iter([batches[0], *other.to_batches()]))
    assert store.versions("stream") == [1]


def test_empty_dataset_needs_schema(store):
    schema = make_table(1).schema
    ref = store.publish("empty", iter([]), schema=schema)
    assert store.read_arrow(ref).num_rows == 0 and store.read_arrow(ref).schema.names == schema.names
    with pytest.raises(Exception, match="no rows and no schema"):
        store.publish("empty", iter([]))


def test_tags(store):
    store.publish("p", make_table(2))
    store.publish("p", make_table(2))
    assert store.tag("p@v1", "paper-repro") == "p@v1"
    assert store.resolve("p@paper-repro") == "p@v1"
    assert store.tag("p@v1", "paper-repro") == "p@v1"  # idempotent
    with pytest.raises(TagExistsError, match="already points at v1"):
        store.tag("p@v2", "paper-repro")
    store.tag("p@latest", "paper-repro", force=True)
    assert store.resolve("p@paper-repro") == "p@v2"
    assert store.tags("p") == {"paper-repro": "p@v2"}
    with pytest.raises(TagNotFoundError, match="no tag 'nope'.*paper-repro"):
        store.resolve("p@nope")


def test_find_by_fingerprint(store):
    store.publish("x", make_table(2), fingerprint="aaa")
    store.publish("y", make_table(2), fingerprint="bbb")
    store.publish("y", make_table(2), fingerprint="ccc")
    assert store.find("bbb") == "y@v1"
    assert store.find("ccc", name="y") == "y@v2"
    assert store.find("aaa", name="y") is None
    assert store.find("zzz") is None


@pytest.mark.parametrize("bad", ["", "a/b", "..", "a..b", "x\ny", "tab\tname", "/abs", "-lead", "a@b@c", 7])
def test_bad_names_rejected(store, bad):
    with pytest.raises(InvalidNameError):
        store.publish(bad, make_table(1))
    with pytest.raises(InvalidNameError):
        store.resolve(bad if isinstance(bad, str) and "@" in str(bad) else f"{bad}@v1" if isinstance(bad, str) else bad)


def test_bad_tags_and_refs_rejected(store):
    store.publish("ok", make_table(1))
    for tag in ["", "../x", "a/b", "bad\x00tag", "latest", "v3"]:
        with pytest.raises(InvalidNameError):
            store.tag("ok@v1", tag)
    for ref in ["ok@v0", "ok@", "ok@latest@x", "ok@../x"]:
        with pytest.raises(InvalidNameError):
            store.resolve(ref)


def test_missing_things_give_clear_errors(store):
    with pytest.raises(DatasetNotFoundError, match="'ghost'"):
        store.resolve("ghost@latest")
    with pytest.raises(DatasetNotFoundError, match="'ghost'"):
        store.read_arrow("ghost@v1")
    store.publish("real", make_table(1))
    with pytest.raises(DatasetNotFoundError, match="'ghost' has no published version"):
        store.resolve("ghost@latest")
    with pytest.raises(VersionNotFoundError, match=r"real@v5 does not exist.*latest is v1"):
        store.manifest("real@v5")
    with pytest.raises(InvalidNameError, match=r"invalid dataset ref 'real@' .*invalid tag ''"):
        store.resolve("real@")


def test_opening_and_reading_create_nothing(store, location, tmp_path):
    """A store nothing was published to: a folder or memory root is not there until the first
    publish (reads see nothing, say "no dataset store", and create nothing); an unused prefix
    of an existing bucket is an empty store (S3 has no folders to tell them apart)."""
    uri = location[0]
    is_s3 = uri.startswith("s3://")
    assert store.exists() is is_s3
    assert (store.datasets(), store.versions("x"), store.tags("x"), store.gc(older_than=0)) == ([], [], {}, [])
    if is_s3:
        store.require()
        with pytest.raises(DatasetNotFoundError, match="'x' has no published version") as raised:
            store.resolve("x")
        assert not isinstance(raised.value, StoreNotFoundError)
    else:
        with pytest.raises(StoreNotFoundError, match=rf"no dataset store at {uri}.*so no dataset 'x'"):
            store.resolve("x@latest")
        with pytest.raises(StoreNotFoundError, match=rf"^no dataset store at {uri} \((the folder does not exist|"
                                                     r"nothing was written under it in this process)\)$"):
            store.require()
        store.require(publishing=True)  # a publish creates a folder
        assert not (tmp_path / "store").exists()
    store.publish("x", make_table(1))
    assert store.exists() and store.resolve("x") == "x@v1"
    store.require()


def test_a_file_where_the_store_folder_should_be(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    store = DatasetStore(str(tmp_path / "file"))
    with pytest.raises(StoreNotFoundError, match="it is a file, not a folder"):
        store.require()
    assert store.datasets() == []
    with pytest.raises(OSError):
        store.publish("x", make_table(1))
    assert (tmp_path / "file").read_text() == "not a folder"


def test_s3_store_that_is_not_there_or_cannot_be_reached(s3_server, s3_bucket, monkeypatch, tmp_path):
    """A missing bucket is a missing store even for a publish (buckets are never created); no
    credentials and a closed port are errors that say what to set, naming the store."""
    missing = DatasetStore("s3://no-such-bucket-here/x", s3_options(s3_server))
    assert not missing.exists()
    with pytest.raises(StoreNotFoundError, match=r"no dataset store at s3://no-such-bucket-here/x "
                                                 r"\(no bucket 'no-such-bucket-here' at http://127\.0\.0\.1:"):
        missing.require(publishing=True)
    with pytest.raises(StorageUnavailableError, match="no-such-bucket-here/x/t/_latest: the bucket does not exist"):
        missing.resolve("t")

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    anonymous = DatasetStore(f"s3://{s3_bucket}/x", {"endpoint_url": s3_server.endpoint_url})
    with pytest.raises(MissingCredentialsError, match=rf"open s3://{s3_bucket}/x: no usable AWS credentials "
                                                      r"\(Unable to locate credentials\); set AWS_ACCESS_KEY_ID "
                                                      r"and AWS_SECRET_ACCESS_KEY \(or AWS_PROFILE"):
        anonymous.exists()
    with pytest.raises(MissingCredentialsError, match=rf"read s3://{s3_bucket}/x/t/_latest: .*AWS_ENDPOINT_URL"):
        anonymous.resolve("t")

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    unreachable = DatasetStore(f"s3://{s3_bucket}/x", s3_options(s3_server, closed))
    with pytest.raises(StorageUnavailableError, match=rf"open s3://{s3_bucket}/x: cannot reach the S3 endpoint "
                                                      rf"{closed} .*check AWS_ENDPOINT_URL"):
        unreachable.exists()


def test_unreadable_manifest_is_a_clear_error(store):
    store.publish("broken", make_table(1))
    store.backend.create("broken/_manifests/v=0002.json", b"{not json")
    with pytest.raises(ManifestError, match=r"broken@v2 .* unreadable"):
        store.manifest("broken@v2")
    store.backend.create("broken/_manifests/v=0003.json", json.dumps({"format": "x"}).encode())
    with pytest.raises(ManifestError, match="not a dataset manifest"):
        store.manifest("broken@v3")


def test_secrets_never_reach_manifests(store):
    ref = store.publish("s", make_table(1), metadata={
        "aws_secret_access_key": "SUPERSECRET", "api_token": "tok-123", "endpoint": "https://user:pw@host/x",
        "nested": {"password": "hunter2", "ok": 1},
    })
    raw = store.backend.get("s/_manifests/v=0001.json")[0].decode()
    for secret in ("SUPERSECRET", "tok-123", "user:pw", "hunter2"):
        assert secret not in raw
    assert store.manifest(ref)["metadata"]["nested"]["ok"] == 1
    assert "testing" not in raw  # the S3 test credentials
    assert "testing" not in repr(store) and "testing" not in store.uri


def test_images_roundtrip_to_hf_with_exact_pixels(store, tmp_path):
    table = make_table(6, with_images=True)
    ref = store.publish("imgs", table)
    dataset = store.to_hf_dataset(ref, cache_dir=str(tmp_path / "cache"))
    assert len(dataset) == 6
    rng = np.random.default_rng(0)
    expected = rng.integers(0, 255, (6, 8, 8, 3), dtype=np.uint8)
    for row, pixels in zip(dataset, expected):
        assert row["image"].mode == "RGB"
        np.testing.assert_array_equal(np.asarray(row["image"]), pixels)
    assert dataset[0]["id"] == "item-00000"
    subset = store.to_hf_dataset(ref, columns=["id", "image"], cache_dir=str(tmp_path / "cache"))
    assert subset.column_names == ["id", "image"]


def test_image_bytes_stored_uncompressed(store):
    import pyarrow.parquet as pq

    ref = store.publish("raw", make_table(4, with_images=True))
    path = store.manifest(ref)["files"][0]["path"]
    data = store.backend.read_file(f"raw/{path}")
    metadata = pq.ParquetFile(pa.BufferReader(data)).metadata
    codecs = {metadata.row_group(0).column(i).path_in_schema: metadata.row_group(0).column(i).compression
              for i in range(metadata.num_columns)}
    assert codecs["image.bytes"] == "UNCOMPRESSED"
    assert codecs["id"] == "ZSTD"


def test_pull_parquet_and_hf(store, tmp_path):
    import datasets

    ref = store.publish("pulled", make_table(5, with_images=True))
    folder = store.pull(ref, str(tmp_path / "pq"))
    manifest = json.loads((tmp_path / "pq" / "manifest.json").read_text())
    assert manifest["version"] == 1
    parquet_files = sorted(p for p in (tmp_path / "pq").iterdir() if p.suffix == ".parquet")
    assert len(parquet_files) == len(manifest["files"]) and folder == str(tmp_path / "pq")
    store.pull(ref, str(tmp_path / "hf"), format="hf")
    loaded = datasets.load_from_disk(str(tmp_path / "hf"))
    assert loaded[4]["id"] == "item-00004" and loaded[4]["image"].size == (8, 8)
    with pytest.raises(Exception, match="not empty"):
        store.pull(ref, str(tmp_path / "pq"))


def test_verify_detects_corruption(tmp_path):
    store = DatasetStore(str(tmp_path / "s"))
    ref = store.publish("v", make_table(5))
    store.verify(ref)
    path = tmp_path / "s" / "v" / store.manifest(ref)["files"][0]["path"]
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(Exception, match="does not match its manifest"):
        store.verify(ref)


def test_two_store_objects_share_state(store, location):
    other = DatasetStore(*location)
    store.publish("shared", make_table(1))
    other.publish("shared", make_table(2))
    assert store.resolve("shared@latest") == "shared@v2"
    assert other.read_arrow("shared@v1").num_rows == 1


def test_scratch_tables_are_invisible_and_survive_gc(store):
    scratch = store.scratch("job-abc")
    assert scratch.get("shard-00000") is None
    scratch.put("shard-00001", make_table(3))
    scratch.put("shard-00000", make_table(2))
    assert scratch.names() == ["shard-00000", "shard-00001"]
    assert scratch.get("shard-00001").equals(make_table(3))
    assert store.datasets() == []
    assert store.gc(older_than=0) == []  # scratch has its own, longer threshold
    assert scratch.names() == ["shard-00000", "shard-00001"]
    scratch.clear()
    assert scratch.names() == []


def test_read_where_in_reads_only_matching_row_groups(store):
    ref = store.publish("keyed", make_table(300), row_group_rows=64)
    wanted = ["item-00003", "item-00250", "item-99999"]
    table = store.read_where_in(ref, "id", wanted, columns=["value"])
    assert table.column_names == ["value"] and sorted(table.column("value").to_pylist()) == [3.0, 250.0]
    assert store.read_where_in(ref, "id", ["nope"]).num_rows == 0
    assert store.read_where_in(ref, "id", ["nope"]).schema.names == ["id", "value", "split"]


@pytest.mark.parametrize("batch_rows", [1, 7, 40])
def test_image_row_groups_are_bounded_in_bytes(tmp_path, batch_rows):
    import pyarrow.parquet as pq

    from storage import IMAGE_TYPE
    from storage.writer import IMAGE_ROW_GROUP_BYTES

    rng = np.random.default_rng(batch_rows)
    row_bytes = 512 * 1024
    images = [{"bytes": rng.bytes(row_bytes), "path": None} for _ in range(40)]
    table = pa.table({"id": [f"img-{i:02d}" for i in range(40)], "image": pa.array(images, type=IMAGE_TYPE)})
    store = DatasetStore(str(tmp_path / "s"))
    ref = store.publish("big_images", table.to_batches(max_chunksize=batch_rows))
    files = store.manifest(ref)["files"]
    metadata = [pq.ParquetFile(tmp_path / "s" / "big_images" / item["path"]).metadata for item in files]
    groups = [part.row_group(i) for part in metadata for i in range(part.num_row_groups)]
    assert len(groups) >= 40 * row_bytes // IMAGE_ROW_GROUP_BYTES
    assert all(group.total_byte_size <= IMAGE_ROW_GROUP_BYTES + row_bytes for group in groups)
    assert sum(group.num_rows for group in groups) == 40
    assert store.read_arrow(ref).column("image").to_pylist() == table.column("image").to_pylist()
