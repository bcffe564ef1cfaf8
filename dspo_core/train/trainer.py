"""``DSPOTrainer``: DSPO fine-tuning of a ``DiffusionSRBackbone`` with ``accelerate``.

    trainer = DSPOTrainer(backbone, TrainConfig(max_steps=500), train_pairs, eval_pairs,
                          on_log=lambda step, metrics: publish(step, metrics))
    trainer.train()                       # checkpoints under config.output_dir
    trainer.save_checkpoint("ckpt")       # LoRA (diffusers format) + optimizer/scheduler/RNG/step
    trainer.resume("ckpt"); trainer.train()

One process runs in-process; ``accelerate launch --num_processes N script.py`` runs one
trainer per process. Data parallelism is explicit: every process takes its own slice of
each global micro-batch (``ShardedPairOrder``: pairs of any sizes, one size per optimizer
step, none dropped or resized), and after the accumulation window the gradients of the
trainable parameters are averaged with ``accelerator.reduce`` before clipping and the
optimizer step. (The UNet is not wrapped in DDP: the backbone calls ``backbone.unet``
itself, for the policy and — adapters disabled — the reference.) The trainable parameters
are broadcast from process 0 at start, so every process holds the same weights at every
step. Metrics are ``accelerator.gather``-ed per-pair terms reduced over all pairs
(``dspo_core.train.metrics``); ``on_log`` runs on the main process only.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast, set_seed
from diffusers.optimization import get_scheduler

from ..sr.diffusion import DiffusionSRBackbone
from ..sr.one_step import OneStepSDBackbone
from . import checkpoint as ckpt
from .config import DATA_ORDER_FIELDS, TrainConfig
from .data import (
    ENCODE_STREAM,
    EVAL_NOISE_STREAM,
    TRAIN_NOISE_STREAM,
    MicroBatches,
    PairBatch,
    PairCollator,
    PairDataset,
    PairExample,
    ShardedPairOrder,
    eval_shard,
    pair_noise,
    pair_seed,
)
from .latents import LatentCache, encode_pairs
from .metrics import summarize
from .step import PAIR_TERMS, StepOutput, dspo_step, encode_conditioning

log = logging.getLogger(__name__)
LogCallback = Callable[[int, dict[str, float]], None]
_BUCKET_NUMEL = 2**25  # gradient all-reduce bucket: 32M elements (128 MB fp32)


class DSPOTrainer:
    """Trains `backbone` (LoRA, or the whole UNet with ``full_finetune``) on preference pairs.

    Args:
        backbone: a ``DiffusionSRBackbone`` (e.g. ``TinySDBackbone``, ``OneStepSDBackbone``);
            moved to the accelerator's device. Its VAE and text encoder stay frozen.
        config: a ``TrainConfig``.
        train_pairs: ``PairExample`` s (or mappings of their fields); at least one global micro-batch.
        eval_pairs: held-out pairs evaluated every ``config.eval_every`` steps.
        on_log: ``on_log(step, metrics)`` on the main process; keys in ``dspo_core.train.metrics``.
        accelerator: an existing ``Accelerator`` (its mixed precision must match the config).

    Attributes: ``step`` (optimizer steps done), ``micro_step`` (micro-batches done per
    process), ``history`` (every logged ``(step, metrics)``, on every process),
    ``last_pairs`` (this process's per-pair terms and dataset ``index`` of the last step).
    """

    def __init__(
        self,
        backbone: DiffusionSRBackbone,
        config: TrainConfig,
        train_pairs: Iterable[PairExample | Mapping],
        eval_pairs: Iterable[PairExample | Mapping] | None = None,
        on_log: LogCallback | None = None,
        accelerator: Accelerator | None = None,
    ):
        self.config, self.backbone, self.on_log = config, backbone, on_log
        self.accelerator = accelerator or Accelerator(mixed_precision=config.mixed_precision)
        if self.accelerator.mixed_precision != config.mixed_precision:
            raise ValueError(
                f"accelerator mixed_precision {self.accelerator.mixed_precision!r} != config {config.mixed_precision!r}"
            )
        self._check_backbone()
        set_seed(config.seed)  # global RNGs: the LoRA initialisation, anything else drawing from them
        self._place_backbone()
        self._ref_unet: torch.nn.Module | None = None
        self.named_params = self._setup_trainable()
        self.params = list(self.named_params.values())

        optimizer = torch.optim.AdamW(
            self.params,
            lr=config.learning_rate,
            betas=config.adam_betas,
            eps=config.adam_epsilon,
            weight_decay=config.weight_decay,
        )
        # The scheduler is stepped by hand once per optimizer step (a prepared one steps once per process).
        self.lr_scheduler = get_scheduler(
            config.lr_scheduler,
            optimizer=optimizer,
            num_warmup_steps=config.lr_warmup_steps,
            num_training_steps=config.max_steps,
        )
        self.optimizer = self.accelerator.prepare(optimizer)

        factor = backbone.vae_scale_factor
        self.train_dataset = PairDataset(train_pairs, size_multiple=factor)
        self.eval_dataset = PairDataset(eval_pairs, size_multiple=factor) if eval_pairs is not None else None
        self.order = ShardedPairOrder(
            [pair.winner.shape[:2] for pair in self.train_dataset.pairs], config.batch_size,
            self.accelerator.num_processes, self.accelerator.process_index, config.seed, config.shuffle,
            config.gradient_accumulation_steps,
        )
        if self.accelerator.is_main_process:
            log.info("training pairs in %d size bucket(s), one size per optimizer step: %s",
                     len(self.order.buckets), self.order.describe())
        self.collator = PairCollator(factor, config.instance_masks, with_images=not config.cache_latents)
        self.train_cache = self.eval_cache = None
        if config.cache_latents:
            self.train_cache = LatentCache(backbone, self.train_dataset, config.encode_batch_size, config.seed)
            if self.eval_dataset is not None:
                self.eval_cache = LatentCache(backbone, self.eval_dataset, config.encode_batch_size, config.seed)

        self.step = 0
        self.micro_step = 0
        self.history: list[tuple[int, dict[str, float]]] = []
        self.last_pairs: dict[str, torch.Tensor] = {}
        self._batches: Iterator[PairBatch] | None = None

    # ------------------------------------------------------------------ setup

    def size_buckets(self) -> dict[str, list[dict[str, int]]]:
        """Pairs per image size: ``train`` as scheduled (``SizeBucket`` fields), ``eval`` (height, width, pairs)."""
        train = [dataclasses.asdict(bucket) for bucket in self.order.buckets]
        return {"train": train, "eval": self.eval_dataset.size_counts() if self.eval_dataset is not None else []}

    def _check_backbone(self) -> None:
        config, backbone = self.config, self.backbone
        if not isinstance(backbone, DiffusionSRBackbone):
            raise TypeError(f"DSPO trains a DiffusionSRBackbone, got {type(backbone).__name__}")
        if config.one_step_objective == "regression" and not isinstance(backbone, OneStepSDBackbone):
            raise ValueError(f"one_step_objective 'regression' needs a one-step backbone, got {backbone.name!r}")
        high = config.max_timestep if config.max_timestep is not None else backbone.num_train_timesteps - 1
        if high >= backbone.num_train_timesteps:
            raise ValueError(f"max_timestep {high} is outside the schedule [0, {backbone.num_train_timesteps})")
        self.timestep_range = (config.min_timestep, high)
        if config.full_finetune and backbone.dtype != torch.float32:
            raise ValueError("full_finetune needs float32 weights (use mixed_precision for half-precision compute)")

    def _place_backbone(self) -> None:
        device = self.accelerator.device
        backbone = self.backbone
        for module in (backbone.unet, backbone.vae, backbone.text_encoder):
            module.to(device)
        backbone.device = device

    def _setup_trainable(self) -> dict[str, torch.nn.Parameter]:
        unet = self.backbone.unet
        if self.config.full_finetune:
            self._ref_unet = copy.deepcopy(unet).requires_grad_(False).eval()  # the frozen reference
            unet.requires_grad_(True)
        else:
            self.backbone.trainable_parameters()  # adds the LoRA adapter (zero up-projection) on first call
        named = {name: param for name, param in unet.named_parameters() if param.requires_grad}
        if self.accelerator.num_processes > 1:  # identical start on every process, as DDP does
            with torch.no_grad():
                for param in named.values():
                    broadcast(param.data, from_process=0)
        return named

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """Inside this block ``backbone.predict`` is the reference: adapters disabled, or the frozen UNet copy."""
        if self._ref_unet is None:
            with self.backbone.reference():
                yield
            return
        policy, self.backbone.unet = self.backbone.unet, self._ref_unet
        try:
            yield
        finally:
            self.backbone.unet = policy

    # ------------------------------------------------------------------ one micro-batch

    def forward(self, batch: PairBatch, stream: int, epoch: int) -> StepOutput:
        """``dspo_step`` on one collated batch: latents (cache or VAE), text, per-pair noise and t."""
        config, indices = self.config, batch.indices.tolist()
        cache = self.eval_cache if stream == EVAL_NOISE_STREAM else self.train_cache
        if cache is not None:
            latents = cache.get(indices)
        else:
            generator = torch.Generator().manual_seed(pair_seed(config.seed, ENCODE_STREAM, epoch, indices[0]))
            latents = encode_pairs(self.backbone, batch.lq, batch.winner, batch.loser, generator=generator)
        text = encode_conditioning(self.backbone, batch.positive_text, batch.negative_text, config)
        seeds = [pair_seed(config.seed, stream, epoch, index) for index in indices]
        noise, timesteps = pair_noise(seeds, latents.winner.shape[1:], self.timestep_range)  # (B, C, h, w), (B,)
        return dspo_step(
            self.backbone, latents, text, batch.masks, batch.weights, noise, timesteps, config, self.reference
        )

    def _train_batches(self) -> Iterator[PairBatch]:
        if self._batches is None:
            loader = torch.utils.data.DataLoader(
                self.train_dataset,
                batch_sampler=MicroBatches(self.order, self.micro_step),
                collate_fn=self.collator,
                num_workers=self.config.num_workers,
            )
            self._batches = iter(loader)
        return self._batches

    def _gather(self, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {key: self.accelerator.gather(value.contiguous()).cpu() for key, value in terms.items()}

    # ------------------------------------------------------------------ one optimizer step

    def compute_gradients(self) -> dict[str, torch.Tensor]:
        """Forward and backward of one accumulation window; leaves the cross-process mean gradient in
        ``.grad`` (unclipped; still loss-scaled under fp16). Returns this process's per-pair terms."""
        accumulation = self.config.gradient_accumulation_steps
        self.optimizer.zero_grad(set_to_none=True)
        batches = self._train_batches()
        terms: list[dict[str, torch.Tensor]] = []
        for _ in range(accumulation):
            batch = next(batches)
            with self.accelerator.autocast():
                output = self.forward(batch, TRAIN_NOISE_STREAM, self.order.epoch_of(self.micro_step))
            self.accelerator.backward(output.loss / accumulation)  # mean over the window
            terms.append({**output.pair_terms, "index": batch.indices.to(output.loss.device)})
            self.micro_step += 1
        self._all_reduce_gradients()
        return {key: torch.cat([item[key] for item in terms]) for key in (*PAIR_TERMS, "index")}

    def _all_reduce_gradients(self) -> None:
        if self.accelerator.num_processes == 1:
            return
        for param in self.params:
            if param.grad is None:  # not reached by this window's graph: contributes zero
                param.grad = torch.zeros_like(param)
        bucket: list[torch.nn.Parameter] = []
        for index, param in enumerate(self.params):
            bucket.append(param)
            if index == len(self.params) - 1 or sum(p.numel() for p in bucket) >= _BUCKET_NUMEL:
                flat = torch.cat([p.grad.flatten() for p in bucket])
                flat = self.accelerator.reduce(flat, reduction="mean")
                for p, chunk in zip(bucket, flat.split([p.numel() for p in bucket])):
                    p.grad.copy_(chunk.view_as(p.grad))
                bucket = []

    def train_step(self) -> dict[str, float]:
        """One optimizer step; returns the step's metrics (gathered over all processes)."""
        start = time.perf_counter()
        local = self.compute_gradients()
        max_norm = self.config.max_grad_norm if self.config.max_grad_norm is not None else math.inf
        grad_norm = self.accelerator.clip_grad_norm_(self.params, max_norm)  # unscales fp16 grads first
        lr = self.lr_scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.lr_scheduler.step()
        self.step += 1  # .grad keeps this step's (clipped) gradients until the next compute_gradients
        self.last_pairs = {key: value.detach().cpu() for key, value in local.items()}
        gathered = self._gather({key: local[key] for key in PAIR_TERMS})
        metrics = summarize(gathered, self.config.loss_type)
        metrics.update(
            grad_norm=float(grad_norm),
            lr=float(lr),
            epoch=self.micro_step / self.order.batches_per_epoch,
            pairs_per_s=len(gathered["z"]) / (time.perf_counter() - start),
        )
        return metrics

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The metrics (``eval_`` keys) over all held-out pairs, sharded across processes.

        Each process takes every P-th pair, padded to equal length (padding is dropped after
        the gather), in batches of one image size (``eval_shard``). Noise and t per pair are
        fixed (seeded by the pair's index), so successive evaluations differ only by the weights.
        """
        if self.eval_dataset is None:
            raise ValueError("no eval_pairs were given")
        groups, valid = eval_shard([pair.winner.shape for pair in self.eval_dataset.pairs],
                                   self.accelerator.num_processes, self.accelerator.process_index,
                                   self.config.eval_batch_size or self.config.batch_size)
        collator = PairCollator(
            self.backbone.vae_scale_factor, self.config.instance_masks, with_images=self.eval_cache is None
        )
        terms: list[dict[str, torch.Tensor]] = []
        for group in groups:
            batch = collator([self.eval_dataset[index] for index in group])
            with self.accelerator.autocast():
                terms.append(self.forward(batch, EVAL_NOISE_STREAM, epoch=0).pair_terms)
        local = {key: torch.cat([item[key] for item in terms]) for key in PAIR_TERMS}
        local["valid"] = torch.tensor(valid, device=local["z"].device)
        gathered = self._gather(local)
        keep = gathered.pop("valid") > 0
        metrics = summarize({key: value[keep] for key, value in gathered.items()}, self.config.loss_type)
        return {f"eval_{key}": value for key, value in metrics.items()}

    # ------------------------------------------------------------------ the loop

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.history.append((step, metrics))
        if self.on_log is not None and self.accelerator.is_main_process:
            self.on_log(step, metrics)

    def train(self) -> list[tuple[int, dict[str, float]]]:
        """Train from ``step`` to ``config.max_steps``: log, evaluate and checkpoint as configured."""
        config = self.config
        while self.step < config.max_steps:
            metrics = self.train_step()
            if self.step % config.logging_steps == 0:
                self.log(self.step, metrics)
            if config.eval_every and self.eval_dataset is not None and self.step % config.eval_every == 0:
                self.log(self.step, self.evaluate())
            if config.output_dir and config.save_every and self.step % config.save_every == 0:
                self.save_checkpoint(os.path.join(config.output_dir, f"checkpoint-{self.step}"))
        if config.output_dir and not os.path.isdir(os.path.join(config.output_dir, f"checkpoint-{self.step}")):
            self.save_checkpoint(os.path.join(config.output_dir, f"checkpoint-{self.step}"))
        return self.history

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, directory: str) -> None:
        """Write the weights and the full training state to `directory` (see ``dspo_core.train.checkpoint``).

        Call on every process: the main one writes the weights and optimizer/scheduler state,
        each one its RNG state.
        """
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        os.makedirs(directory, exist_ok=True)
        if accelerator.is_main_process:
            if self.config.full_finetune:
                self.backbone.unet.save_pretrained(os.path.join(directory, ckpt.UNET_DIR), safe_serialization=True)
            else:
                self.backbone.save_lora(directory)
                ckpt.save_tensors(self.named_params, os.path.join(directory, ckpt.TRAINABLE_FILE))
            scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
            state = {
                "optimizer": self.optimizer.state_dict(),
                "lr_scheduler": self.lr_scheduler.state_dict(),
                "scaler": scaler,
            }
            torch.save(state, os.path.join(directory, ckpt.STATE_FILE))
            ckpt.write_info(
                directory,
                {
                    "step": self.step,
                    "micro_step": self.micro_step,
                    "num_processes": accelerator.num_processes,
                    "full_finetune": self.config.full_finetune,
                    "base_weights_id": self.backbone.base_weights_id,
                    "config": self.config.model_dump(mode="json"),
                },
            )
        ckpt.save_rng(directory, accelerator.process_index)
        accelerator.wait_for_everyone()

    def resume(self, directory: str) -> None:
        """Restore a ``save_checkpoint`` folder: the next ``train_step`` is the uninterrupted run's next step.

        Needs the same process count and the same ``DATA_ORDER_FIELDS`` (seed, batch size,
        accumulation, shuffle); other fields (max_steps, eval, logging) may change.
        """
        info = ckpt.read_info(directory)
        saved = info["config"]
        changed = [name for name in DATA_ORDER_FIELDS if saved.get(name) != getattr(self.config, name)]
        if changed or info["num_processes"] != self.accelerator.num_processes:
            raise ValueError(
                f"checkpoint {directory} was written under another data order: fields {changed}, "
                f"processes {info['num_processes']} vs {self.accelerator.num_processes}"
            )
        if info["full_finetune"] != self.config.full_finetune:
            raise ValueError(f"checkpoint full_finetune={info['full_finetune']} != config {self.config.full_finetune}")
        ckpt.load_into(self.named_params, ckpt.trainable_files(directory, self.config.full_finetune))
        state = torch.load(os.path.join(directory, ckpt.STATE_FILE), map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if state["scaler"] is not None and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(state["scaler"])
        self.step, self.micro_step = int(info["step"]), int(info["micro_step"])
        ckpt.load_rng(directory, self.accelerator.process_index)
        self._batches = None  # restart the data stream at micro_step
