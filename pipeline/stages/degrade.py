"""Stage `degrade`: `hr_images` -> `lq_pairs` (schema: pipeline.schemas.LQ_PAIRS) with the
Real-ESRGAN second-order degradation; every sampled value and the seed go into the row.

Every crop is `gt_size` square: a source smaller than that on a side is padded there (bottom or
right, cv2.BORDER_REFLECT_101), as BasicSR's RealESRGANDataset pads to its crop size. Such rows
say so in `pad_bottom`, `pad_right` and `notes`; the manifest counts them (`padded_crops`).
With `gt_usm` the LQ is degraded from the USM-sharpened crop (Real-ESRGAN), stored as `hr_usm`
beside the unsharpened `hr`; the manifest's `gt_usm` says which image is which."""
from __future__ import annotations

import hashlib
import logging

import pyarrow as pa

from dspo_core.degradation import DegradationParams, degrade, usm_sharp
from pipeline.config import DegradeConfig, PipelineConfig
from pipeline.datasets import ids_in_splits, rgb_array
from pipeline.schemas import LQ_PAIRS, stable_id
from pipeline.stage import Shard, ShardOutput, Stage, make_shards
from storage import DatasetStore, image_cell

log = logging.getLogger("dspo.degrade")


def crop_seed(base_seed: int, image_id: str, crop_index: int) -> int:
    digest = hashlib.sha256(f"{base_seed}:{image_id}:{crop_index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # non-negative int64


def padding_note(params: DegradationParams, gt_size: int) -> str:
    """The row's `notes`: which sides of the crop are padding and why, or "" for none."""
    crop, parts = params.crop, []
    if crop.pad_bottom:
        parts.append(f"{crop.pad_bottom} px at the bottom (source {params.hr_height} px high)")
    if crop.pad_right:
        parts.append(f"{crop.pad_right} px at the right (source {params.hr_width} px wide)")
    if not parts:
        return ""
    return f"padded {' and '.join(parts)} to gt_size {gt_size} with cv2.BORDER_REFLECT_101"


class DegradeStage(Stage):
    version = 3  # 2: crops padded to gt_size; 3: gt_usm (on by default) and the hr_usm column

    def section(self, config: PipelineConfig) -> DegradeConfig:
        return config.degrade

    def schemas(self, section: DegradeConfig) -> dict[str, pa.Schema]:
        return {"lq_pairs": LQ_PAIRS}

    def metadata(self, section: DegradeConfig) -> dict:
        """`gt_usm`: whether the LQ was degraded from the sharpened GT, and what `hr` / `hr_usm` hold."""
        if section.degradation.gt_usm:
            return {"gt_usm": {"enabled": True, "hr": "the unsharpened GT crop (evaluation target)",
                               "hr_usm": "USMSharp(hr) (radius 50, weight 0.5, threshold 10), the image the lq was "
                                         "degraded from (Real-ESRGAN's L1 / perceptual target)"}}
        return {"gt_usm": {"enabled": False, "hr": "the GT crop the lq was degraded from", "hr_usm": None}}

    def plan(self, store: DatasetStore, inputs: dict[str, str], section: DegradeConfig) -> list[Shard]:
        return make_shards(ids_in_splits(store, inputs["hr_images"], "image_id", section.splits), section.shard_size)

    def run_shard(self, store: DatasetStore, inputs: dict[str, str], section: DegradeConfig,
                  shard: Shard) -> ShardOutput:
        source = store.read_where_in(inputs["hr_images"], "image_id", shard.items,
                                     columns=["image_id", "split", "image"])
        gt_size = section.degradation.gt_size
        rows, quarantine, padded = [], [], []
        for record in source.to_pylist():
            hr = rgb_array(record["image"])
            for crop_index in range(section.crops_per_image):
                seed = crop_seed(section.seed, record["image_id"], crop_index)
                try:
                    hr_crop, lq, params = degrade(hr, section.degradation, seed)
                except ValueError as exc:
                    quarantine.append({"item": record["image_id"], "reason": str(exc)})
                    break
                note = padding_note(params, gt_size)
                if note:
                    padded.append(record["image_id"])
                rows.append({
                    "sample_id": stable_id("sample", record["image_id"], seed),
                    "image_id": record["image_id"], "split": record["split"],
                    "crop_top": params.crop.top, "crop_left": params.crop.left,
                    "crop_height": params.crop.height, "crop_width": params.crop.width,
                    "pad_bottom": params.crop.pad_bottom, "pad_right": params.crop.pad_right,
                    "scale": params.scale, "hr": image_cell(hr_crop), "lq": image_cell(lq), "seed": seed,
                    "hr_usm": image_cell(usm_sharp(hr_crop)) if params.gt_usm else None,
                    "degradation_params": params.to_json(), "notes": note,
                })
        notes = []
        if padded:
            log.info("degrade %s: %d of %d crops padded to gt_size %d (sources smaller on a side): images %s",
                     shard.key, len(padded), len(rows), gt_size, ", ".join(sorted(set(padded))))
            notes.append(f"sources smaller than gt_size {gt_size} on a side are padded there (bottom or right, "
                         "cv2.BORDER_REFLECT_101, as BasicSR's RealESRGANDataset does): see the rows' notes, "
                         "pad_bottom and pad_right, and padded_crops")
        return ShardOutput(pa.Table.from_pylist(rows, schema=LQ_PAIRS), quarantine, notes=notes,
                           stats={"crops": len(rows), "padded_crops": len(padded)})

    def summarize(self, stats: list[dict]) -> dict:
        """`crops` made and `padded_crops`: how many of them pad a source smaller than gt_size."""
        return {key: sum(item.get(key, 0) for item in stats) for key in ("crops", "padded_crops")}
