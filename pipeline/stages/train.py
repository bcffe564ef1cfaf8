"""Stage `train`: (`preferences`, `sr_candidates`, `lq_pairs`) -> `checkpoints`
(schema: pipeline.schemas.CHECKPOINTS), plus `train_metrics` (pipeline.schemas.TRAIN_METRICS).

DSPO fine-tuning of a diffusion SR backbone (dspo_core.train.DSPOTrainer) on the
instance-level preference pairs. Design choices:

- One shard: training is one sequential run, not sharded over data (crash recovery is
  `resume`, from the last checkpoint in the store).
- The framework publishes one dataset per stage (`checkpoints`); the single shard publishes
  `train_metrics` itself before returning the checkpoint rows, and each row (and the manifest
  metadata) records that ref. pipeline/stage.py is untouched.
- Checkpoints live IN the store: the LoRA file's bytes inline (`lora_weights`), and the full
  trainer checkpoint folder (optimizer, scheduler, RNG) as a tar (`trainer_state`), so another
  machine loads (`load_checkpoint_into`) or resumes a run from the store alone.
- Images are joined from the preferences manifest's lineage (the exact lq_pairs and
  sr_candidates versions the pairs were ranked on); the given inputs must be those versions.
- `run_id` is the training identity (backbone, data, hyperparameters, not the run length):
  `resume` continues the latest checkpoint with the same run_id, step numbers continuing.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dspo_core.segment import rle
from dspo_core.sr import LORA_WEIGHT_NAME, DiffusionSRBackbone, build_backbone
from dspo_core.train import DSPOTrainer, PairExample
from pipeline.schemas import CHECKPOINTS, TRAIN_METRIC_KEYS, TRAIN_METRICS, stable_id
from pipeline.config import PipelineConfig, TrainStageConfig
from pipeline.fetch import fetch_weights
from pipeline.stage import Shard, ShardOutput, Stage, fingerprint_of
from pipeline.stages.sample import WEIGHT_KEYS
from storage import DatasetStore, decode_image

log = logging.getLogger("dspo.train")
# TrainConfig fields that say how long and how often, not what is learned: changing them
# keeps the run_id, so `resume` can extend a run (max_steps 500 -> 1000).
RUN_LENGTH_FIELDS = {"max_steps", "logging_steps", "eval_every", "eval_batch_size", "output_dir", "save_every"}
PREFERENCE_COLUMNS = ["pair_id", "sample_id", "winner_id", "loser_id", "weight", "mask",
                      "positive_text", "negative_text"]


def run_id_of(section: TrainStageConfig, inputs: dict[str, str]) -> str:
    material = {"backbone": section.backbone, "backbone_config": section.backbone_config,
                "train": section.train.model_dump(mode="json", exclude=RUN_LENGTH_FIELDS),
                "splits": section.splits, "eval_fraction": section.eval_fraction, "preferences": inputs["preferences"]}
    return stable_id("run", json.dumps(material, sort_keys=True))


def held_out(pair_id: str, fraction: float) -> bool:
    """Whether a pair is in the eval split: a stable hash of its id, uniform in [0, 1), < fraction."""
    return int(hashlib.sha256(f"eval:{pair_id}".encode()).hexdigest()[:15], 16) / 16 ** 15 < fraction


def build_diffusion_backbone(name: str, config: dict) -> DiffusionSRBackbone:
    backbone = build_backbone(name, {key: fetch_weights(value) if key in WEIGHT_KEYS else value
                                     for key, value in config.items()})
    if not isinstance(backbone, DiffusionSRBackbone):
        raise TypeError(f"train needs a diffusion backbone (tiny-sd, one-step-sd, sd-x4-upscaler), not {name!r}")
    return backbone


def check_lineage(store: DatasetStore, inputs: dict[str, str]) -> None:
    """The pairs name candidate and sample ids of the versions they were ranked on: refuse others."""
    lineage = {ref.split("@")[0]: ref for ref in store.manifest(inputs["preferences"])["inputs"]}
    for name in ("lq_pairs", "sr_candidates"):
        if lineage.get(name) != inputs[name]:
            raise ValueError(f"{inputs['preferences']} was built from {lineage.get(name)}, not {inputs[name]}: "
                             f"pass --input {lineage.get(name)} (or rerun the stages up to caption)")


def load_pairs(store: DatasetStore, inputs: dict[str, str], section: TrainStageConfig
               ) -> tuple[list[PairExample], list[PairExample]]:
    """(train, held-out) PairExamples of the preferences whose sample is in `section.splits`,
    streamed batch by batch; images are decoded once per id and shared between pairs."""
    samples = store.read_arrow(inputs["lq_pairs"], columns=["sample_id"], filter=pc.field("split").isin(section.splits))
    wanted = samples.column("sample_id").combine_chunks()
    lq: dict[str, np.ndarray] = {}
    images: dict[str, np.ndarray] = {}
    train, held = [], []
    for batch in store.iter_batches(inputs["preferences"], batch_size=64, columns=PREFERENCE_COLUMNS,
                                    filter=pc.field("sample_id").isin(wanted)):
        rows = batch.to_pylist()
        new_samples = sorted({row["sample_id"] for row in rows} - set(lq))
        for row in store.read_where_in(inputs["lq_pairs"], "sample_id", new_samples,
                                       columns=["sample_id", "lq"]).to_pylist():
            lq[row["sample_id"]] = np.asarray(decode_image(row["lq"]).convert("RGB"))
        new_images = sorted({row[key] for row in rows for key in ("winner_id", "loser_id")} - set(images))
        for row in store.read_where_in(inputs["sr_candidates"], "candidate_id", new_images,
                                       columns=["candidate_id", "image"]).to_pylist():
            images[row["candidate_id"]] = np.asarray(decode_image(row["image"]).convert("RGB"))
        for row in rows:
            pair = PairExample(lq=lq[row["sample_id"]], winner=images[row["winner_id"]], loser=images[row["loser_id"]],
                               mask=rle.decode(row["mask"]), weight=row["weight"], pair_id=row["pair_id"],
                               positive_text=row["positive_text"] or "", negative_text=row["negative_text"] or "")
            (held if held_out(row["pair_id"], section.eval_fraction) else train).append(pair)
    return train, held


def latest_checkpoint(store: DatasetStore, run_id: str) -> tuple[str, dict] | None:
    """(ref, row) of the highest-step checkpoint of `run_id` in any checkpoints version (newest wins ties)."""
    if "checkpoints" not in store.datasets():
        return None
    best = None
    for version in store.versions("checkpoints"):
        ref = f"checkpoints@v{version}"
        steps = store.read_arrow(ref, columns=["step"], filter=pc.field("run_id") == run_id).column("step").to_pylist()
        if steps and (best is None or max(steps) >= best[1]):
            best = (ref, max(steps))
    if best is None:
        return None
    rows = store.read_arrow(best[0], filter=(pc.field("run_id") == run_id) & (pc.field("step") == best[1]))
    return best[0], rows.to_pylist()[0]


def checkpoint_row(store: DatasetStore, ref_or_row: str | dict, step: int | None = None) -> dict:
    """A checkpoints row: given, or read from a ref (the given step, else its highest step)."""
    if isinstance(ref_or_row, dict):
        return ref_or_row
    table = store.read_arrow(ref_or_row)
    steps = table.column("step").to_pylist()
    if not steps:
        raise ValueError(f"{store.resolve(ref_or_row)} has no checkpoints")
    wanted = max(steps) if step is None else step
    if wanted not in steps:
        raise ValueError(f"{store.resolve(ref_or_row)} has no checkpoint at step {step} (steps: {sorted(steps)})")
    return table.slice(steps.index(wanted), 1).to_pylist()[0]


def load_checkpoint_into(backbone: DiffusionSRBackbone, store: DatasetStore, ref_or_row: str | dict,
                         step: int | None = None) -> dict:
    """Load a checkpoint's LoRA (from the store) into `backbone`; returns the checkpoints row."""
    row = checkpoint_row(store, ref_or_row, step)
    with tempfile.TemporaryDirectory(prefix="dspo-lora-") as directory:
        with open(os.path.join(directory, row["lora_file"]), "wb") as handle:
            handle.write(row["lora_weights"])
        backbone.load_lora(directory)
    return row


def tar_folder(directory: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name in sorted(os.listdir(directory)):
            archive.add(os.path.join(directory, name), arcname=name)
    return buffer.getvalue()


def untar(data: bytes, directory: str) -> str:
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        archive.extractall(directory, filter="data")  # our own archive; 'data' refuses links and absolute paths
    return directory


def metric_row(run_id: str, step: int, metrics: dict[str, float]) -> dict:
    split = "eval" if any(key.startswith("eval_") for key in metrics) else "train"
    values = {key.removeprefix("eval_"): value for key, value in metrics.items()}
    return {"run_id": run_id, "step": step, "split": split, **{key: values.get(key) for key in TRAIN_METRIC_KEYS}}


class TrainStage(Stage):
    name = "train"
    output = "checkpoints"
    inputs = ("preferences", "sr_candidates", "lq_pairs")

    def section(self, config: PipelineConfig) -> TrainStageConfig:
        return config.train

    def schema(self, section: TrainStageConfig) -> pa.Schema:
        return CHECKPOINTS

    def plan(self, store: DatasetStore, inputs: dict[str, str], section: TrainStageConfig) -> list[Shard]:
        check_lineage(store, inputs)  # fail before any work
        return [Shard("shard-00000", (run_id_of(section, inputs),))]

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
            metrics_ref = store.publish(
                "train_metrics", pa.Table.from_pylist(metrics, schema=TRAIN_METRICS), inputs=list(inputs.values()),
                fingerprint=hashlib.sha256(f"{fingerprint_of(self, section, inputs)}:train_metrics".encode()).hexdigest(),
                metadata={"stage": self.name, "run_id": run_id, "resumed_from": resumed_from}, schema=TRAIN_METRICS)
            rows = self._checkpoint_rows(output_dir, run_id, section, backbone, inputs, metrics_ref, resumed_from,
                                         (len(train_pairs), len(eval_pairs)))
        last = {split: next((row for row in reversed(metrics) if row["split"] == split), None)
                for split in ("train", "eval")}
        stats = {"run_id": run_id, "train_metrics": metrics_ref, "resumed_from": resumed_from,
                 "train_pairs": len(train_pairs), "eval_pairs": len(eval_pairs),
                 "steps": [row["step"] for row in rows], "final_metrics": last}
        return ShardOutput(pa.Table.from_pylist(rows, schema=CHECKPOINTS), notes=notes, stats=stats)

    @staticmethod
    def _checkpoint_rows(output_dir: str, run_id: str, section: TrainStageConfig, backbone: DiffusionSRBackbone,
                         inputs: dict[str, str], metrics_ref: str, resumed_from: str | None,
                         counts: tuple[int, int]) -> list[dict]:
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
                "train_metrics": metrics_ref, "resumed_from": resumed_from, "inputs": list(inputs.values()),
            })
        return rows

    def summarize(self, stats: list[dict]) -> dict:
        """The run: run_id, its train_metrics ref, resume origin, pair counts, steps saved, last metrics."""
        return stats[0] if stats else {}
