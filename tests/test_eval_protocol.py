"""The evaluation protocol (dspo_core.iqa.protocol, whole_image): our numbers are pyiqa's own
calls with OSEDiff's options, on the same image files; a missing weight file is an error naming it."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pyiqa
import pytest
import scipy.io
import torch
from PIL import Image

from dspo_core.iqa.protocol import PROTOCOLS, protocol_metrics
from dspo_core.iqa.weights import MissingWeightsError
from dspo_core.iqa.whole_image import ProtocolScorer

torch.set_num_threads(1)

CALIBRA = Path(pyiqa.__file__).resolve().parent.parent / "ResultsCalibra"
NAMES = ("I03", "I04", "I06")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """HR and SR folders of three PNG pairs (pyiqa's calibration photos, cropped to 128 x 160)."""
    root = tmp_path_factory.mktemp("bench")
    for folder, source in (("test_HR", "ref_dir"), ("results", "dist_dir")):
        (root / folder).mkdir()
        for name in NAMES:
            image = Image.open(CALIBRA / source / f"{name}.bmp").convert("RGB").crop((0, 0, 160, 128))
            image.save(root / folder / f"{name}.png")
    return root


def _osediff_tensor(path: Path) -> torch.Tensor:
    # How OSEDiff's test_metrics.py reads an image: cv2 BGR -> RGB, float32 / 255, NCHW.
    image = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(np.float32)
    return torch.from_numpy(image).permute(2, 0, 1)[None] / 255.0


def _direct(name: str, options: dict, sr: Path, hr: Path | None) -> float:
    metric = pyiqa.create_metric(name, device="cpu", **options)  # a fresh build: nothing shared with ours
    with torch.no_grad():
        out = metric(_osediff_tensor(sr), _osediff_tensor(hr)) if hr else metric(_osediff_tensor(sr))
    return float(out.item())


def test_weight_free_protocol_metrics_equal_direct_pyiqa_calls(folders):
    """PSNR/SSIM on YCbCr-Y and the weight-free extras: our scorer on decoded arrays equals pyiqa
    called as OSEDiff calls it on the files, to 1e-4."""
    metrics = protocol_metrics("weight-free", ["psnr", "ssim", "gmsd", "piqe"])  # fsim, vsi: 3 s more each
    scorer = ProtocolScorer(metrics)
    for name in NAMES:
        sr_path, hr_path = folders / "results" / f"{name}.png", folders / "test_HR" / f"{name}.png"
        ours = scorer.score_image(np.asarray(Image.open(sr_path)), np.asarray(Image.open(hr_path)))
        for metric in metrics:
            direct = _direct(metric.pyiqa_name, metric.options, sr_path, hr_path if metric.kind == "fr" else None)
            assert ours[metric.key] == pytest.approx(direct, abs=1e-4), (name, metric.key)
        rgb = _direct("psnr", {}, sr_path, hr_path)
        assert abs(ours["psnr"] - rgb) > 0.05  # the options matter: RGB PSNR is another number


def test_osediff_psnr_ssim_options_are_the_scripts():
    osediff = {metric.key: metric for metric in PROTOCOLS["osediff"]}
    assert list(osediff) == ["psnr", "ssim", "lpips", "dists", "fid", "niqe", "musiq", "maniqa-pipal", "clipiqa"]
    for key in ("psnr", "ssim"):
        assert osediff[key].options == {"test_y_channel": True, "color_space": "ycbcr"}
    assert osediff["maniqa-pipal"].pyiqa_name == "maniqa-pipal" and osediff["fid"].level == "set"
    assert [m.key for m in protocol_metrics("osediff", ["fid", "psnr"])] == ["psnr", "fid"]
    with pytest.raises(ValueError, match="not in protocol 'weight-free'; accepted: psnr, ssim"):
        protocol_metrics("weight-free", ["lpips"])


def test_niqe_from_a_cached_parameter_file_equals_pyiqa(folders, tmp_path, monkeypatch):
    """NIQE's weights are a .mat of pristine-model parameters: with one in the cache (a stand-in,
    zero mean and identity covariance: the real file is not here) ours equals pyiqa's own call."""
    import pyiqa.utils.download_util

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    # pyiqa fixed its own cache folder at import: point it at the same file for the direct call.
    monkeypatch.setattr(pyiqa.utils.download_util, "DEFAULT_CACHE_DIR", str(tmp_path / "hub" / "pyiqa"))
    (tmp_path / "hub" / "pyiqa").mkdir(parents=True)
    scipy.io.savemat(tmp_path / "hub/pyiqa/niqe_modelparameters.mat",
                     {"mu_prisparam": np.zeros((1, 36)), "cov_prisparam": np.eye(36)})
    niqe = protocol_metrics("osediff", ["niqe"])
    sr_path = folders / "results" / f"{NAMES[0]}.png"
    image = np.asarray(Image.open(sr_path))
    ours = ProtocolScorer(niqe).score_image(image, image)["niqe"]
    assert np.isfinite(ours) and ours == pytest.approx(_direct("niqe", {}, sr_path, None), abs=1e-4)


@pytest.mark.parametrize("key, file", [("fid", "hub/pyiqa/pt_inception-2015-12-05-6726825d.pth"),
                                       ("niqe", "hub/pyiqa/niqe_modelparameters.mat"),
                                       ("musiq", "hub/pyiqa/musiq_koniq_ckpt-e95806b9.pth"),
                                       ("clipiqa", "hub/clip/RN50.pt")])
def test_a_missing_weight_is_an_error_naming_the_file(key, file, tmp_path, monkeypatch):
    """Never a skip: building the protocol's metric raises, naming the metric and the file."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(MissingWeightsError) as raised:
        ProtocolScorer(protocol_metrics("osediff", ["psnr", key]))
    assert raised.value.path == str(tmp_path / file) and str(tmp_path / file) in str(raised.value)
    assert repr(PROTOCOLS["osediff"][0].pyiqa_name) not in str(raised.value)  # names the missing one, not psnr

