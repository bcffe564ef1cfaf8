"""Score every (candidate, instance) of one sample with pyiqa metrics (DSPO step 5).

Typical use::

    scorer = IQAScorer(IQAConfig())                       # builds the metrics offline
    records = scorer.score_instances(candidates, hr, masks)
    rewards = reward(normalise(records, fit_scales(records)))  # dspo_core.iqa.rewards
    manifest_params = scorer.describe()                   # metrics, kinds, directions, pyiqa version

``candidates`` are the N SR outputs of one LQ, (N, H, W, 3) uint8 RGB, pixel-aligned
with the HR crop ``reference`` (H, W, 3) uint8 (None is allowed when only no-reference
metrics are configured); ``masks`` are the sample's M instances, each (H, W) bool.

Per metric, one of two methods (recorded in every ``ScoreRecord.method``):

- ``masked_map``: psnr, psnry, ssim, ssimc, gmsd, fsim, vsi, entropy. The metric's
  quality map on the whole image, pooled inside the mask (``dspo_core.iqa.maps``).
  One pass per candidate batch serves all M instances.
- ``bbox_fill``: every other metric (ms_ssim, vif, nlpd, piqe, cw_ssim, mad, learned).
  The mask's bounding box with the outside filled identically for all candidates,
  mirror-padded to the metric's minimum size (``dspo_core.iqa.crop``); the N
  candidates of an instance go through the metric as one batch. Also the fallback of
  a masked-map metric for a mask with no weight on its map grid (e.g. SSIM: a mask
  lying only in the 5-pixel image border).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .config import WEIGHT_FREE_METRICS, IQAConfig
from .crop import fill_crops
from .maps import MASKED_MAP_METRICS, masked_map_scores
from .weights import load_metric, offline_guard


@dataclass(frozen=True)
class MetricInfo:
    """What a configured metric is: recorded with the scores.

    name: pyiqa metric name; kind: "fr" (full-reference, fidelity to HR) or "nr"
    (no-reference, realism); lower_better: pyiqa's ``metric.lower_better``;
    method: "masked_map" or "bbox_fill"; min_size: minimum bbox-fill crop side;
    pyiqa_version: the installed pyiqa.
    """

    name: str
    kind: str
    lower_better: bool
    method: str
    min_size: int
    pyiqa_version: str


@dataclass(frozen=True)
class ScoreRecord:
    """One raw score of one candidate on one instance.

    instance: index into the sample's masks; candidate: index into the N candidates;
    metric: pyiqa name; kind: "fr" | "nr"; value: the raw metric value (pyiqa's scale);
    lower_better: direction of `value`; method: "masked_map" | "bbox_fill";
    normalised: None from scoring, set by ``normalise``: logistic of the dataset-wide z-score
    (higher = better, 0.5 = the dataset mean).
    """

    instance: int
    candidate: int
    metric: str
    kind: str
    value: float
    lower_better: bool
    method: str
    normalised: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _to_tensor(images: np.ndarray, device: str) -> torch.Tensor:
    # pyiqa's own loader: torchvision to_tensor = uint8 -> float32 / 255, CHW.
    if not (images.flags.writeable and images.flags.c_contiguous):
        images = np.array(images, order="C")  # torch.from_numpy wants a writable, contiguous array
    return torch.from_numpy(images).permute(0, 3, 1, 2).to(device).float().div(255)


def check_inputs(
    candidates: np.ndarray, reference: np.ndarray | None, masks: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Validate shapes and dtypes; returns candidates, reference and the (M, H, W) bool masks."""
    candidates = np.asarray(candidates)
    if candidates.ndim != 4 or candidates.shape[-1] != 3 or candidates.dtype != np.uint8 or candidates.shape[0] < 1:
        raise ValueError(f"candidates must be (N, H, W, 3) uint8 with N >= 1, got {candidates.shape} {candidates.dtype}")
    size = candidates.shape[1:3]
    if reference is not None:
        reference = np.asarray(reference)
        if reference.shape != (*size, 3) or reference.dtype != np.uint8:
            raise ValueError(f"reference must be {(*size, 3)} uint8 like the candidates, got {reference.shape} {reference.dtype}")
    if len(masks) == 0:
        raise ValueError("masks is empty: a sample needs at least one instance")
    stack = []
    for i, mask in enumerate(masks):
        mask = np.asarray(mask)
        if mask.shape != size or not (mask.dtype == bool or np.issubdtype(mask.dtype, np.integer)):
            raise ValueError(f"mask {i} must be {size} bool, got {mask.shape} {mask.dtype}")
        mask = mask.astype(bool)
        if not mask.any():
            raise ValueError(f"mask {i} is empty")
        stack.append(mask)
    return candidates, reference, np.stack(stack)


class IQAScorer:
    """The configured pyiqa metrics, built once (offline), scoring samples."""

    def __init__(self, config: IQAConfig | None = None) -> None:
        import pyiqa

        self.config = config or IQAConfig()
        self.pyiqa_version = pyiqa.__version__
        known = set(pyiqa.list_models())
        unknown = [name for name in self.config.metrics if name not in known]
        if unknown:
            raise KeyError(f"unknown pyiqa metrics {unknown}; see pyiqa.list_models()")
        # Building checks the weights of every learned metric and raises
        # MissingWeightsError (metric + expected file) before any network access.
        self._nets = {name: load_metric(name, self.config.device) for name in self.config.metrics}
        self.metrics: list[MetricInfo] = []
        for name, net in self._nets.items():
            kind = {"FR": "fr", "NR": "nr"}[net.metric_mode]
            method = "masked_map" if self.config.masked_maps and name in MASKED_MAP_METRICS else "bbox_fill"
            self.metrics.append(
                MetricInfo(name, kind, bool(net.lower_better), method, self.config.min_size(name), self.pyiqa_version)
            )

    def describe(self) -> dict:
        """JSON-able record of what scores mean: the config, each metric's info, pyiqa's version."""
        return {
            "pyiqa_version": self.pyiqa_version,
            "config": self.config.model_dump(),
            "metrics": [asdict(info) for info in self.metrics],
        }

    @property
    def needs_reference(self) -> bool:
        return any(info.kind == "fr" for info in self.metrics)

    def _bbox_fill(
        self, info: MetricInfo, candidates: np.ndarray, reference: np.ndarray | None, mask: np.ndarray
    ) -> np.ndarray:
        fill = self.config.fr_fill if info.kind == "fr" else self.config.nr_fill
        if fill == "reference" and reference is None:
            raise ValueError(f"nr_fill='reference' ({info.name}) needs a reference image (got None)")
        # NR 'constant' fill takes the candidates' mean colour: NR scores never depend on the HR.
        use_ref = info.kind == "fr" or fill == "reference"
        cands, ref = fill_crops(candidates, reference if use_ref else None, mask, fill, info.min_size)
        net = self._nets[info.name]
        x = _to_tensor(cands, self.config.device)
        guard = contextlib.nullcontext() if info.name in WEIGHT_FREE_METRICS else offline_guard(info.name)
        with torch.no_grad(), guard:
            if info.kind == "fr":
                y = _to_tensor(ref[None], self.config.device).expand_as(x).contiguous()
                out = net(x, y)
            else:
                out = net(x)
        return out.detach().double().cpu().reshape(x.shape[0], -1)[:, 0].numpy()

    def score_instances(
        self, candidates: np.ndarray, reference: np.ndarray | None, masks: Sequence[np.ndarray]
    ) -> list[ScoreRecord]:
        """Raw score of every (instance, candidate, metric); records ordered by metric,
        then instance, then candidate."""
        candidates, reference, mask_stack = check_inputs(candidates, reference, masks)
        if reference is None and self.needs_reference:
            fr = [info.name for info in self.metrics if info.kind == "fr"]
            raise ValueError(f"full-reference metrics {fr} need a reference image (got None)")
        n, m = candidates.shape[0], mask_stack.shape[0]
        device = self.config.device
        x = _to_tensor(candidates, device)
        y = None if reference is None else _to_tensor(reference[None], device)
        masks_t = torch.from_numpy(mask_stack).to(device)
        records: list[ScoreRecord] = []
        for info in self.metrics:
            methods = [info.method] * m
            if info.method == "masked_map":
                with torch.no_grad():
                    values = masked_map_scores(info.name, x, y, masks_t)
                for i in range(m):
                    if not np.isfinite(values[i]).all():  # no weight on the map grid
                        values[i] = self._bbox_fill(info, candidates, reference, mask_stack[i])
                        methods[i] = "bbox_fill"
            else:
                values = np.stack([self._bbox_fill(info, candidates, reference, mask_stack[i]) for i in range(m)])
            for i in range(m):
                for c in range(n):
                    records.append(
                        ScoreRecord(i, c, info.name, info.kind, float(values[i, c]), info.lower_better, methods[i])
                    )
        return records


def score_instances(
    candidates: np.ndarray,
    reference: np.ndarray | None,
    masks: Sequence[np.ndarray],
    metrics: Sequence[str] | IQAConfig | None = None,
) -> list[ScoreRecord]:
    """``IQAScorer(config).score_instances(candidates, reference, masks)``.

    `metrics`: pyiqa names (the other options at their defaults), a full ``IQAConfig``,
    or None for the default set. Built metrics are cached, so repeated calls are cheap.
    """
    if isinstance(metrics, IQAConfig):
        config = metrics
    elif metrics is None:
        config = IQAConfig()
    else:
        config = IQAConfig(metrics=list(metrics))
    return IQAScorer(config).score_instances(candidates, reference, masks)
