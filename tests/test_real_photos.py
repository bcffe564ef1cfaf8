"""Ordinary photos through every stage: sizes below, at and above `gt_size`, portrait and
landscape, strips, an EXIF-rotated phone JPEG, grayscale, RGBA and 16-bit PNGs.

The demo profile (gt_size 256) runs ingest -> evaluate the way `dspo run` does (each stage
pinned to what the earlier stages of the run published), with fewer, cheaper candidates so
it fits CI. Sources smaller than gt_size must come out as padded, recorded crops, and
training must run on them (it used to die with "pairs of one batch must share their image size").
"""
from __future__ import annotations

import pathlib
import time

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from dspo_core.degradation import replay
from pipeline.config import load_config
from pipeline.stage import run_stage
from pipeline.stages import PIPELINE_ORDER, STAGES, pinned_inputs
from storage import DatasetStore, decode_image

torch.set_num_threads(1)

# The demo profile, lighter: two cheap candidate sources (the demo's four include Real-ESRGAN
# x4plus, ~1 s per crop here), four instances, the fast metrics, two steps; gt_size stays 256.
OVERRIDES = {
    "sample.sources": [{"backbone": "realesrgan", "config": {"variant": "animevideov3"}}, {"backbone": "bicubic"}],
    "segment.segmenter.postfilter.max_instances": 4,
    "score.iqa.metrics": ["psnr", "ssim", "piqe"],
    "train.train.max_steps": 2,
    "train.train.eval_every": 2,
    "train.save_every": 2,
    "evaluate.metrics": ["psnr", "ssim", "piqe"],
}
EXIF_ORIENTATION = 0x0112


def _photo(name: str, width: int, height: int) -> Image.Image:
    """A skimage photo tiled (mirrored) to cover the size, then cut: real content at any size."""
    pixels = getattr(skdata, name)()
    pixels = np.concatenate([pixels, pixels[::-1]], axis=0)
    pixels = np.concatenate([pixels, pixels[:, ::-1]], axis=1)
    while pixels.shape[0] < height or pixels.shape[1] < width:
        pixels = np.concatenate([pixels, pixels], axis=0 if pixels.shape[0] < height else 1)
    return Image.fromarray(np.ascontiguousarray(pixels[:height, :width]))


def write_photos(folder: pathlib.Path) -> None:
    """Awkward real-world files; the displayed (width, height) of each is in its line's comment."""
    _photo("astronaut", 256, 256).save(folder / "exactly-gt.png")  # 256 x 256
    _photo("coffee", 384, 300).save(folder / "landscape.jpg", quality=90)  # above on both sides
    _photo("chelsea", 200, 320).save(folder / "portrait.png")  # narrower than 256
    _photo("rocket", 64, 600).save(folder / "tall-strip.png")  # padded 192 columns from 64
    _photo("coffee", 700, 64).save(folder / "wide-strip.jpg", quality=90)  # padded 192 rows from 64
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # stored 400 x 240 landscape, shown 240 x 400 portrait
    _photo("astronaut", 400, 240).save(folder / "phone.jpg", exif=exif, quality=88)
    _photo("camera", 300, 180).convert("L").save(folder / "gray.png")  # shorter than 256
    rgba = _photo("chelsea", 180, 280).convert("RGBA")
    rgba.putalpha(160)
    rgba.save(folder / "rgba.png")  # 180 x 280
    sixteen = np.asarray(_photo("astronaut", 320, 320).convert("L"), dtype=np.uint16) * 257
    Image.fromarray(sixteen).save(folder / "sixteen-bit.png")  # 320 x 320, I;16
    _photo("rocket", 96, 64).save(folder / "thumbnail.png")  # below on both sides


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> pathlib.Path:
    folder = tmp_path_factory.mktemp("photos")
    write_photos(folder)
    return folder


@pytest.fixture(scope="module")
def pipeline_run(photo_folder, tmp_path_factory):
    store = DatasetStore(str(tmp_path_factory.mktemp("store")))
    config = load_config("demo", {**OVERRIDES, "ingest.source": str(photo_folder)})
    results, outputs, seconds = {}, {}, {}
    for name in PIPELINE_ORDER:
        start, cpu = time.perf_counter(), time.process_time()
        results[name] = run_stage(STAGES[name], store, config, inputs=pinned_inputs(name, outputs))
        seconds[name] = (round(time.perf_counter() - start, 1), round(time.process_time() - cpu, 1))
        outputs[STAGES[name].output] = results[name].ref
    print(f"stage (wall s, cpu s): {seconds}")
    return store, config, results


def test_every_photo_is_ingested_with_its_conversions(pipeline_run, photo_folder):
    store, _, results = pipeline_run
    rows = {row["source"]: row for row in store.read_arrow(results["ingest"].ref).to_pylist()}
    assert set(rows) == {path.name for path in photo_folder.iterdir()}
    assert (rows["phone.jpg"]["width"], rows["phone.jpg"]["height"]) == (240, 400)
    assert "EXIF orientation 6" in rows["phone.jpg"]["notes"]
    assert "alpha" in rows["rgba.png"]["notes"] and "I;16" in rows["sixteen-bit.png"]["notes"]


def test_small_sources_become_padded_recorded_crops_that_replay(pipeline_run):
    store, config, results = pipeline_run
    gt_size = config.degrade.degradation.gt_size
    assert gt_size == 256  # the demo's
    sources = {row["image_id"]: row for row in store.read_arrow(results["ingest"].ref).to_pylist()}
    rows = store.read_arrow(results["degrade"].ref).to_pylist()
    assert len(rows) == len(sources)  # every photo gave its crop; none refused for its size
    padded = {}
    for row in rows:
        source = sources[row["image_id"]]
        pads = (max(0, gt_size - source["height"]), max(0, gt_size - source["width"]))
        assert (row["crop_height"], row["crop_width"], row["pad_bottom"], row["pad_right"]) == (gt_size, gt_size, *pads)
        hr = np.asarray(decode_image(row["hr"]))
        assert hr.shape == (gt_size, gt_size, 3)
        if any(pads):
            padded[source["source"]] = pads
            assert "BORDER_REFLECT_101" in row["notes"]
            hr_again, lq_again = replay(row, np.asarray(decode_image(source["image"])))
            np.testing.assert_array_equal(lq_again, np.asarray(decode_image(row["lq"])))
            np.testing.assert_array_equal(hr_again, hr)
        else:
            assert row["notes"] == ""
    assert padded == {"portrait.png": (0, 56), "tall-strip.png": (0, 192), "wide-strip.jpg": (192, 0),
                      "phone.jpg": (0, 16), "gray.png": (76, 0), "rgba.png": (0, 76), "thumbnail.png": (192, 160)}
    metadata = store.manifest(results["degrade"].ref)["metadata"]
    assert (metadata["crops"], metadata["padded_crops"]) == (len(rows), len(padded))


def test_training_and_evaluation_complete_on_the_padded_crops(pipeline_run):
    store, config, results = pipeline_run
    train = store.manifest(results["train"].ref)["metadata"]
    buckets = train["size_buckets"]["train"]
    assert [(b["height"], b["width"]) for b in buckets] == [(256, 256)]  # degrade made every crop gt_size
    assert buckets[0]["pairs"] == train["train_pairs"] > 0
    assert train["steps"] == [config.train.train.max_steps]
    assert train["final_metrics"]["train"]["step"] == config.train.train.max_steps
    evaluation = store.manifest(results["evaluate"].ref)
    assert evaluation["rows"] > 0 and results["evaluate"].ref.startswith("eval_results@")
