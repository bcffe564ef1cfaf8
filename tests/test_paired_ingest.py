"""`pipeline.paired.ingest_paired` and `dspo ingest --paired`: real-world paired benchmarks
(RealSR V3, DRealSR, the StableSR / OSEDiff test_HR + test_LR crops) -> `lq_pairs`.

Each test builds a small folder in one benchmark's layout (32 x 32 HR, 8 x 8 LR PNGs) with the
mistakes a real copy holds: a mismatched name, a missing LR, a wrong-scale LR, a non-image file,
another scale's folder. Every file must end paired, quarantined (named, with the reason) or
skipped, and the rows must be the pixels of the files.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.datasets import ids_in_splits, rgb_array
from pipeline.paired import PairedIngestError, ingest_paired
from storage import DatasetStore

HR, LR = 32, 8


def write_png(path, side: int | tuple[int, int], seed: int) -> np.ndarray:
    """A random RGB PNG of `side` (square, or (width, height)) at `path`; returns its pixels."""
    width, height = (side, side) if isinstance(side, int) else side
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def pairs_by_note(store: DatasetStore, ref: str) -> dict[str, dict]:
    """The rows of `ref` by the HR file their notes name."""
    rows = store.read_arrow(ref).to_pylist()
    return {row["notes"].split("HR ")[1].split(",")[0]: row for row in rows}


def accounted(manifest: dict) -> None:
    files = manifest["metadata"]["files"]
    assert files["found"] == files["paired"] + files["quarantined"] + files["skipped"], files
    assert files["quarantined"] == len(manifest["metadata"]["quarantine"])
    assert files["skipped"] == len(files["skipped_items"])


def reasons(manifest: dict) -> dict[str, str]:
    return {record["item"]: record["reason"] for record in manifest["metadata"]["quarantine"]}


def realsr_folder(root):
    """RealSR V3: Canon/Test/4 and Nikon/Test/4 pairs, a Test/2 folder, and the usual mistakes."""
    pixels = {}
    for offset, (camera, count) in enumerate((("Canon", 3), ("Nikon", 1))):
        for index in range(1, count + 1):
            folder = root / camera / "Test" / "4"
            name = f"{camera}_{index:03d}"
            seed = 30 * offset + index  # distinct content: equal files would be one pair and a duplicate
            pixels[f"{camera}/Test/4/{name}_HR.png"] = (write_png(folder / f"{name}_HR.png", HR, seed),
                                                         write_png(folder / f"{name}_LR4.png", LR, 100 + seed))
    write_png(root / "Canon/Test/2/Canon_001_HR.png", HR, 7)
    write_png(root / "Canon/Test/2/Canon_001_LR2.png", HR // 2, 8)
    write_png(root / "Canon/Test/4/Canon_004_HR.png", HR, 9)        # mismatched: the LR says 04
    write_png(root / "Canon/Test/4/Canon_04_LR4.png", LR, 10)
    write_png(root / "Canon/Test/4/Canon_005_HR.png", HR, 11)       # no LR at all
    write_png(root / "Canon/Test/4/Canon_006_HR.png", HR, 12)       # LR named x4, but x2 in size
    write_png(root / "Canon/Test/4/Canon_006_LR4.png", HR // 2, 13)
    write_png(root / "Canon/Test/4/Canon_007_LR3.png", LR, 14)      # an LR named for another scale
    (root / "Canon/Test/4/readme.txt").write_text("not an image")
    return pixels


def test_realsr_layout_pairs_by_name_and_names_every_bad_file(tmp_path):
    pixels = realsr_folder(tmp_path / "RealSR_V3")
    store = DatasetStore(f"file://{tmp_path / 'store'}")
    result = ingest_paired(store, str(tmp_path / "RealSR_V3"))
    assert (result.layout, result.benchmark, result.pairs, result.cache_hit) == ("realsr", "RealSR_V3", 4, False)
    rows = pairs_by_note(store, result.ref)
    assert set(rows) == set(pixels)
    for name, (hr, lr) in pixels.items():
        row = rows[name]
        assert np.array_equal(rgb_array(row["hr"]), hr) and np.array_equal(rgb_array(row["lq"]), lr)
        assert (row["split"], row["scale"], row["seed"], row["degradation_params"]) == ("test", 4, None, None)
        assert (row["crop_height"], row["crop_width"], row["pad_bottom"], row["pad_right"]) == (HR, HR, 0, 0)
    manifest = store.manifest(result.ref)
    meta = manifest["metadata"]
    assert (meta["degradation"], meta["benchmark"], meta["split"], meta["scale"]) == ("real", "RealSR_V3", "test", 4)
    accounted(manifest)
    why = reasons(manifest)
    assert why.keys() == {"Canon/Test/4/Canon_004_HR.png", "Canon/Test/4/Canon_04_LR4.png",
                          "Canon/Test/4/Canon_005_HR.png", "Canon/Test/4/Canon_006_HR.png",
                          "Canon/Test/4/Canon_006_LR4.png", "Canon/Test/4/Canon_007_LR3.png"}
    assert why["Canon/Test/4/Canon_004_HR.png"] == "missing LR: no Canon/Test/4/Canon_004_LR4.* for it"
    assert why["Canon/Test/4/Canon_04_LR4.png"] == "missing HR: no Canon/Test/4/Canon_04_HR.* for it"
    assert "wrong scale: LR Canon/Test/4/Canon_006_LR4.png is 16x16, x4 = 64x64, but the HR is 32x32" in \
        why["Canon/Test/4/Canon_006_HR.png"]
    assert why["Canon/Test/4/Canon_007_LR3.png"].startswith("wrong scale: named for x3, not x4")
    skipped = {record["item"]: record["reason"] for record in meta["files"]["skipped_items"]}
    assert skipped["Canon/Test/4/readme.txt"] == "not an image extension (.txt)"
    assert skipped["Canon/Test/2/Canon_001_LR2.png"].startswith("in the x2 folder 2/")
    assert ids_in_splits(store, result.ref, "sample_id", ["test"]) == [row["sample_id"] for row in
                                                                       store.read_arrow(result.ref).to_pylist()]
    again = ingest_paired(store, str(tmp_path / "RealSR_V3"))
    assert (again.ref, again.cache_hit) == (result.ref, True)


def test_drealsr_layout_matches_x1_to_x4_and_crops_a_slightly_larger_hr(tmp_path):
    root = tmp_path / "DRealSR"
    folder = root / "x4" / "Test_x4"
    pixels = {}
    for index in range(3):
        name = f"DSC_{1400 + index}"
        pixels[name] = (write_png(folder / "test_HR" / f"{name}_x1.png", HR, index),
                        write_png(folder / "test_LR" / f"{name}_x4.png", LR, 50 + index))
    odd_hr = write_png(folder / "test_HR" / "DSC_1500_x1.png", (HR + 3, HR + 2), 60)  # as some HR files are
    odd_lr = write_png(folder / "test_LR" / "DSC_1500_x4.png", LR, 61)
    write_png(folder / "test_LR" / "DSC_1600_x4.png", LR, 62)                        # its HR is missing
    write_png(folder / "test_HR" / "DSC_1700.png", HR, 63)                          # not named _x1
    write_png(root / "x2" / "Test_x2" / "test_HR" / "DSC_1400_x1.png", HR, 64)      # another scale's folder
    store = DatasetStore(f"file://{tmp_path / 'store'}")
    result = ingest_paired(store, str(root), benchmark="DRealSR-x4")
    assert (result.layout, result.benchmark, result.pairs) == ("drealsr", "DRealSR-x4", 4)
    rows = pairs_by_note(store, result.ref)
    for name, (hr, lr) in pixels.items():
        row = rows[f"x4/Test_x4/test_HR/{name}_x1.png"]
        assert np.array_equal(rgb_array(row["hr"]), hr) and np.array_equal(rgb_array(row["lq"]), lr)
    cropped = rows["x4/Test_x4/test_HR/DSC_1500_x1.png"]
    assert np.array_equal(rgb_array(cropped["hr"]), odd_hr[:HR, :HR])
    assert np.array_equal(rgb_array(cropped["lq"]), odd_lr)
    assert "HR cropped at the bottom/right from 35x34 to 32x32" in cropped["notes"]
    manifest = store.manifest(result.ref)
    accounted(manifest)
    why = reasons(manifest)
    assert why == {"x4/Test_x4/test_LR/DSC_1600_x4.png": "missing HR: no x4/Test_x4/test_HR/DSC_1600_x1.* for it",
                   "x4/Test_x4/test_HR/DSC_1700.png": "an HR file not named <name>_x1 (DRealSR naming): not paired "
                                                      "(drealsr layout)"}
    assert manifest["metadata"]["benchmark"] == "DRealSR-x4"


def test_hr_lr_folders_refuse_lr_at_hr_size_unless_told_it_is_upsampled(tmp_path):
    root = tmp_path / "RealSR"
    for index in range(3):
        write_png(root / "test_HR" / f"{index:02d}.png", HR, index)
        write_png(root / "test_LR" / f"{index:02d}.png", LR, 10 + index)
    same_size = write_png(root / "test_LR" / "big.png", HR, 20)
    write_png(root / "test_HR" / "big.png", HR, 21)
    (root / "test_LR" / "notes.md").write_text("x")
    store = DatasetStore(f"file://{tmp_path / 'store'}")
    strict = ingest_paired(store, str(root))
    assert (strict.layout, strict.pairs) == ("hr-lr-folders", 3)
    why = reasons(store.manifest(strict.ref))
    assert "wrong scale: LR test_LR/big.png is 32x32, the HR's own size" in why["test_HR/big.png"]
    assert "--lr-upsampled" in why["test_LR/big.png"]
    accounted(store.manifest(strict.ref))

    lenient = ingest_paired(store, str(root), lr_upsampled=True)
    assert lenient.pairs == 4 and lenient.ref != strict.ref
    row = pairs_by_note(store, lenient.ref)["test_HR/big.png"]
    expected = np.asarray(Image.fromarray(same_size).resize((LR, LR), Image.BICUBIC))
    assert np.array_equal(rgb_array(row["lq"]), expected)
    assert "bicubic-downsampled x4 to 8x8 (--lr-upsampled)" in row["notes"]
    assert store.manifest(lenient.ref)["metadata"]["lr_upsampled"] is True


def test_no_pair_is_refused_and_nothing_is_published(tmp_path):
    root = tmp_path / "broken"
    write_png(root / "test_HR" / "a.png", HR, 0)
    write_png(root / "test_LR" / "b.png", LR, 1)
    store = DatasetStore(f"file://{tmp_path / 'store'}")
    with pytest.raises(PairedIngestError, match="no HR/LR pair of x4 in any known layout"):
        ingest_paired(store, str(root))
    with pytest.raises(PairedIngestError, match=r"no HR/LR pair of x4 in the hr-lr-folders layout .*2 files "
                                                r"quarantined \(first: test_HR/a.png: missing LR"):
        ingest_paired(store, str(root), layout="hr-lr-folders")
    with pytest.raises(PairedIngestError, match="unknown paired layout 'div2k'; layouts: realsr, drealsr"):
        ingest_paired(store, str(root), layout="div2k")
    assert not store.exists() or "lq_pairs" not in store.datasets()


def test_cli_ingest_paired_prints_the_ref_and_one_error_line_for_bad_input(tmp_path):
    realsr_folder(tmp_path / "RealSR_V3")
    store = str(tmp_path / "store")
    runner = CliRunner()
    done = runner.invoke(app, ["ingest", "--paired", str(tmp_path / "RealSR_V3"), "--profile", "test",
                               "--store", store])
    assert done.exit_code == 0, done.output
    assert "lq_pairs@v1: 4 pairs of RealSR_V3 (realsr layout, split test, degradation real), 6 files quarantined" \
        in done.stdout
    assert "quarantined ingest --paired: Canon/Test/4/Canon_005_HR.png: missing LR" in done.stderr
    meta = json.loads(json.dumps(DatasetStore(store).manifest("lq_pairs@v1")["metadata"]))
    assert meta["benchmark"] == "RealSR_V3"

    (tmp_path / "empty" / "test_HR").mkdir(parents=True)
    for args, expected in (
        (["--paired", str(tmp_path / "empty")], "no HR/LR pair of x4 in any known layout"),
        (["--paired", str(tmp_path / "RealSR_V3"), "--layout", "div2k"], "unknown paired layout 'div2k'"),
        (["photos", "--paired", str(tmp_path / "RealSR_V3")], "give either SOURCE"),
        (["photos", "--lr-upsampled"], "apply to --paired DIR only"),
    ):
        failed = runner.invoke(app, ["ingest", *args, "--profile", "test", "--store", store])
        lines = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
        assert failed.exit_code == 2 and len(lines) == 1 and expected in lines[0], (args, failed.stderr)
        assert "Traceback" not in failed.stderr

