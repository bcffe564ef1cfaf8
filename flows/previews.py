"""Small thumbnails of what a stage wrote, as markdown with PNG data URIs (for a Prefect artifact).

One function per output dataset that has something worth seeing; any other dataset with
image columns (a stage added later) gets its first few images. Each preview reads a handful
of rows, so it costs milliseconds next to the stage, and is capped at ~100 KB of markdown.
No Prefect here: `preview_markdown(store, ref)` returns the text or None.
"""
from __future__ import annotations

import base64
import io
import json
from collections import deque
from typing import Callable

import numpy as np
import pyarrow.compute as pc
from PIL import Image

from dspo_core.segment import rle
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
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def lineage_ref(store: DatasetStore, ref: str, name: str) -> str | None:
    """The version of dataset `name` that `ref` was made from, following manifest inputs breadth-first."""
    queue, seen = deque([ref]), set()
    while queue:
        current = queue.popleft()
        if current in seen:
            continue
        seen.add(current)
        for parent in store.manifest(current).get("inputs", []):
            if parent.partition("@")[0] == name:
                return parent
            queue.append(parent)
    return None


def first_rows(store: DatasetStore, ref: str, count: int, columns: list[str] | None = None) -> list[dict]:
    for batch in store.iter_batches(ref, batch_size=count, columns=columns):
        return batch.to_pylist()[:count]
    return []


def rows_where(store: DatasetStore, ref: str, column: str, values: list, columns: list[str]) -> list[dict]:
    return store.read_arrow(ref, columns=columns, filter=pc.field(column).isin(values)).to_pylist()


def overlay(image: np.ndarray, masks: list[np.ndarray], alpha: float = 0.5) -> np.ndarray:
    """Instances tinted in distinct colours over the image."""
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


def rgb(cell: dict) -> np.ndarray:
    return np.asarray(decode_image(cell).convert("RGB"))


# ----------------------------------------------------------------------------- per dataset
def preview_hr_images(store: DatasetStore, ref: str) -> str:
    rows = first_rows(store, ref, 6, ["image_id", "width", "height", "image"])
    return table([f"`{row['image_id'][:8]}` {row['width']}x{row['height']}" for row in rows],
                 [[thumbnail(decode_image(row["image"])) for row in rows]])


def preview_lq_pairs(store: DatasetStore, ref: str) -> str:
    rows = first_rows(store, ref, 4, ["sample_id", "hr", "lq", "scale"])
    return table(["sample", "HR crop", "LQ input"],
                 [[f"`{row['sample_id'][:8]}` x{row['scale']}", thumbnail(decode_image(row["hr"])),
                   thumbnail(decode_image(row["lq"]))] for row in rows])


def preview_sr_candidates(store: DatasetStore, ref: str) -> str:
    first = first_rows(store, ref, 1, ["sample_id"])
    if not first:
        return ""
    sample = first[0]["sample_id"]
    candidates = sorted(rows_where(store, ref, "sample_id", [sample], ["candidate_index", "backbone", "image"]),
                        key=lambda row: row["candidate_index"])[:8]
    header, cells = [], []
    lq_ref = lineage_ref(store, ref, "lq_pairs")
    if lq_ref:
        lq = rows_where(store, lq_ref, "sample_id", [sample], ["lq"])
        if lq:
            header.append("LQ input")
            cells.append(thumbnail(decode_image(lq[0]["lq"])))
    header += [f"#{row['candidate_index']} {row['backbone']}" for row in candidates]
    cells += [thumbnail(decode_image(row["image"])) for row in candidates]
    return f"Candidates of sample `{sample[:8]}`\n\n" + table(header, [cells])


def preview_instances(store: DatasetStore, ref: str) -> str:
    samples = []
    for row in first_rows(store, ref, 64, ["sample_id"]):
        if row["sample_id"] not in samples:
            samples.append(row["sample_id"])
    samples = samples[:3]
    lq_ref = lineage_ref(store, ref, "lq_pairs")
    if not samples or not lq_ref:
        return ""
    anchors = {row["sample_id"]: row["hr"] for row in rows_where(store, lq_ref, "sample_id", samples, ["sample_id", "hr"])}
    instances = rows_where(store, ref, "sample_id", samples, ["sample_id", "index", "mask", "source"])
    rows = []
    for sample in samples:
        mine = sorted((row for row in instances if row["sample_id"] == sample), key=lambda row: row["index"])
        if sample not in anchors or not mine:
            continue
        image = rgb(anchors[sample])
        masks = [rle.decode(row["mask"]).astype(bool) for row in mine]
        rows.append([f"`{sample[:8]}`", str(len(mine)), mine[0]["source"], thumbnail(image),
                     thumbnail(overlay(image, masks), size=THUMB * 2)])
    return table(["sample", "instances", "source", "anchor", "instances"], rows)


def _pair_rows(store: DatasetStore, ref: str, count: int, extra: list[str]) -> tuple[list[dict], dict, dict]:
    pairs = first_rows(store, ref, count, ["sample_id", "instance_id", "winner_id", "loser_id", "margin", *extra])
    candidates_ref = lineage_ref(store, ref, "sr_candidates")
    instances_ref = lineage_ref(store, ref, "instances")
    if not pairs or not candidates_ref or not instances_ref:
        return [], {}, {}
    wanted = sorted({row["winner_id"] for row in pairs} | {row["loser_id"] for row in pairs})
    images = {row["candidate_id"]: row["image"]
              for row in rows_where(store, candidates_ref, "candidate_id", wanted, ["candidate_id", "image"])}
    masks = {row["instance_id"]: row["mask"] for row in rows_where(
        store, instances_ref, "instance_id", sorted({row["instance_id"] for row in pairs}), ["instance_id", "mask"])}
    return pairs, images, masks


def preview_pairs(store: DatasetStore, ref: str, extra: tuple[str, ...] = ()) -> str:
    pairs, images, masks = _pair_rows(store, ref, 4, list(extra))
    rows = []
    for pair in pairs:
        if pair["winner_id"] not in images or pair["loser_id"] not in images or pair["instance_id"] not in masks:
            continue
        mask = rle.decode(masks[pair["instance_id"]]).astype(bool)
        winner, loser = rgb(images[pair["winner_id"]]), rgb(images[pair["loser_id"]])
        row = [f"`{pair['instance_id'][:8]}` margin {pair['margin']:.3f}", thumbnail(region(winner, mask)),
               thumbnail(region(loser, mask))]
        if "negative_text" in extra:
            flag = "hallucination; " if pair.get("hallucination") else ""
            row.append(f"{flag}+ {pair.get('positive_text') or ''} / - {pair.get('negative_text') or ''}"[:300])
        rows.append(row)
    header = ["instance", "winner", "loser"] + (["feedback"] if "negative_text" in extra else [])
    return table(header, rows)


def preview_preferences(store: DatasetStore, ref: str) -> str:
    return preview_pairs(store, ref, ("hallucination", "positive_text", "negative_text"))


def preview_checkpoints(store: DatasetStore, ref: str) -> str:
    metadata = store.manifest(ref).get("metadata", {})
    lines = [f"run `{metadata.get('run_id', '?')}`: steps saved {metadata.get('steps', [])}, "
             f"{metadata.get('train_pairs', '?')} train / {metadata.get('eval_pairs', '?')} held-out pairs, "
             f"metrics in `{metadata.get('train_metrics', '?')}`"]
    for split, values in (metadata.get("final_metrics") or {}).items():
        if values:
            shown = {key: value for key, value in values.items() if isinstance(value, (int, float))}
            lines.append(table([f"last {split}", *shown], [[str(values.get("step", "")),
                                                              *(f"{value:.4g}" for value in shown.values())]]))
    return "\n\n".join(lines)


def preview_eval_results(store: DatasetStore, ref: str) -> str:
    metadata = store.manifest(ref).get("metadata", {})
    parts = [metadata.get("markdown") or ""]
    report = metadata.get("eval_report")
    if report:
        rows = first_rows(store, report, 1, ["grid"])
        if rows and rows[0]["grid"]:
            parts.append("LQ | base | tuned | HR\n\n" + thumbnail(decode_image(rows[0]["grid"]), size=THUMB * 5))
    return "\n\n".join(part for part in parts if part)


def preview_generic(store: DatasetStore, ref: str) -> str:
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
    if metadata.get("fallback"):
        lines.append(f"fallback: {metadata['fallback']}")
    for note in metadata.get("notes") or []:
        lines.append(f"note: {note}")
    return lines
