"""Previews of the pipeline's datasets: small thumbnails of what a stage wrote, as markdown
with PNG data URIs (the flows publish them as Prefect artifacts).

One function per dataset of pipeline/schemas.py that has something worth seeing; any other
dataset with image columns (a stage added later) gets its first few images. Each preview reads
a handful of rows, so it costs milliseconds next to the stage, and is capped at ~100 KB of
markdown. No Prefect here: `preview_markdown(store, ref)` returns the text or None.
"""
from __future__ import annotations

import base64
import io
import json
from typing import Callable

import numpy as np
from PIL import Image

from dspo_core.segment import rle
from pipeline.datasets import lineage_ref, rgb_array, rows_by_sample
from pipeline.reading_guide import TRAIN_METRIC_READINGS, notice_markdown
from storage import DatasetStore, decode_image, image_columns
from storage.manifest import decode_schema

THUMB = 80            # longest side of a thumbnail, pixels
COLOURS = 64          # thumbnails are palette PNGs: a few KB each
MAX_CHARS = 100_000   # a preview larger than this is cut (artifacts live in the Prefect database)
PALETTE = np.array([(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
                    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
                    (220, 190, 255)], dtype=np.float32)


def thumbnail(image: Image.Image | np.ndarray, size: int = THUMB) -> str:
    """A markdown image: the picture shrunk to `size` px on its longest side, as a PNG data URI."""
    picture = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    picture = picture.convert("RGB")
    scale = size / max(picture.size)
    if scale < 1:
        picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))),
                                 Image.BILINEAR)
    elif scale > 1.5:  # tiny LQ inputs: blow up with visible pixels rather than show a speck
        factor = int(scale)
        picture = picture.resize((picture.width * factor, picture.height * factor), Image.NEAREST)
    buffer = io.BytesIO()
    picture.quantize(COLOURS, method=Image.Quantize.MEDIANCUT).save(buffer, format="PNG", optimize=True)
    return f"![](data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()})"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table; pipes and newlines inside cells are escaped so a cell stays one cell."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def first_rows(store: DatasetStore, ref: str, count: int, columns: list[str] | None = None) -> list[dict]:
    """Up to `count` rows from the start of `ref` (one batch read, not the whole dataset)."""
    for batch in store.iter_batches(ref, batch_size=count, columns=columns):
        return batch.to_pylist()[:count]
    return []


def rows_by_id(store: DatasetStore, ref: str, column: str, ids: list[str], value: str) -> dict[str, object]:
    """{id: row[value]} for the rows of `ref` whose `column` is one of `ids`."""
    found = store.read_where_in(ref, column, ids, columns=[column, value])
    return dict(zip(found.column(column).to_pylist(), found.column(value).to_pylist()))


def overlay(image: np.ndarray, masks: list[np.ndarray], alpha: float = 0.5) -> np.ndarray:
    """The image with each mask tinted in its own colour (uint8, same shape)."""
    out = image.astype(np.float32)
    for index, mask in enumerate(masks):
        colour = PALETTE[index % len(PALETTE)]
        out[mask] = (1 - alpha) * out[mask] + alpha * colour
    return out.clip(0, 255).astype(np.uint8)


def region(image: np.ndarray, mask: np.ndarray, pad: float = 0.25) -> np.ndarray:
    """The instance's bounding box (padded) with everything outside the mask dimmed."""
    rows, cols = np.nonzero(mask)
    if not len(rows):
        return image
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    dy, dx = int((bottom - top) * pad), int((right - left) * pad)
    top, left = max(0, top - dy), max(0, left - dx)
    bottom, right = min(image.shape[0], bottom + dy), min(image.shape[1], right + dx)
    dimmed = image.astype(np.float32)
    dimmed[~mask] *= 0.35
    return dimmed[top:bottom, left:right].clip(0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- per dataset
def preview_hr_images(store: DatasetStore, ref: str) -> str:
    """The first six source images with their ids and sizes."""
    rows = first_rows(store, ref, 6, ["image_id", "width", "height", "image"])
    return table([f"`{row['image_id'][:8]}` {row['width']}x{row['height']}" for row in rows],
                 [[thumbnail(decode_image(row["image"])) for row in rows]])


def preview_lq_pairs(store: DatasetStore, ref: str) -> str:
    """The first four samples: HR crop beside its degraded LQ input."""
    rows = first_rows(store, ref, 4, ["sample_id", "hr", "lq", "scale"])
    return table(["sample", "HR crop", "LQ input"],
                 [[f"`{row['sample_id'][:8]}` x{row['scale']}", thumbnail(decode_image(row["hr"])),
                   thumbnail(decode_image(row["lq"]))] for row in rows])


def preview_sr_candidates(store: DatasetStore, ref: str) -> str:
    """The first sample's LQ input and up to eight of its candidates; "" when empty."""
    first = first_rows(store, ref, 1, ["sample_id"])
    if not first:
        return ""
    sample = first[0]["sample_id"]
    candidates = rows_by_sample(store, ref, ["sample_id", "candidate_index", "backbone", "image"], [sample])
    candidates = sorted(candidates.get(sample, []), key=lambda row: row["candidate_index"])[:8]
    header, cells = [], []
    lq_ref = lineage_ref(store, ref, "lq_pairs")
    if lq_ref:
        lq = rows_by_sample(store, lq_ref, ["sample_id", "lq"], [sample]).get(sample)
        if lq:
            header.append("LQ input")
            cells.append(thumbnail(decode_image(lq[0]["lq"])))
    header += [f"#{row['candidate_index']} {row['backbone']}" for row in candidates]
    cells += [thumbnail(decode_image(row["image"])) for row in candidates]
    return f"Candidates of sample `{sample[:8]}`\n\n" + table(header, [cells])


def preview_instances(store: DatasetStore, ref: str) -> str:
    """Up to three samples' HR anchors with their instances tinted over them; "" when empty."""
    samples = []
    for row in first_rows(store, ref, 64, ["sample_id"]):
        if row["sample_id"] not in samples:
            samples.append(row["sample_id"])
    samples = samples[:3]
    lq_ref = lineage_ref(store, ref, "lq_pairs")
    if not samples or not lq_ref:
        return ""
    anchors = rows_by_sample(store, lq_ref, ["sample_id", "hr"], samples)
    instances = rows_by_sample(store, ref, ["sample_id", "index", "mask", "source"], samples)
    rows = []
    for sample in samples:
        mine = sorted(instances.get(sample, []), key=lambda row: row["index"])
        if sample not in anchors or not mine:
            continue
        image = rgb_array(anchors[sample][0]["hr"])
        masks = [rle.decode(row["mask"]).astype(bool) for row in mine]
        rows.append([f"`{sample[:8]}`", str(len(mine)), mine[0]["source"], thumbnail(image),
                     thumbnail(overlay(image, masks), size=THUMB * 2)])
    return table(["sample", "instance count", "source", "anchor (HR)", "instances over the anchor"], rows)


def _pair_rows(store: DatasetStore, ref: str, count: int, extra: list[str]) -> tuple[list[dict], dict, dict]:
    """The first `count` pairs of `ref`, the images of their candidates by candidate id and the
    masks of their instances by instance id (read from the versions in `ref`'s lineage)."""
    pairs = first_rows(store, ref, count, ["sample_id", "instance_id", "winner_id", "loser_id", "margin", *extra])
    candidates_ref = lineage_ref(store, ref, "sr_candidates")
    instances_ref = lineage_ref(store, ref, "instances")
    if not pairs or not candidates_ref or not instances_ref:
        return [], {}, {}
    wanted = sorted({row["winner_id"] for row in pairs} | {row["loser_id"] for row in pairs})
    images = rows_by_id(store, candidates_ref, "candidate_id", wanted, "image")
    masks = rows_by_id(store, instances_ref, "instance_id", sorted({row["instance_id"] for row in pairs}), "mask")
    return pairs, images, masks


def preview_pairs(store: DatasetStore, ref: str, extra: tuple[str, ...] = ()) -> str:
    """The first four pairs: winner and loser cut to the instance (and the feedback text with `extra`)."""
    pairs, images, masks = _pair_rows(store, ref, 4, list(extra))
    rows = []
    for pair in pairs:
        if pair["winner_id"] not in images or pair["loser_id"] not in images or pair["instance_id"] not in masks:
            continue
        mask = rle.decode(masks[pair["instance_id"]]).astype(bool)
        winner, loser = rgb_array(images[pair["winner_id"]]), rgb_array(images[pair["loser_id"]])
        row = [f"`{pair['instance_id'][:8]}` margin {pair['margin']:.3f}", thumbnail(region(winner, mask)),
               thumbnail(region(loser, mask))]
        if "negative_text" in extra:
            flag = "hallucination; " if pair.get("hallucination") else ""
            row.append(f"{flag}+ {pair.get('positive_text') or ''} / - {pair.get('negative_text') or ''}"[:300])
        rows.append(row)
    header = ["instance", "winner", "loser"] + (["feedback"] if "negative_text" in extra else [])
    return table(header, rows)


def preview_preferences(store: DatasetStore, ref: str) -> str:
    """As `preview_pairs`, with the hallucination flag and the positive/negative feedback."""
    return preview_pairs(store, ref, ("hallucination", "positive_text", "negative_text"))


def preview_checkpoints(store: DatasetStore, ref: str) -> str:
    """The training run's saved steps, pair counts and last metrics, from the manifest, under the
    random-init banner when the backbone has no real weights, and how to read the main metrics."""
    metadata = store.manifest(ref).get("metadata", {})
    lines = [notice_markdown(metadata.get("random_init_notice")),
             (f"run `{metadata.get('run_id', '?')}`: steps saved {metadata.get('steps', [])}, "
              f"{metadata.get('train_pairs', '?')} train / {metadata.get('eval_pairs', '?')} held-out pairs, "
              f"metrics in `{(metadata.get('side_outputs') or {}).get('train_metrics', '?')}`")]
    final = metadata.get("final_metrics") or {}
    for split in ("train", "eval"):
        values = final.get(split)
        if values:
            shown = {key: value for key, value in values.items()
                     if isinstance(value, (int, float)) and key != "step"}  # the step heads the row
            lines.append(table([f"last {split}", *shown], [[str(values.get("step", "")),
                                                              *(f"{value:.4g}" for value in shown.values())]]))
    lines.append("How to read them (eval_* likewise, on held-out pairs):\n\n"
                 + "\n".join(f"- `{key}`: {meaning}" for key, meaning in TRAIN_METRIC_READINGS.items()))
    return "\n\n".join(line for line in lines if line)


def preview_eval_results(store: DatasetStore, ref: str) -> str:
    """The evaluation's markdown summary and its LQ | <each method> | HR grid."""
    metadata = store.manifest(ref).get("metadata", {})
    parts = [metadata.get("markdown") or ""]
    report = (metadata.get("side_outputs") or {}).get("eval_report")
    if report:
        rows = first_rows(store, report, 1, ["grid"])
        if rows and rows[0]["grid"]:
            columns = ["LQ", *(method["name"] for method in metadata.get("methods", [])), "HR"]
            parts.append(" | ".join(columns) + "\n\n" + thumbnail(decode_image(rows[0]["grid"]), size=THUMB * 5))
    return "\n\n".join(part for part in parts if part)


def preview_generic(store: DatasetStore, ref: str) -> str:
    """The image columns of the first four rows of any other dataset; "" when it has none."""
    columns = image_columns(decode_schema(store.manifest(ref)))
    if not columns:
        return ""
    rows = first_rows(store, ref, 4, columns)
    return table(columns, [[thumbnail(decode_image(row[name])) if row[name] else "" for name in columns]
                           for row in rows])


PREVIEWS: dict[str, Callable[[DatasetStore, str], str]] = {
    "hr_images": preview_hr_images,
    "lq_pairs": preview_lq_pairs,
    "sr_candidates": preview_sr_candidates,
    "instances": preview_instances,
    "pairs": preview_pairs,
    "preferences": preview_preferences,
    "instance_scores": lambda store, ref: "",   # numbers only: the result table says enough
    "checkpoints": preview_checkpoints,
    "eval_results": preview_eval_results,
}


def preview_markdown(store: DatasetStore, ref: str) -> str | None:
    """A markdown preview of `ref` ("# ref" + thumbnails), or None when there is nothing to show."""
    name = ref.partition("@")[0]
    body = PREVIEWS.get(name, preview_generic)(store, ref)
    if not body:
        return None
    text = f"### {ref}\n\n{body}\n"
    if len(text) > MAX_CHARS:
        text = text[:text.rfind("\n", 0, MAX_CHARS)] + "\n\n(preview cut at 100 KB)\n"
    return text


def manifest_summary(metadata: dict) -> list[str]:
    """Lines naming the models and fallbacks a manifest records (for the run log)."""
    lines = []
    for key in ("backbones", "segmenter", "iqa", "captioner", "feedback_writer", "model", "models", "weights"):
        if metadata.get(key) is not None:
            lines.append(f"{key}: {json.dumps(metadata[key], default=str)[:400]}")
    config = metadata.get("config")
    if isinstance(config, dict) and config.get("backbone"):
        lines.append(f"backbone: {config['backbone']} {json.dumps(config.get('backbone_config') or {})}")
    if metadata.get("random_init_notice"):
        lines.append(f"random-init backbone: {metadata['random_init_notice']}")
    if metadata.get("fallback"):
        lines.append(f"fallback: {metadata['fallback']}")
    for note in metadata.get("notes") or []:
        lines.append(f"note: {note}")
    return lines
