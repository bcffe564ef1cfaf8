"""``TrainConfig``: every knob of DSPO fine-tuning, typed and documented (TRL style).

Choices DSPO.md marks **[ours]** are fields here, so each can be changed and ablated:
``one_step_objective``, ``text_mode`` / ``train_guidance_scale``, ``instance_masks``,
``beta``, the timestep range. Defaults follow Diffusion-DPO's LoRA recipe (diffusers'
research example: lr 1e-5, constant schedule, beta 5000 at SD scale). Importing this
module needs pydantic only (no torch), so the pipeline layer can parse configs cheaply.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

TextMode = Literal["none", "prompt", "prompt+negative"]
OneStepObjective = Literal["renoise", "regression"]
LrSchedule = Literal["constant", "constant_with_warmup", "cosine", "linear"]
MixedPrecision = Literal["no", "fp16", "bf16"]

#: Fields that decide which pairs land in which micro-batch and the noise each pair gets;
#: a checkpoint resumes only under the same values (see ``DSPOTrainer.resume``).
DATA_ORDER_FIELDS = ("seed", "batch_size", "gradient_accumulation_steps", "shuffle")


class TrainConfig(BaseModel):
    """Options of ``DSPOTrainer``. Frozen; build a new one with ``model_copy(update=...)``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # ------------------------------------------------------------------ run length and data
    seed: int = Field(
        0, ge=0, description="Seeds the global RNGs (LoRA init), the epoch shuffles and every pair's noise and t."
    )
    max_steps: int = Field(1000, ge=1, description="Optimizer steps to train (one step = accumulation x micro-batches).")
    batch_size: int = Field(2, ge=1, description="Pairs per micro-batch per process.")
    gradient_accumulation_steps: int = Field(
        1, ge=1, description="Micro-batches per optimizer step. Effective batch = batch_size x this x processes."
    )
    shuffle: bool = Field(True, description="Reshuffle the pairs every epoch (seeded); False = dataset order.")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes for collating images and masks.")
    cache_latents: bool = Field(
        True,
        description="Encode the LQ, winner and loser latents once per run (VAE under no_grad, kept on the CPU) "
        "and reuse them every epoch; False = VAE-encode every micro-batch. A pure optimisation for deterministic "
        "encoders (one-step SD: posterior mean); for the SD x4 upscaler it also fixes one LQ noise augmentation per pair.",
    )
    encode_batch_size: int = Field(8, ge=1, description="Images per VAE call when filling the latent cache.")

    # ------------------------------------------------------------------ the DSPO objective
    beta: float = Field(5000.0, gt=0, description="DPO inverse temperature (Diffusion-DPO / DP2O-SR: 5000 at SD scale).")
    loss_type: Literal["sigmoid", "hinge", "ipo"] = Field(
        "sigmoid", description="Per-pair loss of the margin z, a key of dspo_core.loss.LOSS_TYPES (tested equal)."
    )
    instance_masks: bool = Field(
        True,
        description="True = DSPO: each pair's instance mask (pooled to the latent grid) and weight w_m. "
        "False = image-level Diffusion-DPO baseline: masks of ones and weights of ones.",
    )
    min_timestep: int = Field(0, ge=0, description="Smallest t drawn (inclusive) for the re-noised surrogate.")
    max_timestep: int | None = Field(
        None, ge=0, description="Largest t drawn (inclusive); None = num_train_timesteps - 1."
    )
    one_step_objective: OneStepObjective = Field(
        "renoise",
        description="One-step backbones only. 'renoise': the Diffusion-DPO epsilon/v surrogate at a random t "
        "(GDPO-SR). 'regression': Gaussian regression likelihood of the one-step output, "
        "d_k = mean_C (x0_phi(x_T) - z_k)^2 per latent pixel, x_T = z_lq + regression_noise_strength * eps at "
        "the backbone's timestep (see dspo_core.train.step).",
    )
    regression_noise_strength: float = Field(
        0.0, ge=0, description="'regression' only: noise added to the LQ latent before the one-step forward "
        "(0 = OSEDiff's deterministic output, the mean of the Gaussian).",
    )

    # ------------------------------------------------------------------ text feedback
    text_mode: TextMode = Field(
        "prompt+negative",
        description="'none': empty text for every pair. 'prompt': the positive text as the prompt. "
        "'prompt+negative': also the negative text (the hallucination description) as negative-prompt "
        "guidance during training: output = neg + g * (cond - neg), g = train_guidance_scale; "
        "an empty negative text is the unconditional branch; this doubles the UNet batch of every forward. "
        "Inference is unchanged.",
    )
    train_guidance_scale: float = Field(
        2.0,
        ge=1.0,
        description="g of the training-time negative guidance ('prompt+negative' only). 1 = no guidance "
        "(the negative branch has no effect). Default 2: the output is 2*cond - neg, so the negative branch "
        "gets the mirror image of the prompt branch's gradient (coefficients +2 / -1 around the identity), the "
        "smallest g at which the hallucination text is pushed away as strongly as the prompt is pulled in.",
    )

    # ------------------------------------------------------------------ optimisation
    full_finetune: bool = Field(
        False,
        description="False = LoRA (backbone.trainable_parameters(); reference = adapters disabled, no extra "
        "memory). True = every UNet parameter trains and the reference is a frozen deep copy of the UNet: one "
        "more UNet in memory plus fp32 grads and two AdamW moments, ~4x the UNet's fp32 size on top of the "
        "model (SD-2.1: 866M params -> ~14 GB) versus a few MB for LoRA. Needs float32 weights.",
    )
    learning_rate: float = Field(1e-5, gt=0, description="Peak AdamW learning rate.")
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW (beta1, beta2).")
    adam_epsilon: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    weight_decay: float = Field(1e-2, ge=0, description="AdamW decoupled weight decay (trainable params only).")
    lr_scheduler: LrSchedule = Field("constant", description="diffusers.optimization.get_scheduler name.")
    lr_warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps (constant_with_warmup, cosine, linear).")
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="Clip the global grad norm to this; None = no clipping (the norm is still logged)."
    )
    mixed_precision: MixedPrecision = Field(
        "no", description="accelerate autocast: 'no', 'fp16' (GPU, with loss scaling) or 'bf16'."
    )

    # ------------------------------------------------------------------ logging, eval, checkpoints
    logging_steps: int = Field(1, ge=1, description="Call on_log with the train metrics every this many steps.")
    eval_every: int = Field(0, ge=0, description="Evaluate on the held-out pairs every this many steps; 0 = never.")
    eval_batch_size: int | None = Field(None, ge=1, description="Pairs per eval micro-batch; None = batch_size.")
    output_dir: str | None = Field(
        None, description="Where train() writes checkpoint-<step>/ folders; None = no automatic checkpoints."
    )
    save_every: int = Field(0, ge=0, description="Checkpoint every this many steps (needs output_dir); 0 = only at the end.")

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.max_timestep is not None and self.max_timestep < self.min_timestep:
            raise ValueError(f"max_timestep {self.max_timestep} < min_timestep {self.min_timestep}")
        if not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"adam_betas must lie in [0, 1), got {self.adam_betas}")
        if self.lr_warmup_steps and self.lr_scheduler == "constant":
            raise ValueError("lr_warmup_steps needs lr_scheduler constant_with_warmup, cosine or linear")
        return self
