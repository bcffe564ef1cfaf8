"""Quality maps pooled inside instance masks: no crop, no fill, no fill bias.

For metrics whose pyiqa score is a pooling of a per-pixel (or per-window) quality map,
the map is computed once on the whole image, exactly as pyiqa 0.1.16 computes it with
its default options, and pooled with the mask as weights. With an all-ones mask each
pooled value equals pyiqa's full-image score (tests/test_iqa.py checks it on pyiqa's
calibration images). pyiqa's own helpers are reused for colour conversion and for the
FSIM / VSI feature maps, so the conventions cannot drift apart.

==========  ======================================================================
metric      pyiqa definition (defaults) -> masked pooling
==========  ======================================================================
psnr        RGB in [0, 1] (test_y_channel=False), 10*log10(1 / (MSE + 1e-8)), MSE
            over 3 channels -> MSE over the 3 channels of the pixels in the mask.
psnry       the same on Y of YIQ in [0, 1] (to_y_channel, data_range 1, not rounded).
ssim        Y of YIQ scaled to [0, 255] and rounded, float64, 11x11 Gaussian window
            (sigma 1.5) 'valid' filtering, C1=(0.01*255)^2, C2=(0.03*255)^2, cs
            clipped at 0, mean of the map -> mean of the map over the windows whose
            centre pixel is in the mask (map[i, j] is centred on pixel (i+5, j+5)).
ssimc       the same on the 3 RGB channels (map averaged over channels too).
gmsd        Y of YIQ in [0, 255] rounded, 2x2 average pooling with stride 2, 3x3
            Prewitt gradients, GMS map with T=170, score = unbiased std of the map ->
            weighted std inside the mask, weights = share of each 2x2 block in the
            mask (reliability-weight unbiased form; equal to pyiqa's std for all ones).
fsim        FSIMc: images x255, average-pooled by round(min(H, W) / 256), phase
            congruency + Scharr gradient + I/Q chroma similarity, score =
            sum(S * PCm) / sum(PCm) -> both sums restricted to the mask (mask
            average-pooled the same way, as weights).
vsi         VSI: saliency (SDSP) + gradient + LMN chroma similarity, weighted by
            VSm = max(VS1, VS2), same pooling as pyiqa, sums restricted to the mask.
entropy     NR: 256-bin histogram of Y of YIQ in [0, 255] rounded, -sum p log2(p + 1e-8)
            -> histogram of the pixels in the mask only.
==========  ======================================================================

Each function returns an (M, N) float64 array (instances x candidates); NaN marks an
instance with no weight on the metric's map grid (e.g. a mask only on the 5-pixel
border that SSIM's valid windows never centre on): the scorer then uses bbox-fill.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

MASKED_MAP_METRICS: frozenset[str] = frozenset({"psnr", "psnry", "ssim", "ssimc", "gmsd", "fsim", "vsi", "entropy"})

_SSIM_WIN, _SSIM_SIGMA = 11, 1.5


def _pool_ratio(num: torch.Tensor, den: torch.Tensor, weights: torch.Tensor) -> np.ndarray:
    """sum(w * num) / sum(w * den) for each (mask, candidate): (N, h, w), (N|1, h, w), (M, h, w) -> (M, N)."""
    w = weights.reshape(weights.shape[0], -1).to(torch.float64)
    top = w @ num.reshape(num.shape[0], -1).to(torch.float64).T
    bottom = w @ den.reshape(den.shape[0], -1).to(torch.float64).T
    out = top / bottom
    out[(w.sum(1) <= 0)] = float("nan")
    return out.cpu().numpy()


def _pool_mean(values: torch.Tensor, weights: torch.Tensor) -> np.ndarray:
    return _pool_ratio(values, torch.ones_like(values[:1]), weights)


def _y(x: torch.Tensor, data_range: float) -> torch.Tensor:
    from pyiqa.utils.color_util import to_y_channel

    return to_y_channel(x, data_range, "yiq")


# ----------------------------------------------------------------------------- PSNR
def psnr_map(x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor, test_y_channel: bool = False) -> np.ndarray:
    """Masked PSNR, pyiqa's conventions: [0, 1] data range, eps 1e-8 in the log."""
    if test_y_channel:
        x, y = _y(x, 1.0), _y(y, 1.0)
    err = ((x.to(torch.float64) - y.to(torch.float64)) ** 2).mean(1)  # (N, H, W)
    mse = _pool_mean(err, masks.to(torch.float64))
    return 10 * np.log10(1.0 / (mse + 1e-8))


# ----------------------------------------------------------------------------- SSIM
def _gauss_1d(size: int = _SSIM_WIN, sigma: float = _SSIM_SIGMA) -> torch.Tensor:
    # pyiqa's fspecial(11, 1.5): exp(-(x^2 + y^2) / (2 sigma^2)) / sum, built in float64
    # and stored as float32; it is the outer product of this 1-D kernel (separable).
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(r * r) / (2 * sigma * sigma))
    return torch.from_numpy(g / g.sum())


def _filter_valid(img: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    c = img.shape[1]
    k = g.numel()
    img = F.conv2d(img, g.view(1, 1, k, 1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(img, g.view(1, 1, 1, k).repeat(c, 1, 1, 1), groups=c)


def ssim_map(x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor, test_y_channel: bool = True) -> np.ndarray:
    """Masked SSIM (pyiqa 'ssim': Y channel; 'ssimc': RGB), map averaged over the mask."""
    if test_y_channel:
        x, y = _y(x, 255.0), _y(y, 255.0)
    else:
        x, y = (x * 255).round(), (y * 255).round()
    x, y = x.to(torch.float64), y.to(torch.float64)
    if y.shape[0] != x.shape[0]:
        y = y.expand_as(x)
    g = _gauss_1d().to(x)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu1, mu2 = _filter_valid(x, g), _filter_valid(y, g)
    mu1_sq, mu2_sq, mu1_mu2 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    sigma1_sq = _filter_valid(x * x, g) - mu1_sq
    sigma2_sq = _filter_valid(y * y, g) - mu2_sq
    sigma12 = _filter_valid(x * y, g) - mu1_mu2
    cs = F.relu((2 * sigma12 + c2) / (sigma1_sq + sigma2_sq + c2))
    smap = ((2 * mu1_mu2 + c1) / (mu1_sq + mu2_sq + c1) * cs).mean(1)  # (N, h, w)
    off = (_SSIM_WIN - 1) // 2
    h, w = smap.shape[-2:]
    centres = masks[:, off : off + h, off : off + w]
    return _pool_mean(smap, centres.to(torch.float64))


# ----------------------------------------------------------------------------- GMSD
def gmsd_map(x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """Masked GMSD (pyiqa 'gmsd', Y channel): weighted unbiased std of the GMS map."""
    # Y is rounded to integers, exact in float64: the map is computed in float64 (pyiqa: float32).
    x, y = _y(x, 255.0).to(torch.float64), _y(y, 255.0).to(torch.float64)
    if y.shape[0] != x.shape[0]:
        y = y.expand_as(x)
    dx = torch.tensor([[1.0, 0, -1], [1, 0, -1], [1, 0, -1]]).view(1, 1, 3, 3).to(x) / 3.0
    dy = torch.tensor([[1.0, 1, 1], [0, 0, 0], [-1, -1, -1]]).view(1, 1, 3, 3).to(x) / 3.0
    ave = torch.ones(1, 1, 2, 2).to(x) / 4.0

    def gradient(img: torch.Tensor) -> torch.Tensor:
        small = F.conv2d(img, ave, stride=2)
        return torch.sqrt(F.conv2d(small, dx, padding=1) ** 2 + F.conv2d(small, dy, padding=1) ** 2 + 1e-12)

    g1, g2 = gradient(x), gradient(y)
    t = 170
    q = ((2 * g1 * g2 + t) / (g1**2 + g2**2 + t))[:, 0].to(torch.float64)  # (N, h, w)
    w = F.avg_pool2d(masks[:, None].to(torch.float64), 2)[:, 0]  # (M, h, w)
    q = q - q.mean(dim=(1, 2), keepdim=True)  # centre first: a well-conditioned one-pass variance
    wf = w.reshape(w.shape[0], -1)
    qf = q.reshape(q.shape[0], -1)
    v1 = wf.sum(1, keepdim=True)  # (M, 1)
    v2 = (wf * wf).sum(1, keepdim=True)
    s1, s2 = wf @ qf.T, wf @ (qf * qf).T  # (M, N)
    mean = s1 / v1
    denom = v1 - v2 / v1  # = n - 1 for binary weights
    var = (s2 - 2 * mean * s1 + mean * mean * v1) / denom
    out = torch.sqrt(var.clamp_min(0))
    out[(denom <= 0).expand_as(out)] = float("nan")
    return out.cpu().numpy()


# ----------------------------------------------------------------------------- FSIM
def fsim_map(x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """Masked FSIMc (pyiqa 'fsim', chromatic=True, default filter bank)."""
    from pyiqa.archs.fsim_arch import _phase_congruency
    from pyiqa.archs.func_util import gradient_map, similarity_map
    from pyiqa.utils.color_util import rgb2yiq

    if y.shape[0] != x.shape[0]:
        y = y.expand_as(x).contiguous()
    x, y = x / 1.0 * 255, y / 1.0 * 255
    k = max(1, round(min(x.shape[-2:]) / 256))
    x, y = F.avg_pool2d(x, k), F.avg_pool2d(y, k)
    x_yiq, y_yiq = rgb2yiq(x), rgb2yiq(y)
    x_lum, y_lum = x_yiq[:, :1], y_yiq[:, :1]
    opts = {"scales": 4, "orientations": 4, "min_length": 6, "mult": 2, "sigma_f": 0.55, "delta_theta": 1.2, "k": 2.0}
    pc_x, pc_y = _phase_congruency(x_lum, **opts), _phase_congruency(y_lum, **opts)
    scharr = torch.tensor([[[-3.0, 0.0, 3.0], [-10.0, 0.0, 10.0], [-3.0, 0.0, 3.0]]]) / 16
    kernels = torch.stack([scharr, scharr.transpose(-1, -2)])
    gm_x, gm_y = gradient_map(x_lum, kernels), gradient_map(y_lum, kernels)
    t1, t2, t3, t4, lmbda = 0.85, 160, 200, 200, 0.03
    pc = similarity_map(pc_x, pc_y, t1)
    gm = similarity_map(gm_x, gm_y, t2)
    pc_max = torch.where(pc_x > pc_y, pc_x, pc_y)
    score = gm * pc * pc_max
    s_i = similarity_map(x_yiq[:, 1:2], y_yiq[:, 1:2], t3)
    s_q = similarity_map(x_yiq[:, 2:], y_yiq[:, 2:], t4)
    score = score * torch.abs(s_i * s_q) ** lmbda
    w = F.avg_pool2d(masks[:, None].to(torch.float64), k)[:, 0]
    return _pool_ratio(score[:, 0], pc_max[:, 0], w)


# ----------------------------------------------------------------------------- VSI
def vsi_map(x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """Masked VSI (pyiqa 'vsi', default constants)."""
    from pyiqa.archs.func_util import gradient_map, scharr_filter, similarity_map
    from pyiqa.archs.vsi_arch import sdsp
    from pyiqa.utils.color_util import rgb2lmn

    if y.shape[0] != x.shape[0]:
        y = y.expand_as(x).contiguous()
    c1, c2, c3, alpha, beta = 1.27, 386.0, 130.0, 0.4, 0.02
    sd = {"data_range": 255, "omega_0": 0.021, "sigma_f": 1.34, "sigma_d": 145.0, "sigma_c": 0.001}
    x, y = x.double() * 255.0, y.double() * 255.0
    vs_x, vs_y = sdsp(x, **sd), sdsp(y, **sd)
    x_lmn, y_lmn = rgb2lmn(x), rgb2lmn(y)
    m = masks[:, None].to(torch.float64)
    k = max(1, round(min(vs_x.shape[-2:]) / 256))
    pad = k // 2
    if pad:
        p = [pad, (k - 1) // 2, pad, (k - 1) // 2]
        vs_x, vs_y = F.pad(vs_x, p, mode="replicate"), F.pad(vs_y, p, mode="replicate")
        x_lmn, y_lmn = F.pad(x_lmn, p, mode="replicate"), F.pad(y_lmn, p, mode="replicate")
        m = F.pad(m, p, mode="replicate")
    vs_x, vs_y = F.avg_pool2d(vs_x, k), F.avg_pool2d(vs_y, k)
    x_lmn, y_lmn = F.avg_pool2d(x_lmn, k), F.avg_pool2d(y_lmn, k)
    m = F.avg_pool2d(m, k)
    kernels = torch.stack([scharr_filter(), scharr_filter().transpose(1, 2)]).to(x_lmn)
    gm_x, gm_y = gradient_map(x_lmn[:, :1], kernels), gradient_map(y_lmn[:, :1], kernels)
    s_vs = similarity_map(vs_x, vs_y, c1)
    s_gm = similarity_map(gm_x, gm_y, c2)
    s_c = similarity_map(x_lmn[:, 1:2], y_lmn[:, 1:2], c3) * similarity_map(x_lmn[:, 2:], y_lmn[:, 2:], c3)
    angle = torch.atan2(torch.zeros_like(s_c), s_c)
    s_c_real = s_c.abs() ** beta * torch.cos(angle * beta)
    s = s_vs * s_gm.pow(alpha) * s_c_real
    vs_max = torch.max(vs_x, vs_y)
    eps = torch.finfo(vs_max.dtype).eps
    wf = m[:, 0].reshape(m.shape[0], -1)
    top = wf @ (s * vs_max)[:, 0].reshape(s.shape[0], -1).T + eps
    bottom = wf @ vs_max[:, 0].reshape(vs_max.shape[0], -1).T + eps
    out = top / bottom
    out[wf.sum(1) <= 0] = float("nan")
    return out.cpu().numpy()


# ----------------------------------------------------------------------------- entropy
def entropy_map(x: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """Masked entropy (pyiqa 'entropy'): the 256-bin Y histogram of the mask's pixels."""
    n = x.shape[0]
    levels = _y(x, 255.0)[:, 0].long().clamp(0, 255)  # (N, H, W)
    levels = levels + 256 * torch.arange(n, device=levels.device).view(n, 1, 1)  # one bin range per candidate
    out = np.empty((masks.shape[0], n))
    for i, mask in enumerate(masks):
        hist = torch.bincount(levels[:, mask].reshape(-1), minlength=256 * n).view(n, 256).to(torch.float64)
        p = hist / hist.sum(1, keepdim=True)
        out[i] = (-(p * torch.log2(p + 1e-8)).sum(1)).cpu().numpy()
    return out


def masked_map_scores(metric: str, x: torch.Tensor, y: torch.Tensor | None, masks: torch.Tensor) -> np.ndarray:
    """(M, N) pooled scores of `metric` for N candidates `x` (N, 3, H, W) in [0, 1] against
    the reference `y` (1 or N, 3, H, W) inside M masks (M, H, W) bool."""
    if metric == "entropy":
        return entropy_map(x, masks)
    if y is None:
        raise ValueError(f"full-reference metric {metric!r} needs a reference image")
    if metric in ("psnr", "psnry"):
        return psnr_map(x, y, masks, test_y_channel=metric == "psnry")
    if metric in ("ssim", "ssimc"):
        return ssim_map(x, y, masks, test_y_channel=metric == "ssim")
    if metric == "gmsd":
        return gmsd_map(x, y, masks)
    if metric == "fsim":
        return fsim_map(x, y, masks)
    if metric == "vsi":
        return vsi_map(x, y, masks)
    raise KeyError(f"{metric!r} has no masked-map implementation; use bbox-fill")
