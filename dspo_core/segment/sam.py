"""Segment Anything (SAM) automatic mask generation as an instance segmenter.

Every model type -- the official ``vit_b``/``vit_l``/``vit_h`` and the test-size
``custom-tiny`` -- goes through the same path: ``SAM_MODEL_BUILDERS[model_type]()``
builds the architecture (the official ones through
``segment_anything.sam_model_registry``), ``load_sam`` loads a state-dict
checkpoint into it (strictly, on CPU first, ``weights_only``) and moves it to
the device, and ``SamAutomaticMaskGenerator`` produces the masks.

A tiny checkpoint for tests and notebooks::

    path = save_tiny_sam_checkpoint(tmp_dir / "sam_custom_tiny.pth", seed=0)
    config = SegmenterConfig(name="sam", sam=SamConfig(model_type="custom-tiny", checkpoint=str(path),
                             points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0, box_nms_thresh=1.0))

(random weights give no masks at SAM's default thresholds).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cached_property, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..digest import sha256_file
from .base import Segmenter
from .config import SegmenterConfig
from .instances import Proposal

if TYPE_CHECKING:
    from segment_anything.modeling import Sam

__all__ = [
    "SAM_MODEL_BUILDERS",
    "TINY_SAM_ARCH",
    "MissingCheckpointError",
    "SamSegmenter",
    "build_sam_tiny",
    "load_sam",
    "resolve_device",
    "save_tiny_sam_checkpoint",
]

#: Architecture of ``custom-tiny``: SAM's layout at toy size (image 256 px, 16x16 embedding grid).
TINY_SAM_ARCH: dict[str, Any] = {
    "img_size": 256,
    "patch_size": 16,
    "encoder_embed_dim": 64,
    "encoder_depth": 2,
    "encoder_num_heads": 2,
    "encoder_global_attn_indexes": (1,),
    "window_size": 8,
    "prompt_embed_dim": 64,
    "mask_in_chans": 16,
    "decoder_mlp_dim": 128,
    "decoder_num_heads": 2,
    "iou_head_hidden_dim": 64,
}


#: Where the official checkpoints are listed. This package loads the checkpoint path it is given;
#: which file goes with which model type, and where it is kept, is the caller's catalog.
SAM_DOWNLOADS = "https://github.com/facebookresearch/segment-anything#model-checkpoints"


class MissingCheckpointError(FileNotFoundError):
    """No SAM checkpoint is configured, or the configured file does not exist."""


def _missing_message(model_type: str, checkpoint: str | None) -> str:
    where = (
        f"download the official {model_type} checkpoint ({SAM_DOWNLOADS})"
        if model_type != "custom-tiny"
        else "write one with dspo_core.segment.save_tiny_sam_checkpoint(path)"
    )
    head = (
        f"SAM model_type {model_type!r} needs a checkpoint, but sam.checkpoint is not set"
        if checkpoint is None
        else f"SAM checkpoint {checkpoint} (model_type {model_type!r}) does not exist"
    )
    return f"{head}: {where} and set sam.checkpoint to its path, or use the offline segmenter name='felzenszwalb'."


def build_sam_tiny() -> Sam:
    """Random-init ``custom-tiny`` SAM (about 0.37M parameters), assembled like segment-anything's ``_build_sam``."""
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    a = TINY_SAM_ARCH
    grid = a["img_size"] // a["patch_size"]
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=a["encoder_depth"],
            embed_dim=a["encoder_embed_dim"],
            img_size=a["img_size"],
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=a["encoder_num_heads"],
            patch_size=a["patch_size"],
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=a["encoder_global_attn_indexes"],
            window_size=a["window_size"],
            out_chans=a["prompt_embed_dim"],
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=a["prompt_embed_dim"],
            image_embedding_size=(grid, grid),
            input_image_size=(a["img_size"], a["img_size"]),
            mask_in_chans=a["mask_in_chans"],
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2,
                embedding_dim=a["prompt_embed_dim"],
                mlp_dim=a["decoder_mlp_dim"],
                num_heads=a["decoder_num_heads"],
            ),
            transformer_dim=a["prompt_embed_dim"],
            iou_head_depth=3,
            iou_head_hidden_dim=a["iou_head_hidden_dim"],
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def _official(model_type: str) -> Callable[[], Sam]:
    def build() -> Sam:
        from segment_anything import sam_model_registry

        return sam_model_registry[model_type](checkpoint=None)

    build.__name__ = f"build_sam_{model_type}"
    return build


#: model_type -> builder of the (randomly initialised) architecture; ``load_sam`` fills in the weights.
SAM_MODEL_BUILDERS: dict[str, Callable[[], Sam]] = {
    "vit_b": _official("vit_b"),
    "vit_l": _official("vit_l"),
    "vit_h": _official("vit_h"),
    "custom-tiny": build_sam_tiny,
}


def save_tiny_sam_checkpoint(path: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write the state dict of a ``custom-tiny`` SAM initialised from ``seed``; returns the path.

    The global torch RNG is left untouched. The same seed gives the same weights.
    """
    import torch

    path = Path(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = build_sam_tiny()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sam.state_dict(), path)
    return path


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; anything else unchanged."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_sam(model_type: str, checkpoint: str | os.PathLike[str] | None, device: str = "cpu") -> Sam:
    """Build ``model_type``'s architecture and load ``checkpoint`` (a state dict) into it, in eval mode.

    Raises MissingCheckpointError when ``checkpoint`` is None or absent, and
    ValueError when the file is not a state dict of that architecture.
    """
    import torch

    if model_type not in SAM_MODEL_BUILDERS:
        raise ValueError(f"unknown SAM model_type {model_type!r}; known: {sorted(SAM_MODEL_BUILDERS)}")
    if checkpoint is None or not Path(checkpoint).is_file():
        raise MissingCheckpointError(_missing_message(model_type, None if checkpoint is None else str(checkpoint)))
    sam = SAM_MODEL_BUILDERS[model_type]()
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        sam.load_state_dict(state, strict=True)
    except Exception as exc:  # unpickling errors, wrong keys or shapes
        raise ValueError(f"{checkpoint} is not a {model_type!r} SAM checkpoint: {exc}") from exc
    return sam.to(resolve_device(device)).eval()


class SamSegmenter(Segmenter):
    """Instances from ``SamAutomaticMaskGenerator`` (binary masks, then the shared post-filter).

    The model is loaded when the segmenter is built; MissingCheckpointError names
    the expected checkpoint file when ``sam.checkpoint`` is unset or missing.
    """

    name = "sam"
    library = "segment-anything"

    def __init__(self, config: SegmenterConfig) -> None:
        super().__init__(config)
        from segment_anything import SamAutomaticMaskGenerator

        opts = config.sam
        self.device = resolve_device(config.device)
        self.checkpoint = Path(opts.checkpoint) if opts.checkpoint is not None else None
        self.model = load_sam(opts.model_type, self.checkpoint, self.device)
        self.generator = SamAutomaticMaskGenerator(
            self.model,
            points_per_side=opts.points_per_side,
            points_per_batch=opts.points_per_batch,
            pred_iou_thresh=opts.pred_iou_thresh,
            stability_score_thresh=opts.stability_score_thresh,
            stability_score_offset=opts.stability_score_offset,
            box_nms_thresh=opts.box_nms_thresh,
            crop_n_layers=opts.crop_n_layers,
            crop_nms_thresh=opts.crop_nms_thresh,
            crop_overlap_ratio=opts.crop_overlap_ratio,
            crop_n_points_downscale_factor=opts.crop_n_points_downscale_factor,
            min_mask_region_area=opts.min_mask_region_area,
            output_mode="binary_mask",
        )

    @cached_property
    def checkpoint_sha256(self) -> str:
        """Full hex sha256 of the checkpoint file (computed once, on first use)."""
        assert self.checkpoint is not None
        return sha256_file(self.checkpoint)

    def propose(self, image: np.ndarray) -> list[Proposal]:
        anns = self.generator.generate(image)
        return [
            Proposal(
                mask=np.asarray(a["segmentation"], dtype=bool),
                source="sam",
                predicted_iou=float(a["predicted_iou"]),
                stability_score=float(a["stability_score"]),
            )
            for a in anns
        ]

    def describe_params(self) -> dict[str, Any]:
        assert self.checkpoint is not None
        params = self.config.sam.model_dump(mode="json", exclude={"checkpoint"})
        params["checkpoint_file"] = self.checkpoint.name
        params["checkpoint_sha256"] = self.checkpoint_sha256[:16]
        params["device"] = self.device
        if params["model_type"] == "custom-tiny":
            params["architecture"] = {k: list(v) if isinstance(v, tuple) else v for k, v in TINY_SAM_ARCH.items()}
        return params
