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

from dspo_core.lazy import lazy_exports

# Public name -> submodule, resolved on first use (PEP 562): ``TrainConfig`` alone
# imports pydantic only, not torch, diffusers or accelerate.
_EXPORTS = {
    "TrainConfig": ".config",
    "PairBatch": ".data",
    "PairCollator": ".data",
    "PairDataset": ".data",
    "PairExample": ".data",
    "ShardedPairOrder": ".data",
    "LatentCache": ".latents",
    "PairLatents": ".latents",
    "encode_pairs": ".latents",
    "EVAL_KEYS": ".metrics",
    "TRAIN_KEYS": ".metrics",
    "summarize": ".metrics",
    "PAIR_TERMS": ".step",
    "StepOutput": ".step",
    "TextConditioning": ".step",
    "dspo_step": ".step",
    "encode_conditioning": ".step",
    "guided_predict": ".step",
    "DSPOTrainer": ".trainer",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
