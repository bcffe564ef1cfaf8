"""Whole-image evaluation protocols: which pyiqa metrics, with which options (torch-free).

``osediff`` is the field's protocol, as OSEDiff's ``test_metrics.py`` (github cswry/OSEDiff)
computes the numbers of the OSEDiff and DSPO tables:

- PSNR and SSIM on the Y channel of YCbCr (``create_metric('psnr' | 'ssim',
  test_y_channel=True, color_space='ycbcr')``), no border cropped;
- LPIPS and DISTS against the HR image, at pyiqa's defaults;
- NIQE, MUSIQ, MANIQA as ``maniqa-pipal``, CLIPIQA on the SR image alone, at pyiqa's defaults;
- FID between the folder of SR outputs and the folder of HR images (``fid(hr_dir, sr_dir)``,
  pyiqa's clean mode): one number per method, not per image.

Images go in as that script feeds them: 8-bit RGB, float32 / 255, one image per call.

``weight-free`` runs offline with nothing cached: PSNR and SSIM exactly as above, plus
pyiqa's weight-free gmsd, fsim, vsi (full-reference) and piqe (no-reference) at their
defaults. It is not the paper's protocol, and reports say so.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

#: The options OSEDiff's test_metrics.py passes for PSNR and SSIM.
Y_CHANNEL_YCBCR = {"test_y_channel": True, "color_space": "ycbcr"}


@dataclass(frozen=True)
class ProtocolMetric:
    """One metric of a protocol.

    key: its name in ``eval_results.metric`` and the report's column; pyiqa_name: the name given
    to ``pyiqa.create_metric``; options: the other keyword arguments given there; label: the
    report's column heading; kind: "fr" (against the HR image) or "nr" (the SR image alone);
    level: "image" (one value per image) or "set" (one value per method over all images: FID);
    lower_better: the direction (checked against pyiqa's own when built); weight_free: needs
    no downloaded file.
    """

    key: str
    pyiqa_name: str
    label: str
    kind: str
    lower_better: bool
    level: str = "image"
    weight_free: bool = False
    options: dict = field(default_factory=dict)

    @property
    def options_json(self) -> str:
        return json.dumps(self.options, sort_keys=True)

    @property
    def arrow(self) -> str:
        return "↓" if self.lower_better else "↑"


_PSNR = ProtocolMetric("psnr", "psnr", "PSNR (Y)", "fr", False, weight_free=True, options=Y_CHANNEL_YCBCR)
_SSIM = ProtocolMetric("ssim", "ssim", "SSIM (Y)", "fr", False, weight_free=True, options=Y_CHANNEL_YCBCR)

#: Every protocol by name; the order is the report's column order.
PROTOCOLS: dict[str, tuple[ProtocolMetric, ...]] = {
    "osediff": (
        _PSNR,
        _SSIM,
        ProtocolMetric("lpips", "lpips", "LPIPS", "fr", True),
        ProtocolMetric("dists", "dists", "DISTS", "fr", True),
        ProtocolMetric("fid", "fid", "FID", "fr", True, level="set"),
        ProtocolMetric("niqe", "niqe", "NIQE", "nr", True),
        ProtocolMetric("musiq", "musiq", "MUSIQ", "nr", False),
        ProtocolMetric("maniqa-pipal", "maniqa-pipal", "MANIQA (pipal)", "nr", False),
        ProtocolMetric("clipiqa", "clipiqa", "CLIPIQA", "nr", False),
    ),
    "weight-free": (
        _PSNR,
        _SSIM,
        ProtocolMetric("gmsd", "gmsd", "GMSD", "fr", True, weight_free=True),
        ProtocolMetric("fsim", "fsim", "FSIM", "fr", False, weight_free=True),
        ProtocolMetric("vsi", "vsi", "VSI", "fr", False, weight_free=True),
        ProtocolMetric("piqe", "piqe", "PIQE", "nr", True, weight_free=True),
    ),
}

#: What a report says about each protocol, under its heading.
PROTOCOL_NOTES: dict[str, str] = {
    "osediff": "Protocol `osediff`: the field's metrics as OSEDiff's test_metrics.py computes them "
               "(PSNR/SSIM on YCbCr-Y, LPIPS, DISTS, FID, NIQE, MUSIQ, MANIQA-pipal, CLIPIQA).",
    "weight-free": "Protocol `weight-free`: metrics that need no downloaded weights, so NOT the paper's "
                   "protocol; PSNR/SSIM are computed as the paper's (YCbCr-Y), the rest (GMSD, FSIM, VSI, "
                   "PIQE) are not in its tables. Set `evaluate.protocol: osediff` with weights present for "
                   "the paper's numbers.",
}


def protocol_metrics(protocol: str, keys: list[str] | None = None) -> tuple[ProtocolMetric, ...]:
    """The metrics of `protocol` (all, or those named in `keys`, in the protocol's order).

    Raises ValueError naming the unknown protocol or metric and what is accepted.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {protocol!r}; accepted: {', '.join(PROTOCOLS)}")
    metrics = PROTOCOLS[protocol]
    if keys is None:
        return metrics
    known = [metric.key for metric in metrics]
    unknown = [key for key in keys if key not in known]
    if unknown:
        raise ValueError(f"metrics {unknown} are not in protocol {protocol!r}; accepted: {', '.join(known)}")
    return tuple(metric for metric in metrics if metric.key in keys)
