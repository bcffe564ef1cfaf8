"""Options of the per-instance IQA scoring (DSPO pipeline step 5).

``IQAConfig.metrics`` names pyiqa metrics (``pyiqa.list_models()``). The default set
is pyiqa's weight-free metrics, which run offline with nothing cached:

- full-reference (fidelity to the HR crop): psnr, ssim, ms_ssim, fsim, vif, gmsd, nlpd, vsi;
- no-reference (realism): piqe.

``entropy`` (weight-free, no-reference) stays selectable but is in no default: pyiqa marks it
higher-is-better and it *rewards noise* (on a 256 px crop of skimage's astronaut 7.59 -> 7.86 as
Gaussian noise sigma goes 3 -> 25), so as a realism reward it prefers the noisiest candidate.

``mad`` is weight-free too but is left out of the default: on the 2-core CPU machines
pyiqa's MAD takes ~20 s for 4 candidates at 256x256 (about 5 s per image, vs < 0.3 s
for every other default metric), i.e. minutes per sample once instances are scored.
``cw_ssim``, ``psnry`` and ``ssimc`` are weight-free and may be configured.

Learned metrics (lpips, dists, musiq, maniqa, clipiqa, topiq_nr, niqe, ...) may be
configured when their weights are in the local caches (see ``dspo_core.iqa.weights``);
a configured metric whose weights are missing raises ``MissingWeightsError`` when the
scorer is built. Nothing is ever downloaded.

This module imports neither torch nor pyiqa: metric names are checked against pyiqa's
registry (``pyiqa.default_model_configs``, what ``pyiqa.list_models()`` lists), read from
its file without importing the package (~30 ms instead of ~9 s CPU and ~900 MB for
``import pyiqa``, which loads torch), when a config is validated.
"""

from __future__ import annotations

import difflib
import functools
import importlib.metadata
import importlib.util
import logging
import re
import sys
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from dspo_core.devices import TorchDevice

log = logging.getLogger(__name__)

#: pyiqa metrics that need no downloaded weights (FIELD-NOTES, checked by the tests).
WEIGHT_FREE_METRICS: frozenset[str] = frozenset(
    {"psnr", "psnry", "ssim", "ssimc", "ms_ssim", "cw_ssim", "fsim", "vif", "gmsd", "nlpd", "mad", "vsi", "piqe", "entropy"}
)

#: The offline default: weight-free and fast (``mad`` and ``entropy`` are excluded, see the module doc).
DEFAULT_METRICS: tuple[str, ...] = (
    "psnr", "ssim", "ms_ssim", "fsim", "vif", "gmsd", "nlpd", "vsi", "piqe",
)

#: Smallest square side (pixels) each metric accepts / is meaningful at, for bbox-fill
#: crops (smaller crops are mirror-padded up to it). Measured on pyiqa 0.1.16:
#: ms_ssim fails below 161 (5 scales, 11 px window at 1/16), cw_ssim below 64,
#: vif below 33 (48 kept, FIELD-NOTES), mad below 16, ssim below 11; piqe works in
#: 16 px blocks, nlpd builds a 6-level Laplacian pyramid (32 = 2**5), niqe in 96 px blocks.
MIN_SIZES: dict[str, int] = {
    "ms_ssim": 161,
    "cw_ssim": 64,
    "vif": 48,
    "mad": 16,
    "ssim": 11,
    "ssimc": 11,
    "piqe": 16,
    "nlpd": 32,
    "niqe": 96,
    "niqe_matlab": 96,
    "psnr": 1,
    "psnry": 1,
    "gmsd": 4,
    "fsim": 16,
    "vsi": 16,
    "entropy": 1,
}

#: Metrics that are not one score per image (distribution-level, or need text prompts).
UNSUPPORTED_METRICS: frozenset[str] = frozenset({"fid", "fid_dinov2", "inception_score", "clipscore"})



def _natural_key(name: str) -> list:
    # pyiqa.list_models()'s order (numbers inside names compare as numbers).
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name.lower())]


@functools.cache
def pyiqa_metric_names() -> tuple[tuple[str, ...], str]:
    """(every name ``pyiqa.list_models()`` returns, in its order; the installed pyiqa version).

    Read from ``pyiqa/default_model_configs.py`` (a plain dict literal) without running
    ``pyiqa/__init__``, which imports torch; where pyiqa is already imported, or that file
    cannot be read on its own (a future pyiqa), ``pyiqa.list_models()`` itself answers.
    """
    if "pyiqa" not in sys.modules:
        spec = importlib.util.find_spec("pyiqa")
        if spec is None or not spec.submodule_search_locations:
            raise ValueError("pyiqa is not installed, so IQA metric names cannot be checked (pip install pyiqa)")
        registry = Path(list(spec.submodule_search_locations)[0]) / "default_model_configs.py"
        try:
            module_spec = importlib.util.spec_from_file_location("_dspo_pyiqa_default_model_configs", registry)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
            names = sorted(module.DEFAULT_CONFIGS, key=_natural_key)
            return tuple(names), importlib.metadata.version("pyiqa")
        except Exception as exc:  # pyiqa's layout changed: ask pyiqa itself, seconds slower
            log.warning("reading pyiqa's metric names from %s failed (%s: %s); importing pyiqa instead",
                        registry, type(exc).__name__, exc)
    import pyiqa

    return tuple(pyiqa.list_models()), pyiqa.__version__


def _known_metric(name: str) -> str:
    names, version = pyiqa_metric_names()
    if name in UNSUPPORTED_METRICS:
        raise ValueError(f"IQA metric {name!r} does not give one score per image and cannot score instances")
    if name not in names:
        accepted = [known for known in names if known not in UNSUPPORTED_METRICS]
        close = difflib.get_close_matches(name, accepted, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown IQA metric {name!r}{hint}; accepted: {', '.join(accepted)} (pyiqa {version})")
    return name


#: A pyiqa metric name, checked against pyiqa's registry when a config is validated.
MetricName = Annotated[str, AfterValidator(_known_metric)]


class IQAConfig(BaseModel):
    """Which pyiqa metrics score each (candidate, instance), and how instances are cut out."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    metrics: list[MetricName] = Field(
        default_factory=lambda: list(DEFAULT_METRICS),
        min_length=1,
        description="pyiqa metric names (pyiqa.list_models()). Default: the weight-free, fast set "
        "psnr, ssim, ms_ssim, fsim, vif, gmsd, nlpd, vsi (full-reference) and piqe (no-reference); 'entropy' "
        "may be named but rewards noise (higher-better, rises with noise). Learned metrics need their weights "
        "in the local caches.",
    )
    device: TorchDevice = Field("cpu", description="torch device the metrics run on ('cpu', 'cuda', 'cuda:1', ...).")
    masked_maps: bool = Field(
        True,
        description="Score psnr/psnry/ssim/ssimc/gmsd/fsim/vsi/entropy as their quality map pooled inside the "
        "mask (no fill bias). False scores every metric by bbox-fill (ablation).",
    )
    fr_fill: Literal["reference", "constant"] = Field(
        "reference",
        description="Bbox-fill of full-reference metrics: pixels of the bounding box outside the mask are set, "
        "in candidate and reference alike, to the reference's own pixels ('reference': natural context, zero "
        "error there) or to the reference's mean colour inside the mask ('constant').",
    )
    nr_fill: Literal["constant", "reference"] = Field(
        "constant",
        description="Bbox-fill of no-reference metrics: 'constant' = the mean colour inside the mask over all N "
        "candidates, the same for every candidate (NR scores then never depend on the HR); 'reference' = the "
        "reference's pixels (needs a reference).",
    )
    min_sizes: dict[MetricName, int] = Field(
        default_factory=dict,
        description="Per-metric minimum crop side in pixels, overriding MIN_SIZES; bbox crops smaller than "
        "this are mirror-padded up to it.",
    )
    default_min_size: int = Field(
        32, ge=1, description="Minimum crop side for metrics neither in MIN_SIZES nor in min_sizes."
    )

    @field_validator("metrics")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"metrics must be unique, got {value}")
        return value

    @field_validator("min_sizes")
    @classmethod
    def _positive(cls, value: dict[str, int]) -> dict[str, int]:
        for name, size in value.items():
            if size < 1:
                raise ValueError(f"min_sizes[{name!r}] must be >= 1, got {size}")
        return value

    def min_size(self, metric: str) -> int:
        """The minimum crop side of `metric` in pixels."""
        return self.min_sizes.get(metric, MIN_SIZES.get(metric, self.default_min_size))
