"""Stages ingest and degrade on real files: bad inputs, conversions, cache, resume after a kill."""
from __future__ import annotations

import io
import json
import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from skimage import data as skdata

from dspo_core.degradation import replay
from pipeline.config import load_config
from pipeline.stage import run_stage
from pipeline.stages import STAGES
from storage import DatasetStore, decode_image

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[1]


def save(path: pathlib.Path, image: Image.Image, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)


@pytest.fixture
def mixed_folder(tmp_path) -> pathlib.Path:
    """Good photos in every awkward encoding, plus bad files; returns the folder."""
    folder = tmp_path / "src"
    photo = Image.fromarray(skdata.astronaut()).resize((160, 128))
    cat = Image.fromarray(skdata.chelsea()).resize((150, 100))
    save(folder / "rgb.png", photo)
    save(folder / "dup-of-rgb.png", photo)
    save(folder / "cmyk.jpg", cat.convert("CMYK"), quality=95)
    sixteen = (np.asarray(photo.convert("L"), dtype=np.uint16) * 257)
    save(folder / "gray16.png", Image.fromarray(sixteen))
    save(folder / "palette.png", cat.quantize(64))
    rgba = photo.convert("RGBA")
    rgba.putalpha(128)
    save(folder / "alpha.png", rgba)
    save(folder / "gray.png", cat.convert("L"))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    save(folder / "rotated.jpg", Image.fromarray(skdata.coffee()).resize((200, 120)), exif=exif, quality=95)
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not an image")
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    (folder / "truncated.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    save(folder / "sub" / "bomb.png", Image.new("L", (3000, 3000)))
    return folder


def test_ingest_mixed_folder(mixed_folder, tmp_path):
    store = DatasetStore(str(tmp_path / "store"))
    config = load_config("test", {"ingest.source": str(mixed_folder), "ingest.max_pixels": 4_000_000,
                                  "ingest.shard_size": 3})
    before = {p: p.read_bytes() for p in mixed_folder.rglob("*") if p.is_file()}
    result = run_stage(STAGES["ingest"], store, config)
    rows = {row["source"]: row for row in store.read_arrow(result.ref).to_pylist()}
    # The same bytes twice are stored once, under the first name in sorted order.
    assert set(rows) == {"dup-of-rgb.png", "cmyk.jpg", "gray16.png", "palette.png", "alpha.png", "gray.png",
                         "rotated.jpg"}
    reasons = {item["item"]: item["reason"] for item in store.manifest(result.ref)["metadata"]["quarantine"]}
    assert set(reasons) == {"empty.png", "text.jpg", "truncated.png", "sub/bomb.png"}
    assert "zero-byte" in reasons["empty.png"] and "not an image" in reasons["text.jpg"]
    assert "truncated" in reasons["truncated.png"] and "pixel limit" in reasons["sub/bomb.png"]
    for row in rows.values():
        image = decode_image(row["image"])
        assert image.mode == "RGB" and (image.width, image.height) == (row["width"], row["height"])
    assert (rows["rotated.jpg"]["width"], rows["rotated.jpg"]["height"]) == (120, 200)
    assert "EXIF orientation 6" in rows["rotated.jpg"]["notes"]
    assert "CMYK" in rows["cmyk.jpg"]["notes"] and "I;16" in rows["gray16.png"]["notes"]
    assert "alpha" in rows["alpha.png"]["notes"] and "palette" in rows["palette.png"]["notes"]
    gray = np.asarray(decode_image(rows["gray16.png"]["image"]))
    np.testing.assert_allclose(gray[..., 0], np.asarray(Image.fromarray(skdata.astronaut()).resize((160, 128))
                                                        .convert("L")), atol=1)
    assert {row["split"] for row in rows.values()} <= {"train", "val", "test"}
    assert {p: p.read_bytes() for p in mixed_folder.rglob("*") if p.is_file()} == before  # nothing touched


def test_cache_hit_and_override_make_new_version(tmp_path):
    store = DatasetStore(str(tmp_path / "store"))
    config = load_config("test")
    first = run_stage(STAGES["ingest"], store, config)
    again = run_stage(STAGES["ingest"], store, config)
    assert (first.cache_hit, again.cache_hit, again.ref) == (False, True, first.ref)
    lq = run_stage(STAGES["degrade"], store, config)
    assert run_stage(STAGES["degrade"], store, config).cache_hit
    changed = run_stage(STAGES["degrade"], store, load_config("test", ["degrade.seed=5"]))
    assert (changed.cache_hit, changed.ref) == (False, "lq_pairs@v2")
    forced = run_stage(STAGES["degrade"], store, config, force=True)
    assert forced.ref == "lq_pairs@v3" and not forced.cache_hit
    assert store.manifest(lq.ref)["inputs"] == [first.ref]
    assert store.read_arrow(forced.ref).column("lq").equals(store.read_arrow(lq.ref).column("lq"))


def test_degrade_rows_replay_exactly(tmp_path):
    store = DatasetStore(str(tmp_path / "store"))
    config = load_config("test", ["degrade.crops_per_image=2"])
    run_stage(STAGES["ingest"], store, config)
    result = run_stage(STAGES["degrade"], store, config)
    hr_by_id = {row["image_id"]: np.asarray(decode_image(row["image"]))
                for row in store.read_arrow("hr_images@latest").to_pylist()}
    rows = store.read_arrow(result.ref).to_pylist()
    assert len(rows) == 2 * len(hr_by_id) and len({row["sample_id"] for row in rows}) == len(rows)
    for row in rows[:4]:
        hr_crop, lq = replay(row, hr_by_id[row["image_id"]])
        np.testing.assert_array_equal(lq, np.asarray(decode_image(row["lq"])))
        np.testing.assert_array_equal(hr_crop, np.asarray(decode_image(row["hr"])))
        assert lq.shape[0] * row["scale"] == row["crop_height"] == 128
        assert json.loads(row["degradation_params"])["seed"] == row["seed"]


def test_degrade_pads_sources_smaller_than_gt_size_and_records_it(mixed_folder, tmp_path):
    store = DatasetStore(str(tmp_path / "store"))
    config = load_config("test", {"ingest.source": str(mixed_folder), "ingest.max_pixels": 4_000_000})
    run_stage(STAGES["ingest"], store, config)
    result = run_stage(STAGES["degrade"], store, config)
    gt_size = config.degrade.degradation.gt_size  # 128: the 150 x 100 cat and the 120 x 200 coffee are smaller
    sources = {row["image_id"]: row for row in store.read_arrow("hr_images@latest").to_pylist()}
    rows = store.read_arrow(result.ref).to_pylist()
    padded = [row for row in rows if row["pad_bottom"] or row["pad_right"]]
    for row in rows:
        source = sources[row["image_id"]]
        assert (row["crop_height"], row["crop_width"]) == (gt_size, gt_size)
        assert (row["pad_bottom"], row["pad_right"]) == (max(0, gt_size - source["height"]),
                                                         max(0, gt_size - source["width"]))
        assert bool(row["notes"]) == (row in padded)
        hr_crop, lq = replay(row, np.asarray(decode_image(source["image"])))
        np.testing.assert_array_equal(lq, np.asarray(decode_image(row["lq"])))
        np.testing.assert_array_equal(hr_crop, np.asarray(decode_image(row["hr"])))
        assert hr_crop.shape == (gt_size, gt_size, 3) and lq.shape == (gt_size // 4, gt_size // 4, 3)
    by_source = {sources[row["image_id"]]["source"]: row for row in rows}
    assert by_source["rotated.jpg"]["notes"] == ("padded 8 px at the right (source 120 px wide) to gt_size 128 "
                                                 "with cv2.BORDER_REFLECT_101")
    assert (by_source["palette.png"]["pad_bottom"], by_source["palette.png"]["pad_right"]) == (28, 0)
    assert not by_source["alpha.png"]["notes"]  # 160 x 128: at gt_size, a plain crop
    metadata = store.manifest(result.ref)["metadata"]
    assert (metadata["crops"], metadata["padded_crops"]) == (len(rows), len(padded)) and len(padded) == 4
    assert any("BORDER_REFLECT_101" in note for note in metadata["notes"]) and not metadata["quarantine"]


def test_killed_stage_redoes_only_missing_shards(tmp_path):
    store_path = tmp_path / "store"
    store = DatasetStore(str(store_path))
    config = load_config("test", ["ingest.shard_size=2"])
    run_stage(STAGES["ingest"], store, config)
    script = (
        "import sys, time\n"
        "from storage import DatasetStore\n"
        "from pipeline.config import load_config\n"
        "from pipeline.stage import StageJob\n"
        "from pipeline.stages import STAGES\n"
        "job = StageJob(STAGES['degrade'], DatasetStore(sys.argv[1]), load_config('test', ['degrade.shard_size=2']))\n"
        "for shard in job.pending_shards()[:3]:\n"
        "    job.run_shard(shard)\n"
        "print('three shards staged', flush=True)\n"
        "time.sleep(600)\n"
    )
    worker = subprocess.Popen([sys.executable, "-c", script, str(store_path)], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(PROJECT_ROOT)))
    assert worker.stdout.readline().strip() == "three shards staged"
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    assert store.versions("lq_pairs") == []

    resumed = run_stage(STAGES["degrade"], store, load_config("test", ["degrade.shard_size=2"]))
    assert resumed.shards_computed == resumed.shards_total - 3
    uninterrupted = run_stage(STAGES["degrade"], store,
                              load_config("test", ["degrade.shard_size=2"]), force=True)
    assert store.read_arrow(resumed.ref).equals(store.read_arrow(uninterrupted.ref))


def test_ingest_from_s3_prefix(s3_server, s3_bucket, tmp_path, monkeypatch, mixed_folder):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    client = s3_server.client()
    for name in ("rgb.png", "cmyk.jpg", "text.jpg"):
        client.upload_file(str(mixed_folder / name), s3_bucket, f"photos/{name}")
    store = DatasetStore(str(tmp_path / "store"))
    result = run_stage(STAGES["ingest"], store, load_config("test", {"ingest.source": f"s3://{s3_bucket}/photos"}))
    assert sorted(store.read_arrow(result.ref, columns=["source"]).column(0).to_pylist()) == ["cmyk.jpg", "rgb.png"]
    assert [item["item"] for item in store.manifest(result.ref)["metadata"]["quarantine"]] == ["text.jpg"]


def test_ingest_from_parquet_and_hf_folders(tmp_path):
    store = DatasetStore(str(tmp_path / "store"))
    first = run_stage(STAGES["ingest"], store, load_config("test"))
    parquet_folder = tmp_path / "as-parquet"
    store.pull(first.ref, str(parquet_folder))
    hf_folder = tmp_path / "as-hf"
    store.pull(first.ref, str(hf_folder), format="hf")
    expected = set(store.read_arrow(first.ref, columns=["image_id"]).column(0).to_pylist())
    # One image per row group: items are read back chunk by chunk, never as a whole table.
    one_per_group = tmp_path / "one-per-group"
    one_per_group.mkdir()
    pq.write_table(store.read_arrow(first.ref), one_per_group / "images.parquet", row_group_size=1)
    for folder in (parquet_folder, hf_folder, one_per_group):
        other = DatasetStore(str(tmp_path / f"store-{folder.name}"))
        result = run_stage(STAGES["ingest"], other, load_config("test", {"ingest.source": str(folder)}))
        # Same pixels re-encoded as PNG by the first ingest: ids are hashes of these bytes, so compare pixels.
        assert result.rows == len(expected)
        original = {row["width"] * 100000 + row["height"] for row in store.read_arrow(first.ref).to_pylist()}
        again = {row["width"] * 100000 + row["height"] for row in other.read_arrow(result.ref).to_pylist()}
        assert again == original
