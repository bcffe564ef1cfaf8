"""DSPO fine-tuning: data records, the loss step and an ``accelerate`` trainer.

    from dspo_core.train import DSPOTrainer, PairExample, TrainConfig

    pairs = [PairExample(lq=lq, winner=w, loser=l, mask=m, weight=0.3,
                         positive_text="a brick wall", negative_text="text on the wall",
                         pair_id="9f2c...") for ...]
    trainer = DSPOTrainer(backbone, TrainConfig(max_steps=500, output_dir="runs/x"), pairs,
                          eval_pairs=held_out, on_log=publish)
    trainer.train()

Modules: ``config`` (TrainConfig), ``data`` (PairExample, Dataset, collator, sharded
order), ``latents`` (VAE latent cache), ``step`` (the DSPO step: formulas and shapes),
``metrics`` (the logged keys and how to read them), ``trainer`` (DSPOTrainer),
``checkpoint`` (the checkpoint folder). Plain Python data in, metrics out through a
callback: no dependency on the pipeline, the store or the flows.
"""

from .config import TrainConfig
from .data import PairBatch, PairCollator, PairDataset, PairExample, ShardedPairOrder
from .latents import LatentCache, PairLatents, encode_pairs
from .metrics import EVAL_KEYS, TRAIN_KEYS, summarize
from .step import PAIR_TERMS, StepOutput, TextConditioning, dspo_step, encode_conditioning, guided_predict
from .trainer import DSPOTrainer

__all__ = [
    "EVAL_KEYS",
    "PAIR_TERMS",
    "TRAIN_KEYS",
    "DSPOTrainer",
    "LatentCache",
    "PairBatch",
    "PairCollator",
    "PairDataset",
    "PairExample",
    "PairLatents",
    "ShardedPairOrder",
    "StepOutput",
    "TextConditioning",
    "TrainConfig",
    "dspo_step",
    "encode_conditioning",
    "encode_pairs",
    "guided_predict",
    "summarize",
]
