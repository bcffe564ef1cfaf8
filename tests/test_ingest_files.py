"""Ingest accounts for every entry of its source: kept, converted, quarantined or skipped, each
with its reason in the published manifest (hostile files made here with Pillow, numpy, tifffile)."""
from __future__ import annotations

import io
import os
import pathlib
import struct

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tifffile
from PIL import Image, ImageCms, features

from pipeline.config import load_config
from pipeline.stage import run_stage
from pipeline.stages import STAGES
from storage import IMAGE_TYPE, DatasetStore, decode_image

SIZE = (96, 80)
# sRGB's primaries adapted to D50, as in the ICC's sRGB IEC61966-2.1 profile.
SRGB_COLORANTS = ((0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141))


def matrix_profile(description: str, colorants=SRGB_COLORANTS, gamma: float | None = None) -> bytes:
    """An ICC v2 RGB display profile (matrix/TRC); gamma None is a linear (identity) curve."""
    def s15(value: float) -> bytes:
        return struct.pack(">i", round(value * 65536))

    def xyz(x: float, y: float, z: float) -> bytes:
        return b"XYZ \0\0\0\0" + s15(x) + s15(y) + s15(z)

    text = description.encode() + b"\0"
    curve = b"curv\0\0\0\0" + (struct.pack(">I", 0) if gamma is None else struct.pack(">IH", 1, round(gamma * 256)))
    tags = [(b"desc", b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + bytes(4 + 4 + 2 + 1 + 67)),
            (b"wtpt", xyz(0.9642, 1.0, 0.8249)), (b"cprt", b"text\0\0\0\0" + b"none\0"),
            *((tag, xyz(*colorant)) for tag, colorant in zip((b"rXYZ", b"gXYZ", b"bXYZ"), colorants)),
            *((tag, curve) for tag in (b"rTRC", b"gTRC", b"bTRC"))]
    offset, table, data = 128 + 4 + 12 * len(tags), b"", b""
    for signature, body in tags:
        table += signature + struct.pack(">II", offset + len(data), len(body))
        data += body + bytes(-len(body) % 4)
    body = struct.pack(">I", len(tags)) + table + data
    header = (struct.pack(">I", 128 + len(body)) + bytes(4) + bytes([2, 0x10, 0, 0]) + b"mntrRGB XYZ " + bytes(12)
              + b"acsp" + bytes(24) + bytes(4) + xyz(0.9642, 1.0, 0.8249)[8:] + bytes(4) + bytes(16) + bytes(28))
    assert len(header) == 128
    return header + body


def srgb_encode(linear: np.ndarray) -> np.ndarray:
    """8-bit sRGB of linear-light values in [0, 1] (IEC 61966-2-1)."""
    encoded = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * np.power(linear, 1 / 2.4) - 0.055)
    return np.round(encoded * 255)


def gradient() -> np.ndarray:
    """An RGB test picture: red rises left to right, green top to bottom, blue constant."""
    width, height = SIZE
    red = np.tile(np.linspace(0, 255, width).round().astype(np.uint8), (height, 1))
    green = np.tile(np.linspace(0, 255, height).round().astype(np.uint8)[:, None], (1, width))
    return np.dstack([red, green, np.full_like(red, 64)])


def encoded(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def tiff_of(array: np.ndarray, orientation: int = 1) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, extratags=[(274, "H", 1, orientation, True)])
    return buffer.getvalue()


@pytest.fixture
def hostile_folder(tmp_path) -> tuple[pathlib.Path, int]:
    """A source folder of awkward files; returns it and the number of entries it holds."""
    folder = tmp_path / "src"
    (folder / "sub").mkdir(parents=True)
    colours = [Image.new("RGB", SIZE, colour) for colour in ((200, 30, 30), (30, 200, 30), (30, 30, 200))]
    files = {
        "frames.gif": encoded(colours[0], "GIF", save_all=True, append_images=colours[1:]),
        "frames.apng": encoded(colours[0], "PNG", save_all=True, append_images=colours[1:2]),
        "pages.tiff": encoded(colours[0], "TIFF", save_all=True, append_images=colours[1:]),
        "linear-srgb.png": encoded(Image.fromarray(gradient()), "PNG", icc_profile=matrix_profile("Linear sRGB")),
        "lab-profile.png": encoded(Image.fromarray(gradient()), "PNG",
                                   icc_profile=ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()),
        "bad-icc.png": encoded(Image.fromarray(gradient()), "PNG", icc_profile=b"not a profile"),
        "tagged-srgb.png": encoded(Image.fromarray(gradient()), "PNG",
                                   icc_profile=ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()),
        "photo.avif": encoded(colours[1], "AVIF") if features.check("avif") else b"\0\0\0\x1cftypavif\0\0\0\0avifmif1",
        "phone.heic": b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + bytes(64),
        "still.jxl": b"\xff\x0a" + bytes(64),
        "nan.tiff": tiff_of(np.where(np.eye(80, 96, dtype=bool), np.nan, 0.5).astype(np.float32)),
        "unit-float.tiff": tiff_of(np.full(SIZE[::-1], 0.5, dtype=np.float32)),
        "levels-float.tiff": tiff_of(np.full(SIZE[::-1], 200.0, dtype=np.float32)),
        "hdr-float.tiff": tiff_of(np.linspace(0, 1000, 96 * 80, dtype=np.float32).reshape(80, 96)),
        "float64.tiff": tiff_of(np.full(SIZE[::-1], 0.5)),
        "negative.tiff": tiff_of(np.arange(-5, 96 * 80 - 5, dtype=np.int32).reshape(80, 96)),
        "big-uint32.tiff": tiff_of(np.full(SIZE[::-1], 3_000_000_000, dtype=np.uint32)),
        "int16-rotated.tiff": tiff_of(np.full(SIZE[::-1], 32767, dtype=np.int16), orientation=6),
        "int8.tiff": tiff_of(np.full(SIZE[::-1], 5, dtype=np.int8)),
        "notes.txt": b"not an image",
        "README": b"no extension",
        ".DS_Store": b"\0\0\0\1Bud1",
        "sub/plain.png": encoded(Image.fromarray(gradient()), "PNG"),
        ".thumbs/a.png": encoded(colours[0], "PNG"),
        ".thumbs/b.png": encoded(colours[1], "PNG"),
    }
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    (folder / "loop.png").symlink_to("loop.png")
    (folder / "gone.png").symlink_to("missing.png")
    (folder / "sub" / "back").symlink_to("..")
    (folder / "zz-alias.png").symlink_to("sub/plain.png")
    os.mkfifo(folder / "pipe.png")
    # Entries: every file above except the two in .thumbs/ (one entry), plus the 4 symlinks and the FIFO.
    return folder, len(files) - 2 + 1 + 5


def run_ingest(tmp_path, source: str, **overrides):
    store = DatasetStore(str(tmp_path / "store"))
    result = run_stage(STAGES["ingest"], store, load_config("test", {"ingest.source": source, **overrides}))
    metadata = store.manifest(result.ref)["metadata"]
    rows = {row["source"]: row for row in store.read_arrow(result.ref).to_pylist()}
    quarantined = {item["item"]: item["reason"] for item in metadata["quarantine"]}
    skipped = {item["item"]: item["reason"] for item in metadata["files"]["skipped_items"]}
    return metadata["files"], rows, quarantined, skipped


def pixels(row: dict) -> np.ndarray:
    return np.asarray(decode_image(row["image"]), dtype=np.float64)


def test_every_file_has_an_outcome_and_a_reason(hostile_folder, tmp_path):
    folder, entries = hostile_folder
    files, rows, quarantined, skipped = run_ingest(tmp_path, str(folder), **{"ingest.shard_size": 4})

    assert "animated GIF, 3 frames: frame 0 kept" in rows["frames.gif"]["notes"]
    assert "animated PNG, 2 frames: frame 0 kept" in rows["frames.apng"]["notes"]
    assert "multi-page TIFF, 3 pages: page 0 kept" in rows["pages.tiff"]["notes"]
    for name in ("frames.gif", "frames.apng", "pages.tiff"):
        np.testing.assert_allclose(pixels(rows[name]).mean(axis=(0, 1)), (200, 30, 30), atol=3)

    # A linear-light profile with sRGB's primaries: converting to sRGB is the sRGB tone curve alone.
    assert "ICC profile 'Linear sRGB' -> sRGB" in rows["linear-srgb.png"]["notes"]
    np.testing.assert_allclose(pixels(rows["linear-srgb.png"]), srgb_encode(gradient() / 255.0), atol=2)
    assert "ICC profile 'Lab identity built-in' (Lab) not applied" in rows["lab-profile.png"]["notes"]
    np.testing.assert_array_equal(pixels(rows["lab-profile.png"]), gradient())
    assert "ICC profile unreadable" in rows["bad-icc.png"]["notes"] and "not applied" in rows["bad-icc.png"]["notes"]
    assert rows["tagged-srgb.png"]["notes"] == "" and rows["sub/plain.png"]["notes"] == ""
    np.testing.assert_array_equal(pixels(rows["tagged-srgb.png"]), gradient())

    if features.check("avif"):
        np.testing.assert_allclose(pixels(rows["photo.avif"]).mean(axis=(0, 1)), (30, 200, 30), atol=4)
    else:
        assert quarantined["photo.avif"].startswith("no decoder for AVIF")
    assert quarantined["phone.heic"].startswith("no decoder for HEIC/HEIF")
    assert quarantined["still.jxl"].startswith("no decoder for JPEG XL")
    assert quarantined["nan.tiff"].startswith("float samples with 80 NaN/inf of 7680")
    assert "float [0, 1] -> 8-bit" in rows["unit-float.tiff"]["notes"]
    np.testing.assert_array_equal(pixels(rows["unit-float.tiff"]), 128)
    assert "float [0, 255] -> 8-bit" in rows["levels-float.tiff"]["notes"]
    np.testing.assert_array_equal(pixels(rows["levels-float.tiff"]), 200)
    assert quarantined["hdr-float.tiff"].startswith("float samples span [0, 1000], outside [0, 1] and [0, 255]")
    assert quarantined["float64.tiff"].startswith("no decoder for this TIFF's sample layout")
    assert quarantined["negative.tiff"].startswith("negative samples (int32, down to -5)")
    assert quarantined["big-uint32.tiff"].startswith("uint32 samples above 2147483647")
    # Read with the TIFF's declared type even when the EXIF orientation turns the image.
    rotated = rows["int16-rotated.tiff"]
    assert "int16 -> 8-bit (scaled by 32767)" in rotated["notes"] and "EXIF orientation 6" in rotated["notes"]
    assert (rotated["width"], rotated["height"]) == SIZE[::-1]
    np.testing.assert_array_equal(pixels(rotated), 255)
    assert quarantined["int8.tiff"].startswith("signed 8-bit samples (TIFF SampleFormat 2)")

    assert skipped == {
        "notes.txt": "not an image extension (.txt)",
        "README": "no file extension",
        ".DS_Store": "hidden file",
        ".thumbs/": "hidden folder: its 2 files not read",
        "loop.png": "symlink loop",
        "sub/back/": "symlink loop (points back to an enclosing folder)",
        "gone.png": "broken symlink (its target is missing)",
        "pipe.png": "not a regular file (FIFO, socket or device)",
        "zz-alias.png": "duplicate content of sub/plain.png",
    }
    converted = {name for name, row in rows.items() if row["notes"]}
    assert files == {"found": entries, "kept": len(rows) - len(converted), "converted": len(converted),
                     "quarantined": len(quarantined), "skipped": len(skipped),
                     "skipped_items": files["skipped_items"]}
    assert len(rows) + len(quarantined) + len(skipped) == entries


def test_s3_prefix_accounts_for_every_object(s3_server, s3_bucket, tmp_path, monkeypatch):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    client = s3_server.client()
    objects = {
        "photos/a.PNG": encoded(Image.fromarray(gradient()), "PNG"),
        "photos/copy-of-a.png": encoded(Image.fromarray(gradient()), "PNG"),
        "photos/nan.tif": tiff_of(np.full(SIZE[::-1], np.nan, dtype=np.float32)),
        "photos/captions.json": b"{}",
        "photos/._a.png": b"AppleDouble",
        "photos/.cache/x.png": b"x",
        "photos/.cache/y.png": b"y",
        "photos/empty-folder/": b"",  # a console's folder marker: not a file
    }
    for key, data in objects.items():
        client.put_object(Bucket=s3_bucket, Key=key, Body=data)
    files, rows, quarantined, skipped = run_ingest(tmp_path, f"s3://{s3_bucket}/photos")
    assert set(rows) == {"a.PNG"} and rows["a.PNG"]["notes"] == ""
    assert quarantined == {"nan.tif": "float samples with 7680 NaN/inf of 7680: no faithful 8-bit form"}
    assert skipped == {"captions.json": "not an image extension (.json)", "._a.png": "hidden file",
                       ".cache/": "hidden folder: its 2 files not read", "copy-of-a.png": "duplicate content of a.PNG"}
    assert {key: files[key] for key in ("found", "kept", "converted", "quarantined", "skipped")} == \
        {"found": 6, "kept": 1, "converted": 0, "quarantined": 1, "skipped": 4}


def test_table_sources_account_for_every_row_and_file(tmp_path):
    good, other = encoded(Image.fromarray(gradient()), "PNG"), encoded(Image.new("RGB", SIZE, "navy"), "PNG")
    nan = tiff_of(np.full(SIZE[::-1], np.nan, dtype=np.float32))
    cells = [{"bytes": good, "path": "img.png"}, {"bytes": other, "path": "img.png"}, {"bytes": None, "path": "x.png"},
             None, {"bytes": nan, "path": None}, {"bytes": good, "path": "again.png"}]
    folder = tmp_path / "table"
    folder.mkdir()
    pq.write_table(pa.table({"image": pa.array(cells, type=IMAGE_TYPE)}), folder / "part-0.parquet", row_group_size=2)
    pq.write_table(pa.table({"caption": ["no images here"]}), folder / "captions.parquet")
    (folder / "broken.parquet").write_bytes(b"PAR1 not really")
    (folder / "dataset_info.json").write_text("{}")
    (folder / "notes.md").write_text("about this table")
    files, rows, quarantined, skipped = run_ingest(tmp_path, str(folder))
    assert set(rows) == {"img.png", "img.png (part-0.parquet#1)"}
    assert quarantined == {"part-0.parquet#4": "float samples with 7680 NaN/inf of 7680: no faithful 8-bit form"}
    assert skipped.pop("broken.parquet").startswith("unreadable table file: ")
    assert skipped == {
        "captions.parquet": "table file without an image column ({bytes, path} struct): its rows not read",
        "dataset_info.json": "table metadata",
        "notes.md": "not a table data file (.md)",
        "x.png": "unreadable: row 2 of part-0.parquet has no image bytes (a null cell, or only a path)",
        "part-0.parquet#3": "unreadable: row 3 of part-0.parquet has no image bytes (a null cell, or only a path)",
        "again.png": "duplicate content of img.png",
    }
    assert (files["found"], files["kept"], files["quarantined"], files["skipped"]) == (10, 2, 1, 7)


def test_saved_hf_dataset_metadata_is_skipped_by_name(tmp_path):
    import datasets

    folder = tmp_path / "hf"
    images = [Image.fromarray(gradient()), Image.new("RGB", SIZE, "olive")]
    datasets.Dataset.from_dict({"image": images}, features=datasets.Features({"image": datasets.Image()})) \
        .save_to_disk(str(folder))
    files, rows, quarantined, skipped = run_ingest(tmp_path, str(folder))
    assert len(rows) == 2 and not quarantined
    assert skipped == {"dataset_info.json": "table metadata", "state.json": "table metadata"}
    assert files["found"] == 4
