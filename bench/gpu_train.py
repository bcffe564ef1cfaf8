"""DSPO training-step throughput on an SD-2.1-size UNet: pairs/s, peak memory and MFU.

What it measures
    The SD-2.1 UNet architecture built from its config (random weights: no download), with a
    LoRA adapter as ``DiffusionSRBackbone.trainable_parameters`` adds it (rank --rank on
    to_q/to_k/to_v/to_out.0, float32 adapter weights on bfloat16 base weights), runs DSPO
    steps through the project's ``dspo_core.train.step.dspo_step`` (re-noised objective:
    policy forward + backward on the 2B winner/loser latents, reference forward with the
    adapter disabled, ``dspo_loss`` with instance masks) plus an AdamW step on the LoRA
    weights, under bf16 autocast. Latents are random (B, 4, size/8, size/8) tensors and the
    text embeddings random (B, 77, 1024): the VAE and text encoder are frozen and run once
    per pair in real training (cached latents), so they are outside the step.

    pairs/s       B * --steps / wall time of the timed steps (after --warmup steps; CUDA
                  synchronised before and after).
    peak memory   torch.cuda.max_memory_allocated over the timed steps (GPU), or the
                  process's peak RSS (CPU).
    MFU           model FLOPs per step / step time / (--peak-tflops * 1e12). Model FLOPs per
                  step = 4 x F, F = FLOPs of one UNet forward on the 2B latents counted by
                  torch.utils.flop_counter.FlopCounterMode (matmuls, convolutions, SDPA):
                  3F for the policy's forward + backward, F for the reference forward.
                  (With frozen base weights the backward skips the weight gradients, so the
                  hardware does less than 3F for the policy: this is the usual
                  "model FLOPs" convention, not the executed FLOPs.) --peak-tflops defaults to
                  989 (H100 SXM dense bf16); H200: also 989; H100 PCIe: 756.

SD-2.1 UNet config (stabilityai/stable-diffusion-2-1, unet/config.json): block_out_channels
(320, 640, 1280, 1280), layers_per_block 2, attention_head_dim (5, 10, 20, 20),
cross_attention_dim 1024, use_linear_projection True, CrossAttnDownBlock2D x3 + DownBlock2D,
UpBlock2D + CrossAttnUpBlock2D x3, sample_size 64 for 512 px (96 for the 768 px model).
--concat-lq uses in_channels 8 (x_t concatenated with the LQ latent, as the tiny model does).

How to run
    GPU:   .venv/bin/python bench/gpu_train.py [--size 512] [--batch-size 2] [--steps 10]
               [--warmup 3] [--rank 8] [--gradient-checkpointing] [--peak-tflops 989]
    smoke: .venv/bin/python bench/gpu_train.py --device cpu --size 64 --steps 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from diffusers import DDPMScheduler, UNet2DConditionModel  # noqa: E402
from peft import LoraConfig  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from dspo_core.loss import pool_mask  # noqa: E402
from dspo_core.sr.tiny import sd2_scheduler_config  # noqa: E402
from dspo_core.train import TrainConfig  # noqa: E402
from dspo_core.train.latents import PairLatents  # noqa: E402
from dspo_core.train.step import TextConditioning, dspo_step  # noqa: E402

TEXT_LEN, TEXT_DIM = 77, 1024


def sd21_unet(sample_size: int, in_channels: int = 4) -> UNet2DConditionModel:
    """The SD-2.1 UNet (865 M parameters at in_channels 4) with random weights."""
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=(5, 10, 20, 20),
        cross_attention_dim=TEXT_DIM,
        use_linear_projection=True,
        norm_num_groups=32,
        act_fn="silu",
        flip_sin_to_cos=True,
        freq_shift=0,
    )


class UNetBackbone:
    """The part of ``DiffusionSRBackbone`` that ``dspo_step`` uses, around a bare UNet."""

    def __init__(self, unet: UNet2DConditionModel, scheduler: DDPMScheduler, concat_lq: bool):
        self.unet, self.scheduler, self.concat_lq = unet, scheduler, concat_lq

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

    def add_noise(self, latents, noise, timesteps):
        return self.scheduler.add_noise(latents, noise, timesteps)

    def target(self, latents, noise, timesteps):
        if self.prediction_type == "epsilon":
            return noise
        return self.scheduler.get_velocity(latents, noise, timesteps)

    def predict(self, noisy_latents, timesteps, text_embeddings, lq_latents):
        sample = torch.cat([noisy_latents, lq_latents], dim=1) if self.concat_lq else noisy_latents
        return self.unet(sample, timesteps, encoder_hidden_states=text_embeddings, return_dict=False)[0]

    @contextlib.contextmanager
    def reference(self):
        self.unet.disable_adapters()
        try:
            yield
        finally:
            self.unet.enable_adapters()


def add_lora(unet: UNet2DConditionModel, rank: int) -> list[torch.nn.Parameter]:
    """LoRA as ``DiffusionSRBackbone.trainable_parameters``: attention projections, fp32 adapter weights."""
    unet.requires_grad_(False)
    unet.add_adapter(
        LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    )
    params = []
    for name, param in unet.named_parameters():
        if "lora_" in name:
            param.requires_grad_(True)
            param.data = param.data.float()
            params.append(param)
    return params


def make_batch(batch: int, size: int, device: torch.device, generator: torch.Generator):
    """Random latents, text, masks (two half-image instances, alternating) and per-pair noise and t."""
    h = w = size // 8
    latents = PairLatents(
        lq=torch.randn(batch, 4, h, w, generator=generator).to(device),
        winner=torch.randn(batch, 4, h, w, generator=generator).to(device),
        loser=torch.randn(batch, 4, h, w, generator=generator).to(device),
    )
    text = TextConditioning(torch.randn(batch, TEXT_LEN, TEXT_DIM, generator=generator).to(device))
    pixel = torch.zeros(batch, size, size)
    pixel[0::2, :, : size // 2] = 1  # even pairs: left half
    pixel[1::2, :, size // 2 :] = 1  # odd pairs: right half
    masks = pool_mask(pixel, (h, w))  # (B, h, w)
    weights = torch.full((batch,), 0.5)
    noise = torch.randn(batch, 4, h, w, generator=generator)
    timesteps = torch.randint(0, 1000, (batch,), generator=generator)
    return latents, text, masks, weights, noise, timesteps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=512, help="HR side in pixels (latent side = size / 8)")
    parser.add_argument("--batch-size", type=int, default=2, help="pairs per step (2x latents per UNet call)")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--beta", type=float, default=5000.0)
    parser.add_argument("--concat-lq", action="store_true", help="in_channels 8: x_t concatenated with the LQ latent")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="peak dense bf16 TFLOP/s of the device")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    if args.size % 64:
        raise SystemExit(f"--size must be a multiple of 64 (VAE x8 times the UNet's x8), got {args.size}")

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    in_channels = 8 if args.concat_lq else 4
    unet = sd21_unet(args.size // 8, in_channels).to(device, torch.bfloat16)
    base_params = sum(p.numel() for p in unet.parameters())
    lora = add_lora(unet, args.rank)
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    backbone = UNetBackbone(unet, DDPMScheduler(**sd2_scheduler_config("epsilon")), args.concat_lq)
    config = TrainConfig(beta=args.beta, text_mode="none", one_step_objective="renoise", mixed_precision="bf16")
    optimizer = torch.optim.AdamW(lora, lr=args.lr, weight_decay=0.0)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    batch = make_batch(args.batch_size, args.size, device, generator)
    latents, text, masks, weights, noise, timesteps = batch

    # Model FLOPs of one UNet forward on the 2B latents of a step (policy: adapters on).
    h = args.size // 8
    with torch.no_grad(), autocast:
        sample = torch.randn(2 * args.batch_size, in_channels, h, h, generator=generator).to(device)
        t = torch.cat([timesteps, timesteps]).to(device)
        encoder = torch.cat([text.cond, text.cond])
        counter = FlopCounterMode(display=False)
        with counter:
            unet(sample, t, encoder_hidden_states=encoder, return_dict=False)
    forward_flops = counter.get_total_flops()
    step_flops = 4 * forward_flops  # 3F policy fwd+bwd, F reference fwd
    del sample, encoder

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            out = dspo_step(backbone, latents, text, masks, weights, noise, timesteps, config)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(lora, 1.0)
        optimizer.step()
        return float(out.loss.detach())

    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    losses = [step() for _ in range(args.steps)]  # float() syncs every step, as a logging trainer does
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    step_s = seconds / args.steps
    achieved = step_flops / step_s
    result = {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "size": args.size,
        "latent": [h, h],
        "batch_pairs": args.batch_size,
        "unet_params_m": base_params / 1e6,
        "lora_params_m": sum(p.numel() for p in lora) / 1e6,
        "gradient_checkpointing": args.gradient_checkpointing,
        "steps": args.steps,
        "step_s": step_s,
        "pairs_per_s": args.batch_size * args.steps / seconds,
        "unet_forward_gflops": forward_flops / 1e9,
        "step_model_tflops": step_flops / 1e12,
        "achieved_tflops": achieved / 1e12,
        "mfu": achieved / (args.peak_tflops * 1e12),
        "peak_tflops": args.peak_tflops,
        "last_loss": losses[-1],
    }
    if cuda:
        result["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    memory = (
        f"peak GPU memory {result['peak_gpu_mem_gib']:.2f} GiB" if cuda else f"peak RSS {result['peak_rss_gib']:.2f} GiB"
    )
    print(
        f"{result['device']}: SD-2.1 UNet {result['unet_params_m']:.0f} M params + LoRA r{args.rank} "
        f"({result['lora_params_m']:.2f} M), {args.size}px (latent {h}x{h}), {args.batch_size} pairs/step, bf16\n"
        f"  {result['pairs_per_s']:.2f} pairs/s ({step_s * 1e3:.0f} ms/step), {memory}\n"
        f"  UNet forward {result['unet_forward_gflops']:.0f} GFLOP on {2 * args.batch_size} latents; "
        f"step 4F = {result['step_model_tflops']:.2f} TFLOP; {result['achieved_tflops']:.1f} TFLOP/s = "
        f"MFU {100 * result['mfu']:.1f} % of {args.peak_tflops:.0f} TFLOP/s; last loss {result['last_loss']:.4f}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
