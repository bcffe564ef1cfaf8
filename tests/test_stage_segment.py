"""Stage segment: the real SAM code path (tiny random-init checkpoint) and the named fallback."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dspo_core.segment import rle, save_tiny_sam_checkpoint
from pipeline.config import load_config
from pipeline.stage import run_stage
from pipeline.stages import STAGES
from storage import DatasetStore

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def degraded(tmp_path_factory):
    """A store with hr_images and lq_pairs from the test profile (4 images, 128 px crops)."""
    root = tmp_path_factory.mktemp("segment-store")
    store = DatasetStore(str(root / "store"))
    config = load_config("test")
    run_stage(STAGES["ingest"], store, config)
    run_stage(STAGES["degrade"], store, config)
    return store, root


def tiny_sam_overrides(checkpoint: str) -> dict:
    return {
        "segment.segmenter.name": "sam",
        "segment.segmenter.sam.model_type": "custom-tiny",
        "segment.segmenter.sam.checkpoint": checkpoint,
        "segment.segmenter.sam.points_per_side": 4,
        "segment.segmenter.sam.pred_iou_thresh": 0,
        "segment.segmenter.sam.stability_score_thresh": 0,
        "segment.segmenter.sam.box_nms_thresh": 1.0,
        "segment.segmenter.postfilter.max_instances": 6,
    }


def test_tiny_sam_instances(degraded):
    store, root = degraded
    checkpoint = str(save_tiny_sam_checkpoint(root / "sam_custom_tiny.pth"))
    result = run_stage(STAGES["segment"], store, load_config("test", tiny_sam_overrides(checkpoint)))
    manifest = store.manifest(result.ref)
    assert manifest["metadata"]["fallback"] is None
    assert manifest["metadata"]["segmenter"]["segmenter"] == "sam"
    assert manifest["inputs"] == [store.resolve("lq_pairs@latest")]
    table = store.read_arrow(result.ref).to_pandas()
    samples = set(store.read_arrow("lq_pairs@latest", columns=["sample_id"]).column(0).to_pylist())
    assert set(table["sample_id"]) <= samples and len(table) > len(samples)
    assert set(table["source"]) <= {"sam"} and table["predicted_iou"].notna().all()
    for _, group in table.groupby("sample_id"):
        assert abs(group["weight"].sum() - 1) < 1e-9 and len(group) <= 6
        masks = np.stack([rle.decode(mask) for mask in group["mask"]])
        assert masks.shape[1:] == (128, 128)
        assert masks.sum(axis=0).max() <= 1  # disjoint
        np.testing.assert_array_equal(masks.sum(axis=(1, 2)), group["area"].to_numpy())


def test_missing_checkpoint_falls_back_by_name_or_fails(degraded):
    store, root = degraded
    missing = {"segment.segmenter.name": "sam", "segment.segmenter.sam.checkpoint": str(root / "absent.pth")}
    result = run_stage(STAGES["segment"], store, load_config("test", missing))
    metadata = store.manifest(result.ref)["metadata"]
    assert "felzenszwalb superpixels instead of SAM" in metadata["fallback"]
    assert "absent.pth" in metadata["fallback"] and metadata["notes"] == [metadata["fallback"]]
    assert set(store.read_arrow(result.ref, columns=["source"]).column(0).to_pylist()) == {"felzenszwalb"}
    with pytest.raises(FileNotFoundError, match="absent.pth not found and fallback is 'none'"):
        run_stage(STAGES["segment"], store, load_config("test", {**missing, "segment.fallback": "none"}))
