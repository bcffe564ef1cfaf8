"""Tests of dspo_core.iqa: masked maps vs pyiqa, pyiqa's calibration values, bbox-fill
padding, offline weights checks, normalisation and the hybrid reward (by hand)."""

import ast
import math
import socket
import time
from pathlib import Path

import numpy as np
import pyiqa
import pytest
import scipy.io
import torch
from PIL import Image
from pydantic import ValidationError

from dspo_core.iqa import (
    DEFAULT_METRICS,
    WEIGHT_FREE_METRICS,
    IQAConfig,
    IQAScorer,
    MissingWeightsError,
    Moments,
    ScoreRecord,
    fit_scales,
    load_metric,
    merge_moments,
    metric_moments,
    normalise,
    offline_guard,
    reward,
    score_instances,
    weights_present,
)
from dspo_core.iqa.crop import fill_crops, pad_to

torch.set_num_threads(1)

CALIBRA = Path(pyiqa.__file__).resolve().parent.parent / "ResultsCalibra"
NAMES = ["I03.bmp", "I04.bmp", "I06.bmp", "I08.bmp", "I19.bmp"]

# pyiqa's published calibration: the "<metric>(ours)" rows (= pyiqa's output) of
# ResultsCalibra/calibration_summary.csv in chaofengc/IQA-PyTorch (commit 065c2b73).
# The wheel ships only the images (ResultsCalibra/{ref_dir,dist_dir}), not this CSV.
# Columns: I03, I04, I06, I08, I19 (dist_dir/<name> is scored against ref_dir/<name>).
CALIBRATION = {
    "psnr": [21.1136, 20.9872, 27.0139, 23.3002, 21.6186],
    "ssim": [0.6997, 0.9978, 0.9989, 0.9671, 0.6522],
    "ms_ssim": [0.6707, 0.9996, 0.9998, 0.9567, 0.8418],
    "fsim": [0.6891, 0.9702, 0.9927, 0.9575, 0.822],
    "vif": [0.0172, 0.9891, 0.9924, 0.9104, 0.175],
    "gmsd": [0.2203, 0.0005, 0.0004, 0.1346, 0.205],
    "nlpd": [0.5616, 0.0139, 0.011, 0.3033, 0.4335],
    "vsi": [0.9244, 0.9497, 0.9877, 0.9541, 0.9348],
    "piqe": [100.0, 21.6242, 35.8646, 41.147, 76.9485],
    "entropy": [6.9511, 6.9661, 7.5309, 7.5565, 5.7629],
}


def _read(path: Path) -> np.ndarray:
    return np.array(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def calibra():
    """(dist (5, H, W, 3), ref (5, H, W, 3)) uint8: each distorted image with the reference of the same name."""
    dist = np.stack([_read(CALIBRA / "dist_dir" / name) for name in NAMES])
    ref = np.stack([_read(CALIBRA / "ref_dir" / name) for name in NAMES])
    return dist, ref


@pytest.fixture(scope="module")
def default_scores(calibra):
    """{metric: [score of image i with an all-ones mask]} from IQAScorer, default config."""
    dist, ref = calibra
    scorer = IQAScorer()
    out = {name: [] for name in DEFAULT_METRICS}
    for i in range(len(NAMES)):
        records = scorer.score_instances(dist[i : i + 1], ref[i], [np.ones(ref.shape[1:3], bool)])
        for record in records:
            out[record.metric].append(record.value)
    return out


def _tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255)


# --------------------------------------------------------------------------- config
def test_config_defaults_and_validation():
    config = IQAConfig()
    assert config.metrics == list(DEFAULT_METRICS)
    assert set(DEFAULT_METRICS) <= WEIGHT_FREE_METRICS and "mad" not in DEFAULT_METRICS
    assert config.min_size("ms_ssim") == 161 and config.min_size("vif") == 48 and config.min_size("cw_ssim") == 64
    assert config.min_size("musiq") == config.default_min_size
    with pytest.raises(ValidationError):
        IQAConfig(metrics=["psnr", "psnr"])
    with pytest.raises(ValidationError):
        IQAConfig(metrics=["fid"])
    with pytest.raises(ValidationError):
        IQAConfig(metrics=[])
    with pytest.raises(ValidationError, match="unknown IQA metric 'not_a_metric'"):
        IQAConfig(metrics=["not_a_metric"])


def test_describe_records_kind_direction_and_version():
    scorer = IQAScorer()
    info = {m["name"]: m for m in scorer.describe()["metrics"]}
    assert list(info) == list(DEFAULT_METRICS)
    for name, m in info.items():
        net = pyiqa.create_metric(name, device="cpu")
        assert m["lower_better"] == net.lower_better
        assert m["kind"] == net.metric_mode.lower()
        assert m["pyiqa_version"] == pyiqa.__version__
    assert {n for n, m in info.items() if m["method"] == "masked_map"} == {"psnr", "ssim", "gmsd", "fsim", "vsi"}
    assert {n for n, m in info.items() if m["lower_better"]} == {"gmsd", "nlpd", "piqe"}
    assert {n for n, m in info.items() if m["kind"] == "nr"} == {"piqe"}  # entropy rewards noise: no default


# --------------------------------------------------------------------------- equality with pyiqa
@pytest.mark.parametrize("metric", ["psnr", "psnry", "ssim", "gmsd", "fsim", "vsi", "entropy"])
def test_all_ones_mask_equals_pyiqa_full_image(calibra, metric):
    dist, ref = calibra
    net = pyiqa.create_metric(metric, device="cpu")
    x, y = _tensor(dist), _tensor(ref)
    expected = (net(x, y) if net.metric_mode == "FR" else net(x)).double().flatten().numpy()
    ones = [np.ones(ref.shape[1:3], bool)]
    got = [score_instances(dist[i : i + 1], ref[i], ones, [metric])[0] for i in range(len(NAMES))]
    assert all(r.method == "masked_map" for r in got)
    np.testing.assert_allclose([r.value for r in got], expected, rtol=1e-4, atol=0)


@pytest.mark.parametrize("metric", DEFAULT_METRICS)
def test_reproduces_pyiqa_calibration_values(default_scores, metric):
    np.testing.assert_allclose(default_scores[metric], CALIBRATION[metric], rtol=0, atol=5e-4)


# --------------------------------------------------------------------------- masked PSNR by hand
def test_masked_psnr_by_hand():
    # pyiqa's psnr (default): RGB (test_y_channel=False), images in [0, 1], MSE over the 3
    # channels, PSNR = 10 log10(1 / (MSE + 1e-8)). With uint8 errors e (0..255 units),
    # MSE = mean(e^2) / 255^2, so PSNR = 10 log10(255^2 / (mean(e^2) + 1e-8 * 255^2)).
    ref = np.full((8, 8, 3), 100, np.uint8)
    cand = ref.copy()
    mask = np.zeros((8, 8), bool)
    mask[2:4, 2:4] = True  # 4 pixels x 3 channels = 12 values
    cand[~mask] = 150  # large errors outside the mask must not count
    cand[2, 2] = 106  # +6 on R, G, B: 3 * 36 = 108
    cand[3, 3, 0] = 88  # -12 on R: 144
    # mean(e^2) inside the mask = (108 + 144) / 12 = 21
    by_hand = 10 * math.log10(255**2 / (21 + 1e-8 * 255**2))
    assert by_hand == pytest.approx(34.9085, abs=1e-4)
    (record,) = score_instances(cand[None], ref, [mask], ["psnr"])
    assert record.method == "masked_map"
    assert record.value == pytest.approx(by_hand, rel=1e-7)  # inputs are float32 (v / 255), as in pyiqa
    # pyiqa on the mask's own pixels (here the mask is its bbox) agrees
    crop = pyiqa.create_metric("psnr", device="cpu")(_tensor(cand[None, 2:4, 2:4]), _tensor(ref[None, 2:4, 2:4]))
    assert float(crop) == pytest.approx(by_hand, rel=1e-5)


# --------------------------------------------------------------------------- direction
def _noisy(ref: np.ndarray, sigmas, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([np.clip(ref + rng.normal(0, s, ref.shape), 0, 255).astype(np.uint8) for s in sigmas])


def test_closer_candidate_normalises_higher(calibra):
    ref = calibra[1][0][:128, :128]
    cands = _noisy(ref.astype(float), [30, 3, 12])  # candidate 1 is closest to the reference
    mask = np.zeros(ref.shape[:2], bool)
    mask[20:100, 30:110] = True
    raw = score_instances(cands, ref, [mask], ["psnr", "gmsd", "ssim", "vif", "nlpd"])
    by = {(r.metric, r.candidate): r for r in normalise(raw, fit_scales(raw))}
    assert not by[("psnr", 0)].lower_better and by[("gmsd", 0)].lower_better
    assert by[("gmsd", 1)].value < by[("gmsd", 0)].value  # raw gmsd: lower = closer
    for metric in ("psnr", "gmsd", "ssim", "vif", "nlpd"):
        assert 0.5 < by[(metric, 1)].normalised < 1, metric
        assert 0 < by[(metric, 0)].normalised < by[(metric, 2)].normalised < by[(metric, 1)].normalised, metric


# --------------------------------------------------------------------------- bbox-fill
def test_small_mask_is_padded_for_ms_ssim_vif(calibra):
    ref = calibra[1][3][:200, :200]
    cands = _noisy(ref.astype(float), [2, 25])
    mask = np.zeros(ref.shape[:2], bool)
    mask[90:110, 60:80] = True  # 20 x 20 px
    crops, ref_crop = fill_crops(cands, ref, mask, "reference", 161)
    assert crops.shape == (2, 161, 161, 3) and ref_crop.shape == (161, 161, 3)
    raw = score_instances(cands, ref, [mask], ["ms_ssim", "vif", "cw_ssim", "nlpd", "piqe"])
    records = {(r.metric, r.candidate): r for r in normalise(raw, fit_scales(raw))}
    for r in records.values():
        assert r.method == "bbox_fill" and math.isfinite(r.value), r
    for metric in ("ms_ssim", "vif", "cw_ssim", "nlpd"):  # candidate 0 (sigma 2) is the closer one
        assert records[(metric, 0)].normalised > records[(metric, 1)].normalised, metric


def test_pad_and_fill_conventions():
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(1, 2, 3, 3)
    padded = pad_to(img, 6)
    assert padded.shape == (1, 6, 6, 3)
    np.testing.assert_array_equal(padded[0, 2:4, 1:4], img[0])  # original in the middle
    np.testing.assert_array_equal(padded[0, 1, 1:4], img[0, 0])  # mirrored: edge row repeated
    np.testing.assert_array_equal(padded[0, 0, 1:4], img[0, 1])
    np.testing.assert_array_equal(padded[0, 2:4, 0], img[0, :, 0])
    ref = np.zeros((4, 4, 3), np.uint8)
    ref[..., 0] = 200
    cand = np.full((1, 4, 4, 3), 50, np.uint8)
    mask = np.zeros((4, 4), bool)
    mask[1:3, 1] = True
    mask[1, 2] = True  # bbox rows 1-2, cols 1-2; (2, 2) is outside the mask
    crops, ref_crop = fill_crops(cand, ref, mask, "reference", 1)
    assert crops.shape == (1, 2, 2, 3)
    np.testing.assert_array_equal(crops[0, 1, 1], ref[2, 2])  # filled from the reference
    np.testing.assert_array_equal(crops[0, 0, 0], cand[0, 1, 1])
    crops, ref_crop = fill_crops(cand, ref, mask, "constant", 1)
    np.testing.assert_array_equal(crops[0, 1, 1], [200, 0, 0])  # reference mean colour in the mask
    np.testing.assert_array_equal(ref_crop[1, 1], [200, 0, 0])


def test_ssim_mask_on_the_border_falls_back_to_bbox_fill(calibra):
    ref = calibra[1][1][:64, :64]
    cands = _noisy(ref.astype(float), [2, 20])
    border = np.zeros(ref.shape[:2], bool)
    border[:3, 20:40] = True  # no 11x11 'valid' window is centred in the top 5 rows
    inner = np.zeros_like(border)
    inner[20:40, 20:40] = True
    records = score_instances(cands, ref, [border, inner], ["ssim"])
    assert [r.method for r in records] == ["bbox_fill"] * 2 + ["masked_map"] * 2
    assert all(math.isfinite(r.value) for r in records)


def test_batched_candidates_equal_one_at_a_time(calibra):
    ref = calibra[1][2][:96, :96]
    cands = _noisy(ref.astype(float), [3, 9, 27])
    masks = [np.zeros(ref.shape[:2], bool), np.ones(ref.shape[:2], bool)]
    masks[0][10:50, 30:70] = True
    metrics = ["psnr", "ssim", "gmsd", "fsim", "vsi", "vif", "nlpd", "entropy"]
    batched = {(r.metric, r.instance, r.candidate): r.value for r in score_instances(cands, ref, masks, metrics)}
    for c in range(3):
        for r in score_instances(cands[c : c + 1], ref, masks, metrics):
            # pyiqa's float32 metrics (vif) differ by ~1e-6 between batch sizes
            assert r.value == pytest.approx(batched[(r.metric, r.instance, c)], rel=1e-5, abs=1e-9), r


def test_input_checks():
    img = np.zeros((1, 16, 16, 3), np.uint8)
    ok = np.ones((16, 16), bool)
    with pytest.raises(ValueError, match="empty"):
        score_instances(img, img[0], [np.zeros((16, 16), bool)], ["psnr"])
    with pytest.raises(ValueError, match="mask 0"):
        score_instances(img, img[0], [np.ones((8, 8), bool)], ["psnr"])
    with pytest.raises(ValueError, match="uint8"):
        score_instances(img.astype(np.float32), img[0], [ok], ["psnr"])
    with pytest.raises(ValueError, match="need a reference"):
        score_instances(img, None, [ok], ["psnr", "entropy"])
    records = score_instances(img, None, [ok], ["entropy", "piqe"])  # NR only: no reference needed
    assert {r.kind for r in records} == {"nr"}


# --------------------------------------------------------------------------- weights
@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        ("lpips", "hub/checkpoints/alexnet-owt-7be5be79.pth"),  # torchvision backbone
        ("musiq", "hub/pyiqa/musiq_koniq_ckpt-e95806b9.pth"),  # pyiqa's own file
        ("clipiqa", "hub/clip/RN50.pt"),  # pyiqa's CLIP copy
    ],
)
def test_missing_weights_raise_a_clear_error_without_network(tmp_path, monkeypatch, metric, expected):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    calls = []
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: calls.append(a) or pytest.fail("network"))
    with pytest.raises(MissingWeightsError) as info:
        IQAScorer(IQAConfig(metrics=["psnr", metric]))
    error = info.value
    assert error.metric == metric
    assert error.path == str(tmp_path / expected)
    assert metric in str(error) and str(tmp_path / expected) in str(error)
    assert weights_present(metric) is False and weights_present("psnr") is True
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # nothing downloaded
    assert socket.getaddrinfo is not None and not calls  # guard restored the caller's function


def test_a_clip_file_with_the_wrong_sha256_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "clip").mkdir(parents=True)
    (tmp_path / "hub" / "clip" / "RN50.pt").write_bytes(b"not the CLIP checkpoint")
    with pytest.raises(MissingWeightsError, match="wrong sha256") as info:
        load_metric("clipiqa")
    assert info.value.path == str(tmp_path / "hub" / "clip" / "RN50.pt")


def test_offline_guard_blocks_the_network():
    import urllib.request

    before = (socket.getaddrinfo, socket.socket.connect)
    with pytest.raises(MissingWeightsError, match="network"), offline_guard("some_metric"):
        urllib.request.urlopen("http://192.0.2.1/weights.pth", timeout=1)  # TEST-NET-1, never routed
    with pytest.raises(MissingWeightsError, match="network"), offline_guard("some_metric"):
        socket.getaddrinfo("example.com", 443)
    assert (socket.getaddrinfo, socket.socket.connect) == before


def test_weight_free_metrics_build_with_an_empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for metric in sorted(WEIGHT_FREE_METRICS):
        assert load_metric(metric) is not None
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_learned_metric_runs_from_cached_weights(tmp_path, monkeypatch):
    # NIQE's "weights" are a .mat of pristine-model parameters in $TORCH_HOME/hub/pyiqa;
    # a fake one (zero mean, identity covariance) exercises the cached-weights path offline.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert weights_present("niqe") is False
    (tmp_path / "hub" / "pyiqa").mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(tmp_path / "hub/pyiqa/niqe_modelparameters.mat", {"mu_prisparam": np.zeros((1, 36)), "cov_prisparam": np.eye(36)})
    assert weights_present("niqe") is True
    cands = np.random.default_rng(0).integers(0, 256, (2, 128, 128, 3), dtype=np.uint8)
    mask = np.zeros((128, 128), bool)
    mask[10:60, 20:90] = True
    records = score_instances(cands, None, [mask], ["niqe"])
    assert [(r.kind, r.lower_better, r.method) for r in records] == [("nr", True, "bbox_fill")] * 2
    assert all(math.isfinite(r.value) for r in records)


# --------------------------------------------------------------------------- normalise / reward
def _rec(instance, candidate, metric, kind, value, lower_better):
    return ScoreRecord(instance, candidate, metric, kind, value, lower_better, "masked_map")


def _logistic_of_z(values, value, lower_better=False):
    """The rule of dspo_core.iqa.rewards written out: population z-score, flipped, logistic."""
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    z = 0.0 if std == 0 else (value - mean) / std * (-1 if lower_better else 1)
    return 1 / (1 + math.exp(-z))


def test_normalise_and_reward_by_hand():
    table = [(20.0, 0.1, 40.0), (30.0, 0.2, 40.0), (25.0, 0.3, 40.0)]  # psnr, gmsd, piqe per candidate
    records = []
    for c, (p, g, q) in enumerate(table):
        records += [_rec(0, c, "psnr", "fr", p, False), _rec(0, c, "gmsd", "fr", g, True),
                    _rec(0, c, "piqe", "nr", q, True)]
    scales = fit_scales(records)
    assert scales["psnr"].mean == pytest.approx(25.0) and scales["psnr"].std == pytest.approx(math.sqrt(50 / 3))
    norm = {(r.metric, r.candidate): r.normalised for r in normalise(records, scales)}
    psnr, gmsd = [row[0] for row in table], [row[1] for row in table]
    assert [norm[("psnr", c)] for c in range(3)] == pytest.approx([_logistic_of_z(psnr, v) for v in psnr])
    assert [norm[("gmsd", c)] for c in range(3)] == pytest.approx([_logistic_of_z(gmsd, v, True) for v in gmsd])
    assert norm[("psnr", 2)] == pytest.approx(0.5) and norm[("gmsd", 0)] > 0.5 > norm[("gmsd", 2)]
    assert [norm[("piqe", c)] for c in range(3)] == [0.5, 0.5, 0.5]  # never varies: no preference
    fr = [(norm[("psnr", c)] + norm[("gmsd", c)]) / 2 for c in range(3)]
    rewards = reward(normalise(records, scales))
    assert [r.fr for r in rewards] == pytest.approx(fr) and [r.nr for r in rewards] == pytest.approx([0.5] * 3)
    assert [r.reward for r in rewards] == pytest.approx([0.5 * f + 0.25 for f in fr])
    assert [r.reward for r in reward(normalise(records, scales), 0.7, 0.3)] == pytest.approx(
        [0.7 * f + 0.15 for f in fr])
    fr_only = [r for r in records if r.kind == "fr"]  # one family: its weight is renormalised to 1
    assert [r.reward for r in reward(normalise(fr_only, scales))] == pytest.approx(fr)
    assert all(r.nr is None and r.n_nr == 0 for r in reward(normalise(fr_only, scales)))
    with pytest.raises(ValueError, match="normalise"):
        reward(records)
    with pytest.raises(ValueError, match="non-finite"):
        normalise([_rec(0, 0, "psnr", "fr", float("nan"), False)], scales)
    with pytest.raises(ValueError, match=r"no dataset scale for metrics \['vif'\]"):
        normalise([_rec(0, 0, "vif", "fr", 0.5, False)], scales)


def test_shard_moments_merge_to_the_whole_dataset_scale():
    rng = np.random.default_rng(0)
    records = [_rec(i, c, "psnr", "fr", float(v), False)
               for i, row in enumerate(rng.normal(25, 3, (7, 4))) for c, v in enumerate(row)]
    shards = [metric_moments(records[:5]), metric_moments(records[5:17]), {}, metric_moments(records[17:])]
    merged, whole = merge_moments(shards, {"psnr": False})["psnr"], fit_scales(records)["psnr"]
    values = [r.value for r in records]
    assert merged.n == whole.n == 28
    assert merged.mean == pytest.approx(np.mean(values), rel=1e-12) and merged.std == pytest.approx(np.std(values))
    assert Moments.of([]).merge(Moments.of([2.0])) == Moments(1, 2.0, 0.0)


def test_near_tie_is_dropped_and_clear_gap_kept():
    """Per-instance min-max made every difference a 0-1 spread; on the dataset's scale a near-tie
    (raw differences of 0.001 dB, 0.0001 SSIM) stays tiny and min_reward_gap drops it."""
    from dspo_core.pairs import InstanceRewards, PairConfig, make_pairs

    raw = {"tie": [(31.000, 0.9000), (31.001, 0.9001), (31.002, 0.9000), (31.001, 0.9001)],
           "clear": [(24.0, 0.70), (31.0, 0.90), (27.0, 0.80), (25.0, 0.75)]}
    records = [_rec(i, c, metric, "fr", value, False)
               for i, rows in enumerate(raw.values()) for c, row in enumerate(rows)
               for metric, value in zip(("psnr", "ssim"), row)]
    rewards = reward(normalise(records, fit_scales(records)))
    instances = [InstanceRewards(sample_id="s", instance_id=name, weight=0.5,
                                 rewards={r.candidate: r.reward for r in rewards if r.instance == i})
                 for i, name in enumerate(raw)]
    gaps = {inst.instance_id: max(inst.rewards.values()) - min(inst.rewards.values()) for inst in instances}
    assert gaps["tie"] < 0.001 and gaps["clear"] > 0.1
    pairs, report = make_pairs(instances, config=PairConfig())  # the default min_reward_gap
    assert [(p.instance_id, p.winner_id, p.loser_id) for p in pairs] == [("clear", 1, 0)]
    assert [(d.instance_id, d.reason) for d in report.dropped] == [("tie", "below_min_gap")]


def test_cleanest_and_noisiest_candidates_get_different_realism(calibra):
    """The default no-reference metric prefers the clean candidate; entropy (no longer a default)
    rises with noise, which is why it is out."""
    ref = calibra[1][3][:128, :128]
    cands = _noisy(ref.astype(float), [3, 10, 25])
    whole = [np.ones(ref.shape[:2], bool)]
    nr_metrics = [name for name in DEFAULT_METRICS if name not in ("psnr", "ssim", "ms_ssim", "fsim", "vif", "gmsd",
                                                                   "nlpd", "vsi")]
    assert nr_metrics == ["piqe"]
    raw = score_instances(cands, None, whole, nr_metrics)
    nr = [r.nr for r in reward(normalise(raw, fit_scales(raw)))]
    assert nr[0] > nr[1] > nr[2] and nr[0] - nr[2] > 0.2
    entropy = [r.value for r in score_instances(cands, None, whole, ["entropy"])]
    assert entropy[2] > entropy[0]


# --------------------------------------------------------------------------- hygiene and timing
def test_package_hygiene():
    for path in Path("dspo_core/iqa").glob("*.py"):
        source = path.read_text()
        assert len(source.splitlines()) < 400, path
        for node in ast.walk(ast.parse(source)):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            for name in names:
                assert name.split(".")[0] not in {"prefect", "storage", "pipeline", "flows"}, (path, name)


def test_timing_instances_vs_whole_image():
    """Printed, not asserted: 4 candidates x 8 instances at 256x256, default metrics."""
    ref = _read(CALIBRA / "ref_dir" / "I08.bmp")[64:320, 128:384]
    cands = _noisy(ref.astype(float), [2, 5, 10, 20])
    labels = (np.arange(256)[:, None] // 64) * 2 + (np.arange(256)[None, :] // 128)  # 8 blocks of 64x128
    yy, xx = np.mgrid[:256, :256]
    disc = (yy % 64 - 32) ** 2 + (xx % 128 - 64) ** 2 < 30**2
    masks = [(labels == k) & (disc if k % 2 else True) for k in range(8)]  # blocks and discs
    x, y = _tensor(cands), _tensor(ref[None]).expand(4, -1, -1, -1).contiguous()
    print("\nmetric     whole-image/cand  instances(8)/cand   ratio")
    total_whole = total_inst = 0.0
    for metric in DEFAULT_METRICS:
        net = load_metric(metric)
        scorer = IQAScorer(IQAConfig(metrics=[metric]))
        with torch.no_grad():
            t = time.perf_counter()
            net(x, y) if net.metric_mode == "FR" else net(x)
            whole = (time.perf_counter() - t) / 4
        t = time.perf_counter()
        scorer.score_instances(cands, ref, masks)
        inst = (time.perf_counter() - t) / 4
        total_whole += whole
        total_inst += inst
        print(f"{metric:9s}  {whole * 1e3:10.1f} ms   {inst * 1e3:12.1f} ms   {inst / whole:6.1f}x")
    print(f"{'all':9s}  {total_whole * 1e3:10.1f} ms   {total_inst * 1e3:12.1f} ms   {total_inst / total_whole:6.1f}x")
