"""Tests of dspo_core.segment: COCO RLE, post-filter, tiny SAM (real code path), felzenszwalb, config, errors."""

import ast
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from skimage import data as skdata
from skimage import transform

from dspo_core.segment import (
    SEGMENTERS,
    FelzenszwalbSegmenter,
    InstanceRecord,
    InvalidImageError,
    MissingCheckpointError,
    PostFilterConfig,
    Proposal,
    SamConfig,
    SamSegmenter,
    SegmenterConfig,
    build_segmenter,
    load_sam,
    postfilter,
    rle,
    save_tiny_sam_checkpoint,
    to_records,
)

torch.set_num_threads(1)

TINY_SAM = {  # random weights give no masks at SAM's default thresholds (FIELD-NOTES)
    "model_type": "custom-tiny",
    "points_per_side": 4,
    "pred_iou_thresh": 0,
    "stability_score_thresh": 0,
    "box_nms_thresh": 1.0,
}


def _resize(image, h, w):
    return (transform.resize(image, (h, w), anti_aliasing=True) * 255).round().astype(np.uint8)


def _box(lo, hi, n=25):
    m = np.zeros((n, n), dtype=bool)
    m[lo:hi, lo:hi] = True
    return m


def _bbox_of(mask):
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [0, 0, 0, 0]
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


# ----------------------------------------------------------------------------- RLE

# Strings written by pycocotools.mask.encode (25x25 boxes; unions via mask.merge), as used by
# pytorchcocotools' tests against pycocotools, and a real 427x640 COCO annotation.
PYCOCOTOOLS_CASES = [
    (_box(0, 5), "05d00000000d?"),
    (_box(5, 10), "R45d00000000b;"),
    (_box(20, 25), "X`05d00000000"),
    (_box(0, 25), "0ac0"),
    (_box(5, 10) | _box(10, 15), "R45d0000000050K0000000`7"),
    (_box(5, 15), "R4:?00000000000000000e7"),
]
COCO_427x640 = "\\`_3;j<6M3E_OjCd0T<:O1O2O001O00001O00001O001O0000O1K6J5J6A^C0g<N=O001O0O2Omk^4"


@pytest.mark.parametrize("mask,expected", PYCOCOTOOLS_CASES)
def test_rle_matches_pycocotools_strings(mask, expected):
    encoded = rle.encode(mask)
    assert encoded == {"size": [25, 25], "counts": expected}
    assert np.array_equal(rle.decode(encoded), mask)
    assert np.array_equal(rle.decode({"size": [25, 25], "counts": expected.encode()}), mask)  # bytes, as pycocotools
    assert rle.area(encoded) == mask.sum()
    assert rle.to_bbox(encoded) == _bbox_of(mask)


def test_rle_real_coco_annotation_round_trips():
    obj = {"size": [427, 640], "counts": COCO_427x640}
    mask = rle.decode(obj)
    assert mask.shape == (427, 640) and mask.dtype == bool
    assert rle.encode(mask)["counts"] == COCO_427x640
    assert rle.area(obj) == mask.sum() == 792
    assert rle.to_bbox(obj) == _bbox_of(mask) == [267, 156, 30, 40]


def test_rle_hand_derived_strings():
    # Each run length is written 5 bits per char (+48), 0x20 = more chars follow, 0x10 = sign bit of the last char.
    assert rle.encode(np.zeros((1, 1), bool))["counts"] == "1"  # counts [1]
    assert rle.encode(np.ones((1, 1), bool))["counts"] == "01"  # counts [0, 1]: always starts with zeros
    assert rle.encode(np.zeros((0, 0), bool))["counts"] == "0"  # pycocotools writes one empty run
    # 10000 = 0b10011_10000_10000... low group 16 has bit 0x10 -> needs more: 16|32 -> '`', 24|32 -> 'h', 9 -> '9'
    assert rle.encode(np.zeros((100, 100), bool))["counts"] == "`h9"
    # From the 4th run on, the delta to the run two back is written: 3 - 10 = -7 -> 25 (0x19) -> 'I'
    row = np.array([[0] + [1] * 10 + [0] + [1] * 3], dtype=bool)
    assert rle.mask_to_counts(row) == [1, 10, 1, 3]
    assert rle.encode(row)["counts"] == "1:1I"
    assert rle.counts_from_string("1:1I") == [1, 10, 1, 3]
    # Column-major (Fortran) order: [[0, 1], [0, 1]] -> 2 zeros (column 0), then 2 ones.
    assert rle.mask_to_counts(np.array([[0, 1], [0, 1]])) == [2, 2]
    assert rle.mask_to_counts(np.array([[0, 0], [1, 1]])) == [1, 1, 1, 1]


@pytest.mark.parametrize("shape", [(1, 1), (1, 37), (29, 1), (13, 17), (64, 48), (101, 3)])
@pytest.mark.parametrize("density", [0.02, 0.5, 0.97])
def test_rle_random_round_trip(shape, density):
    from segment_anything.utils.amg import mask_to_rle_pytorch

    rng = np.random.default_rng(hash((shape, density)) % 2**32)
    mask = rng.random(shape) < density
    encoded = rle.encode(mask)
    assert encoded["size"] == list(shape) and isinstance(encoded["counts"], str)
    assert np.array_equal(rle.decode(encoded), mask)
    assert rle.area(encoded) == mask.sum()
    assert rle.to_bbox(encoded) == _bbox_of(mask)
    counts = rle.mask_to_counts(mask)
    assert rle.counts_from_string(encoded["counts"]) == counts
    # segment-anything's own uncompressed COCO RLE (torch, Fortran order) agrees
    assert mask_to_rle_pytorch(torch.from_numpy(mask)[None])[0]["counts"] == counts
    assert np.array_equal(rle.decode({"size": list(shape), "counts": counts}), mask)


@pytest.mark.parametrize("shape", [(7, 5), (256, 256)])
def test_rle_empty_and_full(shape):
    h, w = shape
    empty, full = rle.encode(np.zeros(shape, bool)), rle.encode(np.ones(shape, bool))
    assert rle.mask_to_counts(np.zeros(shape)) == [h * w]
    assert rle.mask_to_counts(np.ones(shape)) == [0, h * w]
    assert rle.area(empty) == 0 and rle.to_bbox(empty) == [0, 0, 0, 0] and not rle.decode(empty).any()
    assert rle.area(full) == h * w and rle.to_bbox(full) == [0, 0, w, h] and rle.decode(full).all()


def test_rle_bbox_of_runs_wrapping_columns():
    mask = np.zeros((10, 4), bool)
    mask[8:, 1] = True
    mask[:2, 2] = True  # one run from (8, 1) to (1, 2): bbox spans all rows
    assert len(rle.mask_to_counts(mask)) == 3
    assert rle.to_bbox(rle.encode(mask)) == _bbox_of(mask) == [1, 0, 2, 10]


def test_rle_rejects_bad_input():
    with pytest.raises(ValueError, match="sum to"):
        rle.decode({"size": [2, 2], "counts": [1, 2]})
    with pytest.raises(ValueError, match="invalid character"):
        rle.decode({"size": [2, 2], "counts": "4 "})
    with pytest.raises(ValueError, match="not a COCO RLE"):
        rle.decode({"counts": "4"})
    with pytest.raises(ValueError, match="2-D"):
        rle.encode(np.zeros((2, 2, 2)))


# ----------------------------------------------------------------------------- post-filter


def _prop(mask, iou=None, stab=None, source="sam"):
    return Proposal(mask=mask, source=source, predicted_iou=iou, stability_score=stab)


def test_postfilter_priority_disjoint_k_and_remainder():
    big = np.zeros((10, 10), bool)
    big[:, :6] = True  # 60 px, low score
    mid = np.zeros((10, 10), bool)
    mid[:, 4:9] = True  # 50 px, overlaps big in columns 4-5, high score
    tiny = np.zeros((10, 10), bool)
    tiny[0, 9] = True  # 1 px, best score
    props = [_prop(big, 0.5, 0.9), _prop(mid, 0.9, 0.9), _prop(tiny, 0.99, 0.99)]

    by_score = postfilter(props, 10, 10, PostFilterConfig(min_area_share=0.05, max_instances=None))
    assert [p.mask.sum() for p in by_score] == [50, 40]  # tiny dropped; big loses the overlap to mid
    assert not (by_score[0].mask & by_score[1].mask).any()

    by_area = postfilter(props, 10, 10, PostFilterConfig(min_area_share=0.05, max_instances=None, priority="area"))
    assert [p.mask.sum() for p in by_area] == [60, 30]

    overlapping = postfilter(props, 10, 10, PostFilterConfig(min_area_share=0.05, max_instances=None, disjoint=False))
    assert [p.mask.sum() for p in overlapping] == [50, 60]

    top1 = postfilter(props, 10, 10, PostFilterConfig(min_area_share=0.0, max_instances=1, remainder=True))
    assert [p.source for p in top1] == ["sam", "remainder"]
    assert np.array_equal(top1[1].mask, ~tiny)

    # what is left after disjointness must still pass min_area_share: big keeps 40 px < 45
    strict = postfilter(props, 10, 10, PostFilterConfig(min_area_share=0.45, max_instances=None))
    assert [p.mask.sum() for p in strict] == [50]


# ----------------------------------------------------------------------------- real images


def check_records(records, image, postfilter_config: PostFilterConfig, source: str):
    """The invariants every segmenter's output must satisfy."""
    h, w = image.shape[:2]
    min_px = postfilter_config.min_area_share * h * w
    assert records, "expected at least one instance"
    masks = []
    for r in records:
        assert isinstance(r, InstanceRecord)
        assert set(r.mask) == {"size", "counts"} and r.mask["size"] == [h, w] and isinstance(r.mask["counts"], str)
        m = r.decode_mask()
        assert m.shape == (h, w) and m.dtype == bool
        assert rle.encode(m) == r.mask  # round trip
        assert r.area == int(m.sum()) == rle.area(r.mask) and r.area >= min_px and r.area > 0
        assert r.bbox == _bbox_of(m) == rle.to_bbox(r.mask)
        assert all(isinstance(v, int) for v in r.bbox)
        assert r.source in (source, "remainder")
        if r.source == "sam":
            assert isinstance(r.predicted_iou, float) and isinstance(r.stability_score, float)
        else:
            assert r.predicted_iou is None and r.stability_score is None
        json.dumps(r.to_dict())
        masks.append(m)
    stack = np.stack(masks)
    if postfilter_config.disjoint:
        assert stack.sum(axis=0).max() <= 1, "a pixel belongs to two instances"
    areas = np.array([r.area for r in records], dtype=np.float64)
    weights = np.array([r.weight for r in records])
    assert abs(weights.sum() - 1.0) < 1e-9
    np.testing.assert_allclose(weights, areas / areas.sum(), rtol=0, atol=1e-15)
    non_rem = [r for r in records if r.source != "remainder"]
    if postfilter_config.max_instances is not None:
        assert len(non_rem) <= postfilter_config.max_instances
    assert [r.source for r in records].count("remainder") <= 1
    if records[-1].source == "remainder":
        covered = np.zeros((h, w), bool)
        for r in non_rem:
            covered |= r.decode_mask()
        assert np.array_equal(masks[-1], ~covered)
        if postfilter_config.disjoint:
            assert (stack.sum(axis=0) == 1).all()  # the instances tile the image
    return stack


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return save_tiny_sam_checkpoint(tmp_path_factory.mktemp("sam") / "sam_custom_tiny.pth", seed=0)


@pytest.fixture(scope="module")
def astronaut():
    return _resize(skdata.astronaut(), 128, 128)


SAM_FILTER = PostFilterConfig(min_area_share=0.02, max_instances=5, disjoint=True, remainder=True)


@pytest.fixture(scope="module")
def tiny_sam(tiny_ckpt):
    return build_segmenter(
        SegmenterConfig(name="sam", sam=SamConfig(checkpoint=str(tiny_ckpt), **TINY_SAM), postfilter=SAM_FILTER)
    )


@pytest.fixture(scope="module")
def astronaut_props(tiny_sam, astronaut):
    return tiny_sam.propose(astronaut)


def test_tiny_sam_on_astronaut(tiny_sam, astronaut, astronaut_props):
    assert isinstance(tiny_sam, SamSegmenter)
    props = astronaut_props
    raw_areas = [int(p.mask.sum()) for p in props]
    min_px = SAM_FILTER.min_area_share * astronaut.shape[0] * astronaut.shape[1]
    # the filters are actually exercised: more masks than K, overlapping masks
    assert len(props) > SAM_FILTER.max_instances
    assert np.stack([p.mask for p in props]).sum(axis=0).max() > 1

    records = tiny_sam.segment(astronaut)
    check_records(records, astronaut, SAM_FILTER, "sam")
    assert records[-1].source == "remainder" and len(records) == SAM_FILTER.max_instances + 1
    # the first instance is the best-scoring raw mask large enough, untouched by disjointness
    best = min(
        (p for p, a in zip(props, raw_areas) if a >= min_px), key=lambda p: (-p.predicted_iou, -p.stability_score)
    )
    assert np.array_equal(records[0].decode_mask(), best.mask)
    assert records[0].predicted_iou == pytest.approx(best.predicted_iou)
    scores = [(r.predicted_iou, r.stability_score) for r in records[:-1]]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("share", [0.0, 0.02, 0.1, 0.3, 0.45])
@pytest.mark.parametrize("k", [None, 3])
def test_tiny_sam_area_and_k_filters(astronaut, astronaut_props, share, k):
    h, w = astronaut.shape[:2]
    cfg = PostFilterConfig(min_area_share=share, max_instances=k, remainder=share < 0.3)
    records = to_records(postfilter(astronaut_props, h, w, cfg))
    check_records(records, astronaut, cfg, "sam")
    raw_areas = np.array([p.mask.sum() for p in astronaut_props])
    if share == 0.45:  # random-init masks cover 34-69% of the image: the floor drops some outright
        assert (raw_areas < share * h * w).any() and len(records) < len(astronaut_props)


def test_tiny_sam_overlapping_and_non_square(tiny_ckpt, astronaut):
    cfg = PostFilterConfig(min_area_share=0.01, max_instances=None, disjoint=False, priority="area")
    seg = build_segmenter(
        {"name": "sam", "sam": {"checkpoint": str(tiny_ckpt), **TINY_SAM}, "postfilter": cfg.model_dump()}
    )
    image = _resize(skdata.astronaut(), 96, 160)  # ResizeLongestSide -> 154x256 inside, masks back at 96x160
    records = seg.segment(image)
    stack = check_records(records, image, cfg, "sam")
    assert stack.sum(axis=0).max() > 1  # overlaps kept
    assert [r.area for r in records] == sorted((r.area for r in records), reverse=True)


def test_tiny_sam_is_deterministic(tiny_sam, tiny_ckpt, astronaut):
    first = tiny_sam.segment(astronaut)
    again = build_segmenter(tiny_sam.config).segment(astronaut.copy())
    assert [r.to_dict() for r in first] == [r.to_dict() for r in again]


def test_tiny_sam_checkpoint_and_describe(tiny_sam, tiny_ckpt, tmp_path):
    # same seed and file name, same bytes (torch.save stores the file stem inside); loads back exactly
    again = save_tiny_sam_checkpoint(tmp_path / "sam_custom_tiny.pth", seed=0)
    assert again.read_bytes() == Path(tiny_ckpt).read_bytes()
    saved = torch.load(tiny_ckpt, weights_only=True)
    loaded = load_sam("custom-tiny", tiny_ckpt).state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert loaded["image_encoder.patch_embed.proj.weight"].shape == (64, 3, 16, 16)

    desc = json.loads(json.dumps(tiny_sam.describe()))
    assert desc["segmenter"] == "sam" and desc["library"]["name"] == "segment-anything"
    sam = desc["sam"]
    assert sam["checkpoint_file"] == "sam_custom_tiny.pth"
    assert sam["checkpoint_sha256"] == hashlib.sha256(Path(tiny_ckpt).read_bytes()).hexdigest()[:16]
    expected_keys = set(SamConfig.model_fields) - {"checkpoint"}
    assert expected_keys <= set(sam) and sam["points_per_side"] == 4 and sam["device"] == "cpu"
    assert desc["postfilter"] == SAM_FILTER.model_dump()
    assert str(tiny_ckpt.parent) not in json.dumps(desc)  # no machine paths in manifests


def test_bad_checkpoints(tmp_path):
    with pytest.raises(MissingCheckpointError, match=r"'vit_b' needs a checkpoint.*model-checkpoints.*felzenszwalb"):
        build_segmenter(SegmenterConfig(name="sam"))
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(MissingCheckpointError, match=r"nowhere\.pth \(model_type 'vit_h'\) does not exist"):
        build_segmenter({"name": "sam", "sam": {"model_type": "vit_h", "checkpoint": str(missing)}})
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a 'custom-tiny' SAM checkpoint"):
        load_sam("custom-tiny", garbage)
    wrong = tmp_path / "wrong.pth"
    torch.save({"image_encoder.pos_embed": torch.zeros(1)}, wrong)
    with pytest.raises(ValueError, match="not a 'custom-tiny' SAM checkpoint"):
        load_sam("custom-tiny", wrong)


FZ_FILTER = PostFilterConfig(min_area_share=0.01, max_instances=8, remainder=True)


def test_felzenszwalb_on_chelsea():
    image = skdata.chelsea()
    seg = build_segmenter(SegmenterConfig(name="felzenszwalb", postfilter=FZ_FILTER))
    assert isinstance(seg, FelzenszwalbSegmenter)
    records = seg.segment(image)
    check_records(records, image, FZ_FILTER, "felzenszwalb")
    assert len(records) == FZ_FILTER.max_instances + 1 and records[-1].source == "remainder"
    areas = [r.area for r in records[:-1]]
    assert areas == sorted(areas, reverse=True)
    # each instance is exactly one felzenszwalb segment
    from skimage.segmentation import felzenszwalb

    opts = seg.config.felzenszwalb
    labels = felzenszwalb(image, scale=opts.scale, sigma=opts.sigma, min_size=opts.min_size, channel_axis=-1)
    for r in records[:-1]:
        m = r.decode_mask()
        assert np.array_equal(m, labels == labels[m][0])
    assert [r.to_dict() for r in seg.segment(image.copy())] == [r.to_dict() for r in records]
    desc = json.loads(json.dumps(seg.describe()))
    assert desc["segmenter"] == "felzenszwalb" and desc["felzenszwalb"] == opts.model_dump()
    assert desc["library"]["name"] == "scikit-image"


# ----------------------------------------------------------------------------- input and config errors


@pytest.mark.parametrize(
    "bad,match",
    [
        (np.zeros((32, 32), np.uint8), "grayscale"),
        (np.zeros((32, 32, 1), np.uint8), "grayscale"),
        (np.zeros((32, 32, 4), np.uint8), "RGBA"),
        (np.zeros((32, 32, 3), np.float32), "dtype uint8.*float32"),
        (np.zeros((32, 32, 3), np.uint16), "dtype uint8.*uint16"),
        (np.zeros((0, 32, 3), np.uint8), "empty"),
        ([[[0, 0, 0]]], "numpy array.*list"),
    ],
)
def test_invalid_images_are_rejected(bad, match, tiny_sam):
    fz = build_segmenter({"name": "felzenszwalb"})
    for seg in (fz, tiny_sam):
        with pytest.raises(InvalidImageError, match=match):
            seg.segment(bad)


def test_config_and_registry():
    assert SEGMENTERS == {"sam": SamSegmenter, "felzenszwalb": FelzenszwalbSegmenter}
    with pytest.raises(ValidationError):
        SegmenterConfig(name="mask2former")
    with pytest.raises(ValidationError):
        SegmenterConfig(sam={"model_type": "vit_x"})
    with pytest.raises(ValidationError):
        SegmenterConfig(postfilter={"min_area_shares": 0.1})  # misspelt option
    with pytest.raises(ValidationError, match="device"):
        SegmenterConfig(device="gpu")
    with pytest.raises(ValidationError):
        PostFilterConfig(max_instances=0)
    for model in (SegmenterConfig, SamConfig, PostFilterConfig):
        assert all(f.description for f in model.model_fields.values()), model
    with pytest.raises(ValueError, match="needs config.name"):
        FelzenszwalbSegmenter(SegmenterConfig(name="sam"))


def test_segment_package_imports_no_upper_layers():
    root = Path(__file__).resolve().parents[1] / "dspo_core" / "segment"
    for path in root.glob("*.py"):
        assert len(path.read_text().splitlines()) < 400, path
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            for name in names:
                assert name.split(".")[0] not in {"prefect", "storage", "pipeline", "flows"}, (path, name)
