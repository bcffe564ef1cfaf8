"""Scoring whole SR images with a protocol's pyiqa metrics (``dspo_core.iqa.protocol``).

    scorer = ProtocolScorer(protocol_metrics("osediff"), device="cuda")   # builds every metric offline
    scorer.score_image(sr, hr)          # {"psnr": 25.2, "ssim": 0.73, ...}: the image-level metrics
    scorer.score_set(srs, hrs)          # {"fid": 123.5}: the set-level ones (folder vs folder)

Each metric is ``pyiqa.create_metric(pyiqa_name, device=device, **options)``, built under
``offline_guard``: a missing weight file raises ``MissingWeightsError`` naming the metric and
the file (FID's Inception weights included) when the scorer is built, before any image is
sampled; nothing is downloaded and nothing is skipped. Images are (H, W, 3) uint8 RGB, fed as
float32 / 255 one at a time (sizes may differ), as OSEDiff's test_metrics.py feeds them.

FID writes the two image sets as PNG folders in a private temporary directory and calls the
metric on (HR folder, SR folder), pyiqa's clean mode, with ``num_workers=0`` (the images are
read in this thread; the number is the same) and no progress bar.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from .protocol import ProtocolMetric
from .weights import hf_hub_cache, offline_guard, torch_hub_dir

_LOCK = threading.Lock()
_BUILT: dict[tuple, object] = {}


def build_protocol_metric(metric: ProtocolMetric, device: str = "cpu"):
    """``pyiqa.create_metric(metric.pyiqa_name, device=device, **metric.options)``, offline, cached
    per (name, options, device, caches). Raises MissingWeightsError (metric, expected file)."""
    key = (metric.pyiqa_name, metric.options_json, str(device), torch_hub_dir(), hf_hub_cache())
    with _LOCK:
        if key not in _BUILT:
            import pyiqa

            with offline_guard(metric.pyiqa_name):
                net = pyiqa.create_metric(metric.pyiqa_name, device=device, **metric.options)
            if bool(net.lower_better) != metric.lower_better:
                raise ValueError(f"protocol metric {metric.key!r}: pyiqa says lower_better={net.lower_better}, "
                                 f"the protocol says {metric.lower_better}")
            _BUILT[key] = net
        return _BUILT[key]


def _tensor(image: np.ndarray, device: str) -> torch.Tensor:
    array = np.ascontiguousarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"images must be (H, W, 3) uint8 RGB, got {array.shape} {array.dtype}")
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None].to(device).float().div(255)


class ProtocolScorer:
    """A protocol's metrics, built once, scoring whole images and image sets."""

    def __init__(self, metrics: Sequence[ProtocolMetric], device: str = "cpu") -> None:
        import pyiqa

        self.metrics = tuple(metrics)
        self.device = device
        self.pyiqa_version = pyiqa.__version__
        self._nets = {metric.key: build_protocol_metric(metric, device) for metric in self.metrics}

    def describe(self) -> dict:
        """JSON-able record: pyiqa's version, the device, each metric's name, options and direction."""
        return {"pyiqa_version": self.pyiqa_version, "device": self.device,
                "metrics": [{"key": m.key, "pyiqa_name": m.pyiqa_name, "options": m.options, "kind": m.kind,
                             "level": m.level, "lower_better": m.lower_better} for m in self.metrics]}

    def _guard(self, metric: ProtocolMetric):
        return contextlib.nullcontext() if metric.weight_free else offline_guard(metric.pyiqa_name)

    def score_image(self, sr: np.ndarray, hr: np.ndarray) -> dict[str, float]:
        """{key: value} of every image-level metric on one SR image (fr: against `hr`, same size)."""
        if sr.shape != hr.shape:
            raise ValueError(f"SR image {sr.shape} and HR image {hr.shape} differ in size")
        x, y = _tensor(sr, self.device), _tensor(hr, self.device)
        values = {}
        for metric in self.metrics:
            if metric.level != "image":
                continue
            net = self._nets[metric.key]
            with torch.no_grad(), self._guard(metric):
                out = net(x, y) if metric.kind == "fr" else net(x)
            values[metric.key] = float(out.detach().double().cpu().reshape(-1)[0])
        return values

    def score_set(self, srs: Sequence[np.ndarray], hrs: Sequence[np.ndarray]) -> dict[str, float]:
        """{key: value} of every set-level metric (FID: HR folder vs SR folder); {} when there is none.
        Raises ValueError for fewer than two images (a covariance needs two)."""
        set_metrics = [metric for metric in self.metrics if metric.level == "set"]
        if not set_metrics:
            return {}
        if len(srs) < 2 or len(srs) != len(hrs):
            raise ValueError(f"FID needs two folders of the same >= 2 images; got {len(srs)} SR and {len(hrs)} HR")
        values = {}
        with tempfile.TemporaryDirectory(prefix="dspo-fid-") as root:
            folders = {"hr": os.path.join(root, "hr"), "sr": os.path.join(root, "sr")}
            for name, images in (("hr", hrs), ("sr", srs)):
                os.makedirs(folders[name])
                for index, image in enumerate(images):
                    Image.fromarray(np.asarray(image)).save(os.path.join(folders[name], f"{index:06d}.png"))
            for metric in set_metrics:
                with torch.no_grad(), self._guard(metric):
                    out = self._nets[metric.key](folders["hr"], folders["sr"], num_workers=0, verbose=False)
                values[metric.key] = float(out)
        return values
