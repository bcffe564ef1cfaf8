"""Options of the per-instance IQA scoring (DSPO pipeline step 5).

``IQAConfig.metrics`` names pyiqa metrics (``pyiqa.list_models()``). The default set
is pyiqa's weight-free metrics, which run offline with nothing cached:

- full-reference (fidelity to the HR crop): psnr, ssim, ms_ssim, fsim, vif, gmsd, nlpd, vsi;
- no-reference (realism): piqe, entropy.

``mad`` is weight-free too but is left out of the default: on the 2-core CPU machines
pyiqa's MAD takes ~20 s for 4 candidates at 256x256 (about 5 s per image, vs < 0.3 s
for every other default metric), i.e. minutes per sample once instances are scored.
``cw_ssim``, ``psnry`` and ``ssimc`` are weight-free and may be configured.

Learned metrics (lpips, dists, musiq, maniqa, clipiqa, topiq_nr, niqe, ...) may be
configured when their weights are in the local caches (see ``dspo_core.iqa.weights``);
a configured metric whose weights are missing raises ``MissingWeightsError`` when the
scorer is built. Nothing is ever downloaded.

This module imports neither torch nor pyiqa: the names are checked against pyiqa
when the scorer is built (``dspo_core.iqa.scoring.IQAScorer``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: pyiqa metrics that need no downloaded weights (FIELD-NOTES, checked by the tests).
WEIGHT_FREE_METRICS: frozenset[str] = frozenset(
    {"psnr", "psnry", "ssim", "ssimc", "ms_ssim", "cw_ssim", "fsim", "vif", "gmsd", "nlpd", "mad", "vsi", "piqe", "entropy"}
)

#: The offline default: weight-free and fast (``mad`` is excluded, see the module doc).
DEFAULT_METRICS: tuple[str, ...] = (
    "psnr", "ssim", "ms_ssim", "fsim", "vif", "gmsd", "nlpd", "vsi", "piqe", "entropy",
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


class IQAConfig(BaseModel):
    """Which pyiqa metrics score each (candidate, instance), and how instances are cut out."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    metrics: list[str] = Field(
        default_factory=lambda: list(DEFAULT_METRICS),
        min_length=1,
        description="pyiqa metric names (pyiqa.list_models()). Default: the weight-free, fast set "
        "psnr, ssim, ms_ssim, fsim, vif, gmsd, nlpd, vsi (full-reference) and piqe, entropy (no-reference). "
        "Learned metrics need their weights in the local caches.",
    )
    device: str = Field("cpu", description="torch device the metrics run on ('cpu', 'cuda', 'cuda:1', ...).")
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
    min_sizes: dict[str, int] = Field(
        default_factory=dict,
        description="Per-metric minimum crop side in pixels, overriding MIN_SIZES; bbox crops smaller than "
        "this are mirror-padded up to it.",
    )
    default_min_size: int = Field(
        32, ge=1, description="Minimum crop side for metrics neither in MIN_SIZES nor in min_sizes."
    )

    @field_validator("metrics")
    @classmethod
    def _unique_supported(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"metrics must be unique, got {value}")
        bad = sorted(set(value) & UNSUPPORTED_METRICS)
        if bad:
            raise ValueError(f"metrics {bad} do not give one score per image and cannot score instances")
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
