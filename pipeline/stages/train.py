"""Stage `train`: (`preferences`, `sr_candidates`, `lq_pairs`) -> `checkpoints`
(schema: pipeline.schemas.CHECKPOINTS), plus `train_metrics` (pipeline.schemas.TRAIN_METRICS).

DSPO fine-tuning of a diffusion SR backbone (dspo_core.train.DSPOTrainer) on the
instance-level preference pairs. Design choices:

- One shard: training is one sequential run, not sharded over data (crash recovery is
  `resume`, from the last checkpoint in the store).
- Two outputs: `checkpoints` and the side output `train_metrics` (one row per logged step),
  which the framework publishes first; each checkpoint row records its ref.
- Checkpoints live IN the store: the LoRA file's bytes inline (`lora_weights`), and the full
  trainer checkpoint folder (optimizer, scheduler, RNG) as a tar (`trainer_state`), so another
  machine loads (`pipeline.checkpoints.load_checkpoint_into`) or resumes a run from the store alone.
- Images are joined from the preferences manifest's lineage (the exact lq_pairs and
  sr_candidates versions the pairs were ranked on); the given inputs must be those versions.
- `run_id` is the training identity (backbone, data, hyperparameters, not the run length):
  `resume` continues the latest checkpoint with the same run_id, step numbers continuing.
- The held-out pairs are image-disjoint from the training pairs: a sample (one LQ input, its
  candidates, all its instance pairs) is held out as a whole, when a stable hash of its
  `sample_id` falls under `eval_fraction` (`held_out`). Holding out single pairs would put
  other instances of the same image, the same candidates, in training: the eval metrics would
  then measure memorised images, not generalisation.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dspo_core.segment import rle
from dspo_core.sr import LORA_WEIGHT_NAME, DiffusionSRBackbone
from dspo_core.train import DSPOTrainer, PairExample
from pipeline.checkpoints import (
    build_diffusion_backbone,
    latest_checkpoint,
    tar_folder,
    untar,
)
from pipeline.config import PipelineConfig, TrainStageConfig
from pipeline.datasets import lineage_ref, rgb_array
from pipeline.reading_guide import random_init_metadata
from pipeline.schemas import CHECKPOINTS, TRAIN_METRIC_KEYS, TRAIN_METRICS, stable_id
from pipeline.stage import Shard, ShardOutput, Stage
from storage import DatasetStore
from storage.manifest import content_fingerprint

log = logging.getLogger("dspo.train")
# TrainConfig fields that say how long and how often, not what is learned: changing them
# keeps the run_id, so `resume` can extend a run (max_steps 500 -> 1000).
RUN_LENGTH_FIELDS = {"max_steps", "logging_steps", "eval_every", "eval_batch_size", "output_dir", "save_every"}
PREFERENCE_COLUMNS = ["pair_id", "sample_id", "winner_id", "loser_id", "weight", "mask",
                      "positive_text", "negative_text"]
#: How held-out pairs are chosen (part of the run_id: a run never resumes across a change of it).
HOLDOUT_RULE = "by-sample"


def run_id_of(section: TrainStageConfig, preferences_content: str) -> str:
    """The training identity: backbone, hyperparameters and the preferences' content fingerprint."""
    material = {"backbone": section.backbone, "backbone_config": section.backbone_config,
                "train": section.train.model_dump(mode="json", exclude=RUN_LENGTH_FIELDS),
                "splits": section.splits, "eval_fraction": section.eval_fraction, "holdout": HOLDOUT_RULE,
                "preferences": preferences_content}
    return stable_id("run", json.dumps(material, sort_keys=True))


def held_out(sample_id: str, fraction: float) -> bool:
    """Whether a sample's pairs (all of them) are held out: a stable hash of its `sample_id`,
    uniform in [0, 1), < fraction. About `fraction` of the samples, so of the pairs on average."""
    return int(hashlib.sha256(f"eval:{sample_id}".encode()).hexdigest()[:15], 16) / 16 ** 15 < fraction


def check_lineage(store: DatasetStore, inputs: dict[str, str]) -> None:
    """The pairs name candidate and sample ids of the versions they were ranked on: refuse others."""
    for name in ("lq_pairs", "sr_candidates"):
        made_from = lineage_ref(store, inputs["preferences"], name)
        if made_from != inputs[name]:
            raise ValueError(f"{inputs['preferences']} was built from {made_from}, not {inputs[name]}: "
                             f"pass --input {made_from} (or rerun the stages up to caption)")


def load_pairs(store: DatasetStore, inputs: dict[str, str], section: TrainStageConfig
               ) -> tuple[list[PairExample], list[PairExample]]:
    """(train, held-out) PairExamples of the preferences whose sample is in `section.splits`,
    streamed batch by batch; images are decoded once per id and shared between pairs. Held out:
    every pair of the samples `held_out` picks, so no sample has pairs on both sides."""
    samples = store.read_arrow(inputs["lq_pairs"], columns=["sample_id"], filter=pc.field("split").isin(section.splits),
                               verify=True)
    wanted = samples.column("sample_id").combine_chunks()
    lq: dict[str, np.ndarray] = {}
    images: dict[str, np.ndarray] = {}
    train, held = [], []
    for batch in store.iter_batches(inputs["preferences"], batch_size=64, columns=PREFERENCE_COLUMNS,
                                    filter=pc.field("sample_id").isin(wanted), verify=True):
        rows = batch.to_pylist()
        new_samples = sorted({row["sample_id"] for row in rows} - set(lq))
        for row in store.read_where_in(inputs["lq_pairs"], "sample_id", new_samples,
                                       columns=["sample_id", "lq"], verify=True).to_pylist():
            lq[row["sample_id"]] = rgb_array(row["lq"])
        new_images = sorted({row[key] for row in rows for key in ("winner_id", "loser_id")} - set(images))
        for row in store.read_where_in(inputs["sr_candidates"], "candidate_id", new_images,
                                       columns=["candidate_id", "image"], verify=True).to_pylist():
            images[row["candidate_id"]] = rgb_array(row["image"])
        for row in rows:
            pair = PairExample(lq=lq[row["sample_id"]], winner=images[row["winner_id"]], loser=images[row["loser_id"]],
                               mask=rle.decode(row["mask"]), weight=row["weight"], pair_id=row["pair_id"],
                               positive_text=row["positive_text"] or "", negative_text=row["negative_text"] or "")
            (held if held_out(row["sample_id"], section.eval_fraction) else train).append(pair)
    return train, held


def metric_row(run_id: str, step: int, metrics: dict[str, float]) -> dict:
    split = "eval" if any(key.startswith("eval_") for key in metrics) else "train"
    values = {key.removeprefix("eval_"): value for key, value in metrics.items()}
    return {"run_id": run_id, "step": step, "split": split, **{key: values.get(key) for key in TRAIN_METRIC_KEYS}}


class TrainStage(Stage):
    # 2: pairs are batched by image size (every pair trains every epoch), so the data order differs.
    # 3: held-out pairs are whole samples (by sample_id), not single pairs.
    version = 3

    def section(self, config: PipelineConfig) -> TrainStageConfig:
        return config.train

    def schemas(self, section: TrainStageConfig) -> dict[str, pa.Schema]:
        return {"checkpoints": CHECKPOINTS, "train_metrics": TRAIN_METRICS}

    def plan(self, store: DatasetStore, inputs: dict[str, str], section: TrainStageConfig) -> list[Shard]:
        check_lineage(store, inputs)  # fail before any work
        return [Shard("shard-00000", (run_id_of(section, content_fingerprint(store.manifest(inputs["preferences"]))),))]

    def run_shard(self, store: DatasetStore, inputs: dict[str, str], section: TrainStageConfig,
                  shard: Shard) -> ShardOutput:
        run_id = shard.items[0]
        train_pairs, eval_pairs = load_pairs(store, inputs, section)
        notes = [] if eval_pairs else [f"no held-out pairs (eval_fraction {section.eval_fraction}): no eval metrics"]
        if len(train_pairs) < section.train.batch_size:
            raise ValueError(f"{len(train_pairs)} training pairs in splits {section.splits} of {inputs['preferences']}:"
                             f" fewer than one batch of {section.train.batch_size}")
        resumed = latest_checkpoint(store, run_id) if section.resume else None
        if section.resume and resumed is None:
            notes.append(f"resume: no earlier checkpoint of run {run_id}; trained from step 0")
        backbone = build_diffusion_backbone(section.backbone, section.backbone_config)
        metrics: list[dict] = []

        def on_log(step: int, values: dict[str, float]) -> None:
            metrics.append(metric_row(run_id, step, values))
            log.info("train %s step %d: %s", run_id, step, ", ".join(f"{k}={v:.4g}" for k, v in values.items()))

        with tempfile.TemporaryDirectory(prefix="dspo-train-") as scratch:
            output_dir = os.path.join(scratch, "out")
            config = section.train.model_copy(update={"output_dir": output_dir, "save_every": section.save_every})
            trainer = DSPOTrainer(backbone, config, train_pairs, eval_pairs or None, on_log=on_log)
            resumed_from = None
            if resumed is not None:
                resumed_from = f"{resumed[0]}:{resumed[1]['step']}"
                trainer.resume(untar(resumed[1]["trainer_state"], os.path.join(scratch, "resume")))
                notes.append(f"resumed run {run_id} from {resumed_from}")
            if trainer.step >= config.max_steps:
                raise ValueError(f"run {run_id} is already at step {trainer.step} >= max_steps {config.max_steps}: "
                                 "raise train.train.max_steps to continue it")
            trainer.train()
            if eval_pairs and not any(row["split"] == "eval" and row["step"] == trainer.step for row in metrics):
                trainer.log(trainer.step, trainer.evaluate())  # always an eval row at the final step
            rows = self._checkpoint_rows(output_dir, run_id, section, backbone, inputs, resumed_from,
                                         (len(train_pairs), len(eval_pairs)))
        last = {split: next((row for row in reversed(metrics) if row["split"] == split), None)
                for split in ("train", "eval")}
        stats = {"run_id": run_id, "resumed_from": resumed_from,
                 "train_pairs": len(train_pairs), "eval_pairs": len(eval_pairs),
                 "steps": [row["step"] for row in rows], "final_metrics": last,
                 "size_buckets": trainer.size_buckets(),  # pairs per image size (one size per step)
                 **random_init_metadata(backbone.base_weights_id)}
        return ShardOutput(pa.Table.from_pylist(rows, schema=CHECKPOINTS), notes=notes, stats=stats,
                           side_tables={"train_metrics": pa.Table.from_pylist(metrics, schema=TRAIN_METRICS)})

    @staticmethod
    def _checkpoint_rows(output_dir: str, run_id: str, section: TrainStageConfig, backbone: DiffusionSRBackbone,
                         inputs: dict[str, str], resumed_from: str | None, counts: tuple[int, int]) -> list[dict]:
        """The checkpoints rows, one per saved step; `train_metrics` is filled in `finalize`."""
        folders = sorted((int(name.split("-")[1]), name) for name in os.listdir(output_dir)
                         if name.startswith("checkpoint-"))
        rows = []
        for step, name in folders:
            folder = os.path.join(output_dir, name)
            with open(os.path.join(folder, LORA_WEIGHT_NAME), "rb") as handle:
                lora = handle.read()
            rows.append({
                "checkpoint_id": stable_id("checkpoint", run_id, step), "run_id": run_id, "step": step,
                "final": step == folders[-1][0], "backbone": section.backbone,
                "base_weights_id": backbone.base_weights_id, "lora_file": LORA_WEIGHT_NAME, "lora_weights": lora,
                "lora_sha256": hashlib.sha256(lora).hexdigest(), "trainer_state": tar_folder(folder),
                "config": section.model_dump_json(), "train_pairs": counts[0], "eval_pairs": counts[1],
                "train_metrics": None, "resumed_from": resumed_from, "inputs": list(inputs.values()),
            })
        return rows

    def finalize(self, tables: Iterator[pa.Table], side_outputs: dict[str, str]) -> Iterator[pa.Table]:
        """Each checkpoint row names the train_metrics version of its run."""
        for table in tables:
            column = table.schema.get_field_index("train_metrics")
            yield table.set_column(column, "train_metrics", pa.array([side_outputs["train_metrics"]] * table.num_rows,
                                                                     pa.string()))

    def summarize(self, stats: list[dict]) -> dict:
        """The run: run_id, resume origin, pair counts, steps saved, last metrics, and whether the
        backbone is random-init (`random_init_backbone`, `random_init_notice`: pipeline.reading_guide)."""
        return stats[0] if stats else {}
