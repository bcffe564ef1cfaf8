"""Stage `evaluate`: (`lq_pairs`, `checkpoints`) -> `eval_results` (schema: pipeline.schemas.EVAL_RESULTS),
and the side output `eval_report`, one row (pipeline.schemas.EVAL_REPORT).

Methods side by side (`evaluate.compare`): the base backbone (rebuilt from the config stored in
the checkpoint rows) and each checkpoint's LoRA loaded from the store into that same backbone,
on the same held-out samples under the same settings and per-sample seeds. Every SR output is
scored on the whole image against the HR image with the protocol's pyiqa metrics
(`evaluate.protocol`, dspo_core.iqa.protocol); the report is the paper's table: one row per
method, one column per metric with its direction, mean and bootstrap CI over images, paired
win-rates vs base (pipeline.evaluation). Design choices:

- Samples: the configured lq_pairs splits (default test); when none has rows, `val`, then
  every row; the fallback is named in the log, the manifest notes and the report.
- Metrics are built before any image is sampled: a missing weight file is an error naming it.
- A backbone built from config with random weights (tiny-sd without a `path`) gets a banner
  at the top of the report and `random_init_backbone: true` with the sentence in the manifest
  (pipeline.reading_guide): its numbers show the machinery, not image quality.
- Checkpoints named in `compare` beside the stage's input are fixed versions (checkpoints@vN);
  the manifest's `methods` records each method's ref, checkpoint id, step and LoRA sha256.
- One shard (the models loaded once; eval sets are ~100 images). The backbone comes from the
  per-process model cache (`Stage.model`: one borrower at a time), so base is sampled with the
  adapter disabled and each checkpoint's LoRA replaces the one before; metrics come from the
  thread-safe metric cache. Nothing else outlives a run.
"""
from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import pyarrow as pa

from dspo_core.iqa.protocol import ProtocolMetric, protocol_metrics
from dspo_core.iqa.whole_image import ProtocolScorer
from dspo_core.sr import DiffusionSRBackbone
from pipeline.checkpoints import build_diffusion_backbone, load_checkpoint_into
from pipeline.config import EvaluateConfig, PipelineConfig
from pipeline.datasets import rgb_array
from pipeline.evaluation.methods import Method, resolve_methods
from pipeline.evaluation.report import (
    ReportContext,
    csv_report,
    grid_png,
    markdown_report,
)
from pipeline.evaluation.stats import method_table
from pipeline.reading_guide import notice_markdown, random_init_metadata
from pipeline.schemas import EVAL_REPORT, EVAL_RESULTS
from pipeline.stage import Shard, ShardOutput, Stage
from storage import DatasetStore, image_cell

log = logging.getLogger("dspo.evaluate")


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


def super_resolve(backbone: DiffusionSRBackbone, store: DatasetStore, methods: list[Method], lq: list[np.ndarray],
                  settings: list) -> tuple[dict[str, list[np.ndarray]], dict[str, str]]:
    """({method: SR outputs}, {method: weights_id}) on one backbone: base with any adapter disabled
    (a cached backbone may hold the LoRA of an earlier run), each checkpoint with its LoRA loaded."""
    outputs, weights = {}, {}
    for method in methods:
        if method.row is None:
            with backbone.reference():
                outputs[method.name] = backbone.sample(lq, settings)
            weights[method.name] = backbone.base_weights_id
        else:
            load_checkpoint_into(backbone, store, method.row)
            outputs[method.name], weights[method.name] = backbone.sample(lq, settings), backbone.weights_id
    return outputs, weights


def score_methods(scorer: ProtocolScorer, samples: list[dict], outputs: dict[str, list[np.ndarray]],
                  hr: list[np.ndarray]) -> tuple[dict[str, dict[str, list[float]]], dict[str, dict[str, float]]]:
    """({method: {metric: per-sample values, in sample order}}, {method: {set-level metric: value}})."""
    image_values, set_values = {}, {}
    for method, srs in outputs.items():
        per_metric: dict[str, list[float]] = {m.key: [] for m in scorer.metrics if m.level == "image"}
        for sample, sr, reference in zip(samples, srs, hr):
            if sr.shape != reference.shape:
                raise ValueError(f"evaluate: {method} output for sample {sample['sample_id']} is {sr.shape[1]}x"
                                 f"{sr.shape[0]}, its HR image {reference.shape[1]}x{reference.shape[0]}: the "
                                 "backbone's scale does not match the lq_pairs")
            for key, value in scorer.score_image(sr, reference).items():
                per_metric[key].append(value)
        image_values[method], set_values[method] = per_metric, scorer.score_set(srs, hr)
    return image_values, set_values


def result_rows(samples: list[dict], methods: list[Method], metrics: tuple[ProtocolMetric, ...], protocol: str,
                image_values: dict, set_values: dict, weights: dict) -> list[dict]:
    """eval_results rows: per (sample, method, image-level metric), then per (method, set-level metric)."""
    def row(method: Method, metric: ProtocolMetric, value: float, sample: dict | None) -> dict:
        return {"sample_id": sample and sample["sample_id"], "split": sample and sample["split"],
                "method": method.name, "weights_id": weights[method.name], "checkpoint_ref": method.checkpoint_ref,
                "checkpoint_id": method.row and method.row["checkpoint_id"], "step": method.row and method.row["step"],
                "protocol": protocol, "metric": metric.key, "pyiqa_metric": metric.pyiqa_name,
                "options": metric.options_json, "kind": metric.kind, "level": metric.level, "value": value,
                "lower_better": metric.lower_better}

    rows = [row(method, metric, image_values[method.name][metric.key][index], sample)
            for index, sample in enumerate(samples) for method in methods for metric in metrics
            if metric.level == "image"]
    rows += [row(method, metric, set_values[method.name][metric.key], None)
             for method in methods for metric in metrics if metric.level == "set"]
    return rows


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
        metrics = protocol_metrics(section.protocol, section.metrics)
        scorer = ProtocolScorer(metrics, section.device)  # a missing weight fails here, before any sampling
        methods = resolve_methods(store, section.compare, inputs["checkpoints"])
        samples = store.read_where_in(inputs["lq_pairs"], "sample_id", ids,
                                      columns=["sample_id", "split", "lq", "hr"]).to_pylist()
        order = {sample_id: index for index, sample_id in enumerate(ids)}
        samples.sort(key=lambda row: order[row["sample_id"]])
        lq = [rgb_array(row["lq"]) for row in samples]
        hr = [rgb_array(row["hr"]) for row in samples]
        settings = [section.settings.model_copy(update={"seed": sample_seed(section.settings.seed, row["sample_id"])})
                    for row in samples]
        config = next(method.config for method in methods if method.config is not None)
        key = json.dumps({"backbone": config["backbone"], "config": config["backbone_config"]}, sort_keys=True)
        with self.model("backbone", key, lambda: build_diffusion_backbone(config["backbone"],
                                                                           config["backbone_config"])) as backbone:
            outputs, weights = super_resolve(backbone, store, methods, lq, settings)
            random_init = random_init_metadata(backbone.base_weights_id)

        image_values, set_values = score_methods(scorer, samples, outputs, hr)
        base = section.base_method
        table = method_table(image_values, set_values, [(m.key, m.lower_better) for m in metrics], base,
                             len(samples), section.bootstrap_resamples, section.bootstrap_seed, section.confidence)
        records = [method.record() | {"weights_id": weights[method.name]} for method in methods]
        context = ReportContext(section.protocol, split_label, len(samples), note,
                                notice_markdown(random_init["random_init_notice"]) or "",
                                section.bootstrap_resamples, section.bootstrap_seed, section.confidence,
                                {method.name: method.describe() for method in methods})
        markdown = markdown_report(table, metrics, base, context)
        csv_text = csv_report(table, metrics, {record["name"]: record for record in records})
        shown = range(min(section.grid_samples, len(samples)))
        grid = grid_png([[lq[i], *(outputs[m.name][i] for m in methods), hr[i]] for i in shown],
                        ["LQ", *(m.name for m in methods), "HR"])
        report = {"protocol": section.protocol, "methods": json.dumps(records), "split": split_label,
                  "samples": len(samples), "table": json.dumps(table), "markdown": markdown, "csv": csv_text,
                  "grid": image_cell(np.asarray(grid)), "notes": note}
        log.info("evaluate: %s\n%s", ", ".join(m.name for m in methods), markdown)
        stats = {"protocol": section.protocol, "methods": records, "split": split_label, "samples": len(samples),
                 "table": table, "markdown": markdown, "iqa": scorer.describe(), **random_init}
        rows = result_rows(samples, methods, metrics, section.protocol, image_values, set_values, weights)
        return ShardOutput(pa.Table.from_pylist(rows, schema=EVAL_RESULTS), notes=[note] if note else [], stats=stats,
                           side_tables={"eval_report": pa.Table.from_pylist([report], schema=EVAL_REPORT)})

    def summarize(self, stats: list[dict]) -> dict:
        """The comparison: methods (what was evaluated), the table, the markdown report."""
        return stats[0] if stats else {}
