"""Options of the instance segmenters (DSPO pipeline step 3) and of their post-filter.

``SegmenterConfig.name`` picks the segmenter from ``SEGMENTERS``; only the
sub-config of that segmenter is used (and recorded by ``describe()``). SAM's
options mirror ``segment_anything.SamAutomaticMaskGenerator``'s arguments with
the same names and defaults. The post-filter is the project's own choice
(**[ours]** in DSPO.md): drop small masks, keep the top K, make them disjoint.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from dspo_core.devices import AnyDevice

SamModelType = Literal["vit_b", "vit_l", "vit_h", "custom-tiny"]



class SamConfig(BaseModel):
    """Segment Anything automatic mask generation (``SamAutomaticMaskGenerator``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_type: SamModelType = Field(
        "vit_b",
        description="SAM backbone: the official vit_b / vit_l / vit_h, or custom-tiny (a 0.37M-parameter "
        "random-init ViT at 256 px used by tests to run the real code path on CPU).",
    )
    checkpoint: str | None = Field(
        None,
        description="Path of the state-dict checkpoint for `model_type` (e.g. sam_vit_b_01ec64.pth). "
        "None means not configured: building the segmenter raises MissingCheckpointError.",
    )
    points_per_side: int = Field(32, ge=1, description="Prompt grid is points_per_side x points_per_side points.")
    points_per_batch: int = Field(64, ge=1, description="Point prompts run through the mask decoder at once.")
    pred_iou_thresh: float = Field(
        0.88, ge=0, le=1, description="Drop masks whose predicted IoU is not above this (0 disables)."
    )
    stability_score_thresh: float = Field(
        0.95, ge=0, le=1, description="Drop masks whose stability score is below this (0 disables)."
    )
    stability_score_offset: float = Field(1.0, description="Logit offset used when computing the stability score.")
    box_nms_thresh: float = Field(
        0.7, ge=0, le=1, description="Box IoU above which duplicate masks are suppressed (1.0 keeps all)."
    )
    crop_n_layers: int = Field(0, ge=0, description="Extra layers of image crops to rerun on (layer i: 4**i crops).")
    crop_nms_thresh: float = Field(0.7, ge=0, le=1, description="Box NMS threshold between masks of different crops.")
    crop_overlap_ratio: float = Field(
        512 / 1500, ge=0, lt=1, description="Overlap of first-layer crops, share of side."
    )
    crop_n_points_downscale_factor: int = Field(
        1, ge=1, description="Points per side in crop layer n are divided by this**n."
    )
    min_mask_region_area: int = Field(
        0,
        ge=0,
        description="Remove islands and fill holes smaller than this many pixels inside each mask (needs "
        "OpenCV). It does NOT drop small masks (segment-anything #187): use postfilter.min_area_share.",
    )


class FelzenszwalbConfig(BaseModel):
    """Graph-based superpixels (``skimage.segmentation.felzenszwalb``): the offline instance proposals."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    scale: float = Field(300.0, gt=0, description="Higher means larger segments (skimage `scale`).")
    sigma: float = Field(0.8, ge=0, description="Gaussian pre-smoothing sigma, in pixels (skimage `sigma`).")
    min_size: int = Field(
        64, ge=1, description="Segments smaller than this many pixels are merged into a neighbour (skimage `min_size`)."
    )


class PostFilterConfig(BaseModel):
    """What happens to the raw masks before they become instances.

    Order: (1) drop masks under ``min_area_share``; (2) rank the rest by
    ``priority``; (3) walk the ranking greedily, keeping at most
    ``max_instances``; with ``disjoint`` each mask loses the pixels already
    taken by higher-ranked masks and is skipped when what is left falls under
    ``min_area_share``; (4) with ``remainder``, the pixels no kept instance covers
    become one extra instance (not counted in ``max_instances``), if they are
    at least ``min_area_share`` of the image. Weights w_m = area / sum of areas
    are computed last, over all instances including the remainder.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_area_share: float = Field(
        0.005,
        ge=0,
        le=1,
        description="Drop masks covering less than this share of the image's pixels (0.005 = 0.5%). Applied to "
        "the raw mask and again to what is left of it after making masks disjoint. Masks always need >= 1 pixel.",
    )
    max_instances: int | None = Field(
        20, ge=1, description="K: keep at most this many instances, the first K in `priority` order (None: all)."
    )
    priority: Literal["score", "area"] = Field(
        "score",
        description="Ranking used for top-K and for disjointness. score: higher SAM predicted_iou first, then "
        "higher stability_score, then larger area (segmenters without scores, e.g. felzenszwalb, fall back to "
        "area); area: larger raw mask first. Ties keep the segmenter's own order.",
    )
    disjoint: bool = Field(
        True, description="Assign each pixel to at most one instance: the highest-ranked mask that contains it."
    )
    remainder: bool = Field(
        False,
        description="Add one extra instance (source 'remainder') made of the pixels no kept instance covers, so "
        "the instances tile the whole image when `disjoint` is on.",
    )


class SegmenterConfig(BaseModel):
    """Which segmenter to run, its options, the post-filter and the device."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Literal["sam", "felzenszwalb"] = Field(
        "sam",
        description="Segmenter, a key of SEGMENTERS. felzenszwalb is the offline fallback when no SAM "
        "checkpoint is available; the pipeline layer chooses it and names it in logs and manifests.",
    )
    sam: SamConfig = Field(default_factory=SamConfig, description="Options used when name == 'sam'.")
    felzenszwalb: FelzenszwalbConfig = Field(
        default_factory=FelzenszwalbConfig, description="Options used when name == 'felzenszwalb'."
    )
    postfilter: PostFilterConfig = Field(
        default_factory=PostFilterConfig, description="Area filter, top-K, disjointness and remainder."
    )
    device: AnyDevice = Field(
        "cpu",
        description="Torch device for SAM: cpu, cuda, cuda:N, mps, or auto (cuda when available, else cpu). "
        "Ignored by felzenszwalb.",
    )

