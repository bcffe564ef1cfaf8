"""Tests of dspo_core.degradation: kernels, sampling, replay, sizes, config validation."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from skimage import data as skdata

from dspo_core.degradation import (
    PARAMS_KEY,
    DegradationConfig,
    DegradationParams,
    KernelParams,
    apply,
    build_kernel,
    crop_padding,
    degrade,
    ops,
    replay,
    sample_params,
)

torch.set_num_threads(1)

CONFIG = DegradationConfig()
PI = math.pi


@pytest.fixture(scope="module")
def photos():
    return {"astronaut": skdata.astronaut(), "chelsea": skdata.chelsea(), "coffee": skdata.coffee()}


# ----------------------------------------------------------------------------- kernels


def _offsets(k):
    ax = np.arange(k) - k // 2
    return np.meshgrid(ax, ax)  # x along columns, y along rows


def _quadratic_form(k, sx, sy, theta):
    x, y = _offsets(k)
    u = math.cos(theta) * x + math.sin(theta) * y
    v = -math.sin(theta) * x + math.cos(theta) * y
    return u**2 / sx**2 + v**2 / sy**2


def _bessel_j1(z):
    # J1(z) = 1/pi * int_0^pi cos(t - z sin t) dt, independent of the code under test.
    t = np.linspace(0.0, PI, 4001)
    return np.trapezoid(np.cos(t[:, None] - np.ravel(z)[None, :] * np.sin(t[:, None])), t, axis=0).reshape(
        np.shape(z)) / PI


def _normalised(kernel):
    return kernel / kernel.sum()


KERNEL_CASES = [
    (KernelParams("iso", 21, 21, sigma_x=2.3, sigma_y=2.3, theta=0.0),
     lambda: _normalised(np.exp(-(np.hypot(*_offsets(21)) ** 2) / (2 * 2.3**2)))),
    (KernelParams("aniso", 15, 21, sigma_x=2.8, sigma_y=0.7, theta=0.6),
     lambda: _normalised(np.exp(-0.5 * _quadratic_form(15, 2.8, 0.7, 0.6)))),
    (KernelParams("generalized_iso", 13, 21, sigma_x=1.7, sigma_y=1.7, theta=0.0, beta=0.6),
     lambda: _normalised(np.exp(-0.5 * _quadratic_form(13, 1.7, 1.7, 0.0) ** 0.6))),
    (KernelParams("generalized_aniso", 21, 21, sigma_x=0.9, sigma_y=2.6, theta=-2.1, beta=3.2),
     lambda: _normalised(np.exp(-0.5 * _quadratic_form(21, 0.9, 2.6, -2.1) ** 3.2))),
    (KernelParams("plateau_iso", 9, 21, sigma_x=1.2, sigma_y=1.2, theta=0.0, beta=1.5),
     lambda: _normalised(1 / (1 + _quadratic_form(9, 1.2, 1.2, 0.0) ** 1.5))),
    (KernelParams("plateau_aniso", 17, 21, sigma_x=2.0, sigma_y=0.4, theta=2.9, beta=1.9),
     lambda: _normalised(1 / (1 + _quadratic_form(17, 2.0, 0.4, 2.9) ** 1.9))),
]


def _sinc_closed_form(k, omega):
    r = np.hypot(*_offsets(k))
    with np.errstate(invalid="ignore", divide="ignore"):
        kernel = omega * _bessel_j1(omega * r) / (2 * PI * r)
    kernel[k // 2, k // 2] = omega**2 / (4 * PI)
    return _normalised(kernel)


KERNEL_CASES += [
    (KernelParams("sinc", 7, 21, omega_c=2.5), lambda: _sinc_closed_form(7, 2.5)),
    (KernelParams("sinc", 21, 21, omega_c=PI / 4), lambda: _sinc_closed_form(21, PI / 4)),
]


@pytest.mark.parametrize("params, closed_form", KERNEL_CASES, ids=[c[0].kind + str(c[0].size) for c in KERNEL_CASES])
def test_kernel_sums_to_one_and_matches_closed_form(params, closed_form):
    kernel = build_kernel(params)
    assert kernel.shape == (params.padded_size, params.padded_size) and kernel.dtype == np.float32
    assert kernel.sum() == pytest.approx(1.0, abs=1e-5)
    pad = (params.padded_size - params.size) // 2
    inner = kernel[pad:pad + params.size, pad:pad + params.size]
    border = np.ones(kernel.shape, dtype=bool)
    border[pad:pad + params.size, pad:pad + params.size] = False
    assert np.all(kernel[border] == 0)
    np.testing.assert_allclose(inner, closed_form(), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(kernel, kernel[::-1, ::-1], atol=1e-7)  # point-symmetric about the centre


def test_generalized_and_plateau_limits():
    gauss = build_kernel(KernelParams("aniso", 21, 21, sigma_x=2.0, sigma_y=1.0, theta=0.4))
    general = build_kernel(KernelParams("generalized_aniso", 21, 21, sigma_x=2.0, sigma_y=1.0, theta=0.4, beta=1.0))
    np.testing.assert_allclose(general, gauss, atol=1e-7)
    rotated = build_kernel(KernelParams("aniso", 21, 21, sigma_x=2.0, sigma_y=1.0, theta=0.4 + PI))
    np.testing.assert_allclose(rotated, gauss, atol=1e-7)


# ----------------------------------------------------------------------------- sampling


def _within(observed, n, p, name):
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(observed / n - p) <= 4.5 * sigma + 1e-9, f"{name}: {observed}/{n} vs p={p}"


def _check_kernel(kernel, sigma_range, betag, betap):
    assert kernel.size in CONFIG.kernel_sizes and kernel.size % 2 == 1 and kernel.padded_size == 21
    if kernel.kind == "sinc":
        low = PI / 3 if kernel.size < 13 else PI / 5
        assert low <= kernel.omega_c <= PI
        return
    assert sigma_range[0] <= kernel.sigma_x <= sigma_range[1] and sigma_range[0] <= kernel.sigma_y <= sigma_range[1]
    assert -PI <= kernel.theta <= PI
    if kernel.kind in ("iso", "generalized_iso", "plateau_iso"):
        assert kernel.sigma_x == kernel.sigma_y and kernel.theta == 0.0
    if kernel.kind.startswith("generalized"):
        assert betag[0] <= kernel.beta <= betag[1]
    elif kernel.kind.startswith("plateau"):
        assert betap[0] <= kernel.beta <= betap[1]
    else:
        assert kernel.beta is None


def _check_resize(resize, scale_range):
    assert resize.mode in ("area", "bilinear", "bicubic")
    bounds = {"up": (1.0, scale_range[1]), "down": (scale_range[0], 1.0), "keep": (1.0, 1.0)}[resize.direction]
    assert bounds[0] <= resize.scale <= bounds[1]


def _check_noise(noise, sigma_range, poisson_range):
    assert 0 <= noise.seed < 2**63
    if noise.kind == "gaussian":
        assert sigma_range[0] <= noise.sigma <= sigma_range[1] and noise.poisson_scale is None
    else:
        assert poisson_range[0] <= noise.poisson_scale <= poisson_range[1] and noise.sigma is None


def test_sampled_parameters_stay_in_range_and_match_probabilities():
    n = 2000
    records = [sample_params(CONFIG, seed, (600, 700)) for seed in range(n)]
    kinds, sizes, counts = [], [], dict.fromkeys(
        ["sinc1", "blur2", "sinc2", "final_sinc", "order", "gauss1", "gray1", "up1", "down1", "up2", "down2"], 0)
    for p in records:
        assert 0 <= p.crop.top <= 600 - 512 and 0 <= p.crop.left <= 700 - 512 and not p.crop.padded
        s1, s2, final = p.stage1, p.stage2, p.final
        _check_kernel(s1.blur, CONFIG.blur_sigma, CONFIG.betag_range, CONFIG.betap_range)
        _check_resize(s1.resize, CONFIG.resize_range)
        _check_noise(s1.noise, CONFIG.noise_range, CONFIG.poisson_scale_range)
        assert CONFIG.jpeg_range[0] <= s1.jpeg_quality <= CONFIG.jpeg_range[1]
        if s2.blur is not None:
            _check_kernel(s2.blur, CONFIG.blur_sigma2, CONFIG.betag_range2, CONFIG.betap_range2)
            counts["blur2"] += 1
            counts["sinc2"] += s2.blur.kind == "sinc"
        _check_resize(s2.resize, CONFIG.resize_range2)
        _check_noise(s2.noise, CONFIG.noise_range2, CONFIG.poisson_scale_range2)
        assert s2.jpeg_quality is None
        assert CONFIG.jpeg_range2[0] <= final.jpeg_quality <= CONFIG.jpeg_range2[1]
        if final.sinc is not None:
            assert final.sinc.kind == "sinc" and PI / 3 <= final.sinc.omega_c <= PI
            counts["final_sinc"] += 1
        counts["sinc1"] += s1.blur.kind == "sinc"
        counts["order"] += final.order == "resize_sinc_then_jpeg"
        counts["gauss1"] += s1.noise.kind == "gaussian"
        counts["gray1"] += s1.noise.gray
        counts["up1"] += s1.resize.direction == "up"
        counts["down1"] += s1.resize.direction == "down"
        counts["up2"] += s2.resize.direction == "up"
        counts["down2"] += s2.resize.direction == "down"
        kinds += [b.kind for b in (s1.blur, s2.blur) if b is not None and b.kind != "sinc"]
        sizes.append(s1.blur.size)

    for kind, prob in zip(CONFIG.kernel_list, CONFIG.kernel_prob, strict=True):
        _within(kinds.count(kind), len(kinds), prob, kind)
    for size in CONFIG.kernel_sizes:
        _within(sizes.count(size), n, 1 / len(CONFIG.kernel_sizes), f"size {size}")
    _within(counts["sinc1"], n, CONFIG.sinc_prob, "sinc_prob")
    _within(counts["blur2"], n, CONFIG.second_blur_prob, "second_blur_prob")
    _within(counts["sinc2"], counts["blur2"], CONFIG.sinc_prob2, "sinc_prob2")
    _within(counts["final_sinc"], n, CONFIG.final_sinc_prob, "final_sinc_prob")
    _within(counts["order"], n, 0.5, "final order")
    _within(counts["gauss1"], n, CONFIG.gaussian_noise_prob, "gaussian_noise_prob")
    _within(counts["gray1"], n, CONFIG.gray_noise_prob, "gray_noise_prob")
    _within(counts["up1"], n, CONFIG.resize_prob[0], "resize_prob up")
    _within(counts["down1"], n, CONFIG.resize_prob[1], "resize_prob down")
    _within(counts["up2"], n, CONFIG.resize_prob2[0], "resize_prob2 up")
    _within(counts["down2"], n, CONFIG.resize_prob2[1], "resize_prob2 down")


def test_sampling_is_deterministic_per_seed():
    assert sample_params(CONFIG, 7, (512, 512)) == sample_params(CONFIG, 7, (512, 512))
    assert sample_params(CONFIG, 7, (512, 512)) != sample_params(CONFIG, 8, (512, 512))
    with pytest.raises(ValueError, match="rng_seed must be >= 0"):
        sample_params(CONFIG, -1, (512, 512))


# ----------------------------------------------------------------------------- apply / replay


def _seed_where(predicate, hr_size=(512, 512), config=CONFIG):
    return next(s for s in range(10_000) if predicate(sample_params(config, s, hr_size)))


REPLAY_CASES = [
    ("astronaut", lambda p: p.final.order == "resize_sinc_then_jpeg" and p.stage1.noise.kind == "poisson"
     and p.stage1.noise.gray and p.stage1.resize.direction == "up"),
    ("chelsea", lambda p: p.final.order == "jpeg_then_resize_sinc" and p.stage1.noise.kind == "gaussian"
     and p.stage2.noise.kind == "poisson" and p.stage2.blur is None),
    ("coffee", lambda p: p.stage1.blur.kind == "sinc" and p.stage2.noise.kind == "gaussian"
     and p.stage2.noise.gray and p.final.sinc is not None),
]


@pytest.mark.parametrize("name, predicate", REPLAY_CASES, ids=[c[0] for c in REPLAY_CASES])
def test_replay_from_json_record_is_bit_exact(photos, name, predicate):
    hr = photos[name]
    seed = _seed_where(predicate, hr.shape[:2])
    hr_crop, lq, params = degrade(hr, CONFIG, seed)
    assert lq.dtype == np.uint8 and lq.shape == (*params.lq_size, 3)
    assert hr_crop.shape == (params.crop.height, params.crop.width, 3)

    stored = json.loads(json.dumps({"id": name, PARAMS_KEY: params.to_json()}))
    assert DegradationParams.from_json(stored[PARAMS_KEY]) == params
    for record in (stored, params.to_dict(), params.to_json(), params):
        hr_again, lq_again = replay(record, hr)
        assert np.array_equal(lq_again, lq) and np.array_equal(hr_again, hr_crop)

    torch.set_num_threads(2)
    try:
        assert np.array_equal(apply(hr, params)[1], lq)
    finally:
        torch.set_num_threads(1)


def test_changing_one_noise_seed_changes_the_lq(photos):
    hr = photos["astronaut"]
    params = sample_params(CONFIG, 3, hr.shape[:2])
    noise = dataclasses.replace(params.stage2.noise, seed=params.stage2.noise.seed + 1)
    other = dataclasses.replace(params, stage2=dataclasses.replace(params.stage2, noise=noise))
    assert not np.array_equal(apply(hr, params)[1], apply(hr, other)[1])


def _usm_reference(image: np.ndarray) -> np.ndarray:
    """BasicSR's USMSharp written out with OpenCV: 51 x 51 Gaussian (getGaussianKernel(51, 0)
    outer product), reflect-101 borders, weight 0.5, threshold 10, float32 in [0, 1], then 8 bits."""
    cv2 = pytest.importorskip("cv2")
    column = cv2.getGaussianKernel(51, 0)
    kernel = (column @ column.T).astype(np.float32)
    x = image.astype(np.float32) / 255
    blur = cv2.filter2D(x, -1, kernel, borderType=cv2.BORDER_REFLECT_101)
    residual = x - blur
    mask = (np.abs(residual) * 255 > 10).astype(np.float32)
    soft = cv2.filter2D(mask, -1, kernel, borderType=cv2.BORDER_REFLECT_101)
    sharp = np.clip(x + 0.5 * residual, 0, 1)
    return np.clip(np.round((soft * sharp + (1 - soft) * x) * 255), 0, 255).astype(np.uint8)


def test_usm_sharp_matches_the_usmsharp_formula(photos):
    image = np.ascontiguousarray(photos["astronaut"][100:164, 180:236])  # 64 x 56, edges and flat skin
    sharpened = ops.usm_sharp(image)
    reference = _usm_reference(image)
    assert np.abs(sharpened.astype(int) - reference).max() <= 1  # float32 summation order only
    assert (sharpened != image).mean() > 0.2  # it sharpened, not a copy


def test_gt_usm_degrades_the_sharpened_gt_and_keeps_hr_plain(photos):
    hr = photos["astronaut"]
    config = DegradationConfig(gt_size=256, crop_mode="center")
    assert config.gt_usm  # Real-ESRGAN's default
    hr_crop, lq, params = degrade(hr, config, 11)
    plain = hr[128:384, 128:384]
    assert params.gt_usm and np.array_equal(hr_crop, plain)
    _, lq_plain = apply(hr, dataclasses.replace(params, gt_usm=False))
    assert not np.array_equal(lq, lq_plain)  # the LQ comes from the sharpened crop
    assert np.array_equal(replay(params.to_json(), hr)[1], lq)
    with pytest.raises(ValidationError, match="use_usm was renamed gt_usm"):
        DegradationConfig(use_usm=True)


def test_profiles_name_gt_usm():
    """On in `full` as Real-ESRGAN trains, off in `demo`, both spelled out in the profile."""
    import yaml

    from pipeline.config import DegradeConfig, load_config, profile_path
    from pipeline.config_errors import ConfigError

    for profile, expected in (("full", True), ("demo", False)):
        text = profile_path(profile).read_text()
        assert DegradeConfig.model_validate(yaml.safe_load(text)["degrade"]).degradation.gt_usm is expected
        assert f"gt_usm: {str(expected).lower()}" in text
    with pytest.raises(ConfigError, match=r"^degrade\.degradation: use_usm was renamed gt_usm.*replace use_usm"):
        load_config("test", ["degrade.degradation.use_usm=true"])


# ----------------------------------------------------------------------------- sizes


def _reflect_101_reference(image, bottom, right):
    """cv2.copyMakeBorder(image, 0, bottom, 0, right, cv2.BORDER_REFLECT_101): BasicSR's call."""
    cv2 = pytest.importorskip("cv2")
    return cv2.copyMakeBorder(image, 0, bottom, 0, right, cv2.BORDER_REFLECT_101)


def test_hr_shorter_than_crop_is_padded_at_the_bottom_like_basicsr(photos):
    hr = np.ascontiguousarray(photos["coffee"][:333, :517])
    hr_crop, lq, params = degrade(hr, CONFIG, 5)
    c = params.crop
    assert (c.top, c.height, c.width, c.pad_bottom, c.pad_right) == (0, 512, 512, 179, 0) and c.padded
    assert hr_crop.shape == (512, 512, 3) and lq.shape == (128, 128, 3)
    assert 0 <= c.left <= 517 - 512
    expected = _reflect_101_reference(hr, 179, 0)[:, c.left:c.left + 512]  # BasicSR: pad, then crop
    assert np.array_equal(hr_crop, expected)
    assert np.array_equal(hr_crop[:333], hr[:, c.left:c.left + 512])  # the photographed rows, untouched
    assert np.array_equal(replay(params.to_json(), hr)[1], lq)


@pytest.mark.parametrize("size, pads", [((50, 61), (462, 451)), ((1, 700), (511, 0)), ((900, 7), (0, 505)),
                                        ((512, 100), (0, 412))])
def test_small_hr_is_padded_never_upsampled(photos, size, pads):
    hr = np.ascontiguousarray(np.tile(photos["chelsea"], (2, 2, 1))[:size[0], :size[1]])
    for crop_mode in ("center", "random"):
        config = DegradationConfig(crop_mode=crop_mode)
        assert crop_padding(config, size) == pads
        hr_crop, lq, params = degrade(hr, config, 2)
        c = params.crop
        assert hr_crop.shape == (512, 512, 3) and lq.shape == (128, 128, 3)
        assert (c.pad_bottom, c.pad_right) == pads
        expected = _reflect_101_reference(hr, *pads)[c.top:c.top + 512, c.left:c.left + 512]
        assert np.array_equal(hr_crop, expected)
        assert np.array_equal(replay(params.to_dict(), hr)[1], lq)
    with pytest.raises(ValueError, match="HR image 0x40 has no pixels"):
        sample_params(CONFIG, 0, (0, 40))


def test_odd_hr_larger_than_crop(photos):
    hr = np.ascontiguousarray(np.concatenate([photos["coffee"], photos["coffee"][::-1]], axis=0)[:601, :577])
    hr_crop, lq, params = degrade(hr, CONFIG, 9)
    assert hr_crop.shape == (512, 512, 3) and lq.shape == (128, 128, 3) and not params.crop.padded
    c = params.crop
    assert np.array_equal(hr_crop, hr[c.top:c.top + 512, c.left:c.left + 512])  # a crop, never resampled


def test_pad_reflect_101_matches_opencv():
    rng = np.random.default_rng(0)
    for height, width, bottom, right in ((5, 4, 3, 0), (5, 4, 0, 9), (1, 3, 6, 2), (2, 2, 17, 17), (7, 3, 0, 0)):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        padded = ops.pad_reflect_101(image, bottom, right)
        assert np.array_equal(padded, _reflect_101_reference(image, bottom, right))
    assert ops.reflect_101_indices(4, 0, 3).tolist() == [0, 1, 2, 3, 2, 1, 0]  # dcb|abcd|cba, no edge repeat


def test_inconsistent_crop_box_is_refused(photos):
    hr = np.ascontiguousarray(photos["coffee"][:300])  # 300 x 600: padded 212 rows for gt_size 512
    params = sample_params(CONFIG, 1, hr.shape[:2])
    shifted = dataclasses.replace(params, crop=dataclasses.replace(params.crop, top=5))
    with pytest.raises(ValueError, match="does not fit the 300x600 image padded by 212 rows"):
        apply(hr, shifted)


def test_version_1_records_still_replay(photos):
    """Rows written before padding (record version 1: no pads, a `reduced` flag) replay as they did."""
    hr = photos["astronaut"]
    params = sample_params(CONFIG, 4, hr.shape[:2])
    v1 = params.to_dict()
    v1["version"] = 1
    v1["use_usm"] = v1.pop("gt_usm")
    v1["crop"] = {key: v1["crop"][key] for key in ("top", "left", "height", "width")} | {"reduced": False}
    assert DegradationParams.from_dict(v1) == params
    assert np.array_equal(replay(json.dumps(v1), hr)[1], apply(hr, params)[1])
    small = np.ascontiguousarray(photos["coffee"][:333, :517])  # v1 shrank this crop to 332 x 512
    shrunk = {**v1, "hr_height": 333, "hr_width": 517,
              "crop": {"top": 1, "left": 3, "height": 332, "width": 512, "reduced": True}}
    hr_crop, lq = replay(shrunk, small)
    assert np.array_equal(hr_crop, small[1:333, 3:515]) and lq.shape == (83, 128, 3)


def test_center_crop_and_input_checks(photos):
    hr = photos["coffee"]  # 400 x 600
    params = sample_params(DegradationConfig(gt_size=128, crop_mode="center"), 0, hr.shape[:2])
    assert (params.crop.top, params.crop.left, params.crop.height, params.crop.width) == (136, 236, 128, 128)
    with pytest.raises(ValueError, match="uint8 RGB"):
        apply(hr.astype(np.float32), params)
    with pytest.raises(ValueError, match="record was sampled for 400x600"):
        apply(hr[:300], params)


# ----------------------------------------------------------------------------- ops


def test_gray_noise_is_shared_by_channels():
    x = torch.full((1, 3, 32, 32), 0.5)
    for add, strength in ((ops.add_gaussian_noise, 10.0), (ops.add_poisson_noise, 1.0)):
        gray, colour = add(x, strength, True, 1), add(x, strength, False, 1)
        assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])
        assert not torch.equal(colour[:, 0], colour[:, 1])
        assert torch.equal(add(x, strength, False, 1), colour)


def test_jpeg_quality_is_applied(photos):
    x = ops.to_tensor(photos["astronaut"][:128, :128])
    err_low = (ops.jpeg(x, 30) - x).abs().mean()
    err_high = (ops.jpeg(x, 95) - x).abs().mean()
    assert 0 < err_high < err_low


# ----------------------------------------------------------------------------- records and config


def test_record_rejects_unknown_fields_and_versions():
    record = sample_params(CONFIG, 0, (512, 512)).to_dict()
    with pytest.raises(ValueError, match="unknown field"):
        DegradationParams.from_dict({**record, "extra": 1})
    with pytest.raises(ValueError, match="unsupported degradation record version"):
        DegradationParams.from_dict({**record, "version": 99})


def test_config_defaults_are_real_esrgan():
    assert CONFIG.kernel_sizes == (7, 9, 11, 13, 15, 17, 19, 21)
    assert CONFIG.kernel_prob == (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    assert (CONFIG.blur_sigma, CONFIG.blur_sigma2, CONFIG.betag_range, CONFIG.betap_range) == (
        (0.2, 3.0), (0.2, 1.5), (0.5, 4.0), (1.0, 2.0))
    assert (CONFIG.resize_prob, CONFIG.resize_range, CONFIG.resize_prob2, CONFIG.resize_range2) == (
        (0.2, 0.7, 0.1), (0.15, 1.5), (0.3, 0.4, 0.3), (0.3, 1.2))
    assert (CONFIG.scale, CONFIG.gt_size, CONFIG.gt_usm) == (4, 512, True)
    assert all(field.description for field in DegradationConfig.model_fields.values())
    with pytest.raises(ValidationError, match="frozen"):
        CONFIG.scale = 2


@pytest.mark.parametrize("options, message", [
    ({"kernel_prob": (0.5, 0.25, 0.12, 0.03, 0.12, 0.03)}, "kernel_prob .*must sum to 1"),
    ({"kernel_list": ("iso", "aniso")}, r"kernel_prob \(for kernel_list\): expected 2 probabilities"),
    ({"kernel_list2": ("iso", "iso"), "kernel_prob2": (0.5, 0.5)}, "kernel_list2 has duplicate"),
    ({"kernel_list": ("box",)}, "kernel_list"),
    ({"resize_prob": (0.2, 0.7, 0.2)}, "resize_prob: probabilities must sum to 1"),
    ({"blur_sigma": (3.0, 0.2)}, "blur_sigma: lower bound 3.0 is greater than upper bound 0.2"),
    ({"noise_range2": (-1.0, 25.0)}, "noise_range2: lower bound -1.0 is below the minimum 0"),
    ({"kernel_range": (6, 21)}, "kernel_range bounds must be odd"),
    ({"blur_kernel_size": 20}, "blur_kernel_size must be odd"),
    ({"kernel_range": (7, 23)}, "exceeds blur_kernel_size 21"),
    ({"betag_range": (1.5, 4.0)}, "betag_range must satisfy 0 < low <= 1 <= high"),
    ({"resize_range2": (0.3, 0.9)}, "resize_range2 must satisfy"),
    ({"jpeg_range": (30, 101)}, "jpeg_range: upper bound 101 is above the maximum 100"),
    ({"gt_size": 510}, "gt_size 510 must be a multiple of scale 4"),
    ({"gt_size": 12}, r"gt_size 12 is too small.*at least 16"),
    ({"sinc_prob": 1.5}, "sinc_prob"),
    ({"crop_mode": "corner"}, "crop_mode"),
    ({"blur_sigma3": (0.2, 3.0)}, r"blur_sigma3\s+Extra inputs are not permitted"),
])
def test_config_validation_errors_are_clear(options, message):
    with pytest.raises(ValidationError, match=message):
        DegradationConfig(**options)
