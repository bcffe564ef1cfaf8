"""Stage `evaluate`: (`lq_pairs`, `checkpoints`) -> `eval_results` (schema: pipeline.schemas.EVAL_RESULTS),
and the side output `eval_report`, one row (pipeline.schemas.EVAL_REPORT).

Base vs tuned on held-out samples: each LQ is super-resolved by the checkpoint's base backbone
(rebuilt from the config stored in the checkpoint row) and again with the checkpoint's LoRA
loaded from the store, under the same settings and seed; both are scored on the whole image
(one all-ones mask) against the HR crop with the IQA module. Design choices:

- Samples: the configured lq_pairs splits (default test); when none has rows, `val`, then
  every row; the fallback is named in the log, the manifest notes and the report.
- A backbone built from config with random weights (tiny-sd without a `path`) gets a banner
  at the top of the report and `random_init_backbone: true` with the sentence in the manifest
  (pipeline.reading_guide): its numbers show the machinery, not image quality.
- One shard (both models loaded once; eval sets are ~100 images). The `eval_report` row holds
  the markdown report and a side-by-side PNG grid (an HF Image cell), so the PNG stays out of
  the JSON manifest, whose metadata holds the per-model means and the markdown.
"""
from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw

from dspo_core.iqa import IQAScorer
from pipeline.checkpoints import (
    build_diffusion_backbone,
    checkpoint_row,
    load_checkpoint_into,
)
from pipeline.config import EvaluateConfig, PipelineConfig
from pipeline.datasets import rgb_array
from pipeline.reading_guide import notice_markdown, random_init_metadata
from pipeline.schemas import EVAL_REPORT, EVAL_RESULTS
from pipeline.stage import Shard, ShardOutput, Stage
from storage import DatasetStore, image_cell

log = logging.getLogger("dspo.evaluate")
MODELS = ("base", "tuned")
GRID_COLUMNS = ("LQ", "base", "tuned", "HR")


def choose_samples(store: DatasetStore, ref: str, splits: list[str]) -> tuple[str, list[str], str]:
    """(split label, sample ids, note): the configured splits, else `val`, else all rows (named in the note)."""
    table = store.read_arrow(ref, columns=["sample_id", "split"])
    ids, split = table.column("sample_id").to_pylist(), table.column("split").to_pylist()
    for label, wanted in ((",".join(splits), set(splits)), ("val", {"val"})):
        chosen = [i for i, s in zip(ids, split) if s in wanted]
        if chosen:
            note = "" if wanted == set(splits) else f"no {ref} rows in splits {splits}: evaluated on 'val' instead"
            return label, chosen, note
    return "all", ids, f"no {ref} rows in splits {splits} nor 'val': evaluated on ALL rows (may include training data)"


def sample_seed(seed: int, sample_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()[:8], "big") >> 1


def compare(values: dict[str, dict[str, list[float]]], lower_better: dict[str, bool]) -> dict:
    """{metric: {base, tuned, delta, lower_better, better}} from per-model value lists."""
    means = {}
    for metric, per_model in values.items():
        base, tuned = (float(np.mean(per_model[model])) for model in MODELS)
        delta = tuned - base
        gain = -delta if lower_better[metric] else delta
        means[metric] = {"base": base, "tuned": tuned, "delta": delta, "lower_better": lower_better[metric],
                         "better": "tuned" if gain > 0 else "base" if gain < 0 else "tie"}
    return means


def markdown_report(means: dict, checkpoint: dict, split: str, samples: int, note: str,
                    random_init_notice: str | None = None) -> str:
    """The report: heading, the random-init banner (when given), samples and split, any fallback, the table."""
    arrows = {"tuned": "↑ better", "base": "↓ worse", "tie": "= same"}
    banner = notice_markdown(random_init_notice)
    lines = [f"## DSPO evaluation: checkpoint {checkpoint['checkpoint_id']} (step {checkpoint['step']})", "",
             *([banner, ""] if banner else []),
             f"{samples} samples of split `{split}`; whole-image scores against the HR crop.", ""]
    if note:
        lines += [f"**Fallback:** {note}", ""]
    lines += ["| metric | base | tuned | delta | tuned vs base |", "|---|---:|---:|---:|---|"]
    for metric, row in means.items():
        direction = "lower is better" if row["lower_better"] else "higher is better"
        lines.append(f"| {metric} ({direction}) | {row['base']:.4f} | {row['tuned']:.4f} | {row['delta']:+.4f} "
                     f"| {arrows[row['better']]} |")
    return "\n".join(lines) + "\n"


def grid_png(rows: list[tuple[np.ndarray, ...]]) -> Image.Image:
    """LQ (nearest-upscaled) | base | tuned | HR per row, under a header naming the columns."""
    height, width = rows[0][-1].shape[:2]
    header = 14
    grid = Image.new("RGB", (width * len(GRID_COLUMNS), header + height * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for column, label in enumerate(GRID_COLUMNS):
        draw.text((column * width + 4, 1), label, fill="black")
    for index, images in enumerate(rows):
        for column, image in enumerate(images):
            tile = Image.fromarray(image).resize((width, height), Image.NEAREST)
            grid.paste(tile, (column * width, header + index * height))
    return grid


class EvaluateStage(Stage):
    def section(self, config: PipelineConfig) -> EvaluateConfig:
        return config.evaluate

    def schemas(self, section: EvaluateConfig) -> dict[str, pa.Schema]:
        return {"eval_results": EVAL_RESULTS, "eval_report": EVAL_REPORT}

    def plan(self, store: DatasetStore, inputs: dict[str, str], section: EvaluateConfig) -> list[Shard]:
        _, ids, note = choose_samples(store, inputs["lq_pairs"], section.splits)
        if note:
            log.warning("evaluate: %s", note)
        return [Shard("shard-00000", tuple(ids))]

    def run_shard(self, store: DatasetStore, inputs: dict[str, str], section: EvaluateConfig,
                  shard: Shard) -> ShardOutput:
        split_label, ids, note = choose_samples(store, inputs["lq_pairs"], section.splits)  # same as plan's
        checkpoint = checkpoint_row(store, inputs["checkpoints"], section.step)
        config = json.loads(checkpoint["config"])
        backbone = build_diffusion_backbone(config["backbone"], config["backbone_config"])
        samples = store.read_where_in(inputs["lq_pairs"], "sample_id", ids,
                                      columns=["sample_id", "split", "lq", "hr"]).to_pylist()
        samples.sort(key=lambda row: ids.index(row["sample_id"]))
        lq = [rgb_array(row["lq"]) for row in samples]
        hr = [rgb_array(row["hr"]) for row in samples]
        settings = [section.settings.model_copy(update={"seed": sample_seed(section.settings.seed, row["sample_id"])})
                    for row in samples]
        outputs, weights = {"base": backbone.sample(lq, settings)}, {"base": backbone.weights_id}
        random_init = random_init_metadata(backbone.base_weights_id)
        load_checkpoint_into(backbone, store, checkpoint)
        outputs["tuned"], weights["tuned"] = backbone.sample(lq, settings), backbone.weights_id

        scorer = IQAScorer(section.iqa)
        lower_better = {info.name: info.lower_better for info in scorer.metrics}
        values: dict[str, dict[str, list[float]]] = {info.name: {m: [] for m in MODELS} for info in scorer.metrics}
        rows = []
        for index, row in enumerate(samples):
            candidates = np.stack([outputs[model][index] for model in MODELS])
            whole = np.ones(hr[index].shape[:2], dtype=bool)
            for record in scorer.score_instances(candidates, hr[index], [whole]):
                model = MODELS[record.candidate]
                values[record.metric][model].append(record.value)
                rows.append({"sample_id": row["sample_id"], "split": row["split"], "model": model,
                             "weights_id": weights[model], "checkpoint_id": checkpoint["checkpoint_id"],
                             "step": checkpoint["step"], "metric": record.metric, "kind": record.kind,
                             "value": record.value, "lower_better": record.lower_better})
        means = compare(values, lower_better)
        markdown = markdown_report(means, checkpoint, split_label, len(samples), note,
                                   random_init["random_init_notice"])
        grid = grid_png([(lq[i], outputs["base"][i], outputs["tuned"][i], hr[i])
                         for i in range(min(section.grid_samples, len(samples)))])
        report = {"checkpoint_id": checkpoint["checkpoint_id"], "step": checkpoint["step"], "split": split_label,
                  "samples": len(samples), "means": json.dumps(means), "markdown": markdown,
                  "grid": image_cell(np.asarray(grid)), "notes": note}
        log.info("evaluate: checkpoint %s\n%s", checkpoint["checkpoint_id"], markdown)
        stats = {"checkpoint_id": checkpoint["checkpoint_id"], "step": checkpoint["step"],
                 "split": split_label, "samples": len(samples), "means": means, "markdown": markdown,
                 "weights": weights, "iqa": scorer.describe(), **random_init}
        return ShardOutput(pa.Table.from_pylist(rows, schema=EVAL_RESULTS), notes=[note] if note else [], stats=stats,
                           side_tables={"eval_report": pa.Table.from_pylist([report], schema=EVAL_REPORT)})

    def summarize(self, stats: list[dict]) -> dict:
        """The comparison: per-model means per metric, the markdown report."""
        return stats[0] if stats else {}
