"""Every stage at paper scale: the `full` profile's real architectures with random weights, end to end.

What it runs
    The real stage code (`pipeline.stages.STAGES[name]` through `pipeline.stage.run_stage`, a
    file:// store in the work folder), ingest -> evaluate, on `--images` source photos with the
    `full` profile and only these overrides (`OVERRIDES` below), each stage in its own process
    so each peak RSS is its own:

      - weights: SD-2.1-base's UNet (866 M), VAE (84 M) and OpenCLIP-H text encoder (340 M)
        built from SD-2.1-base's published configs (`SD21_*` below) with random weights and saved
        as a diffusers folder; an OSEDiff-format checkpoint (rank 4 LoRA on the UNet and VAE
        encoder, random, `dspo_core.sr.save_osediff_checkpoint`) in $DSPO_MODELS as osediff.pkl,
        which the profile's `osediff_path: osediff.pkl` finds; SAM vit_h (636 M, random,
        `sam_model_registry["vit_h"]()`) as $DSPO_MODELS/sam_vit_h_4b8939.pth;
      - 512 HR crops (LQ 128), one crop per image; the profile's 4 OSEDiff candidates per LQ;
      - SAM vit_h instead of the profile's vit_b, with a 8x8 point grid and no score thresholds
        (random SAM weights pass none of the default ones: FIELD-NOTES);
      - metrics: the learned ones cannot be built without their weight files (dspo_core.iqa
        refuses a missing file, torchvision checks its backbones' hashes), so score and evaluate
        keep the weight-free ones of the profile's sets (PSNR, SSIM; PIQE for realism in score);
      - captioner: a tiny random Qwen2.5-VL (`dspo_core.feedback.tiny_vlm`) through the same VLM
        path, since the 7B model (16.6 GB in bf16) does not fit beside the SD parts here;
      - train: one optimizer step of one pair (max_steps 1, batch 1, no accumulation);
      - the backbones' `path`: the random SD-2.1-base folder (the profile's model id is looked up
        in the HF cache otherwise); device cpu and float32 on CPU (`--device cuda`: the profile's
        cuda / bf16).

    Printed per stage: wall seconds of `run_stage` (model loads included), images/s (ingest:
    source files; later stages: lq_pairs samples), output rows, peak RSS (VmHWM, reset just before
    the stage) and on a GPU the peak GPU memory; for train on a GPU also the MFU: every FLOP
    torch's FlopCounterMode counts in the stage over its wall time and `--peak-tflops` (latent
    caching and checkpoint writing included, so a lower bound on the step's own).

How to run
    nice .venv/bin/python bench/full_shapes.py [--images 2] [--workdir DIR] [--keep] [--reuse [--from STAGE]]
                                               [--device cpu|cuda] [--threads 2] [--candidates N]
                                               [--set key=value ...]
    # on a GPU: --images 32 --device cuda
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The per-stage RSS readings of bench/stages.py (this script's folder is on sys.path when it runs).
from stages import reset_peak, status_mb  # noqa: E402

# stabilityai/stable-diffusion-2-1-base's unet/, vae/ and text_encoder/ config.json values.
SD21_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "attention_head_dim": (5, 10, 20, 20), "cross_attention_dim": 1024, "use_linear_projection": True,
    "flip_sin_to_cos": True, "freq_shift": 0, "norm_num_groups": 32, "norm_eps": 1e-5, "downsample_padding": 1,
    "act_fn": "silu", "upcast_attention": False,
}
SD21_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "block_out_channels": (128, 256, 512, 512), "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4, "norm_num_groups": 32, "act_fn": "silu", "sample_size": 768,
    "scaling_factor": 0.18215,
}
SD21_TEXT = {
    "vocab_size": 49408, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23,
    "num_attention_heads": 16, "max_position_embeddings": 77, "hidden_act": "gelu", "projection_dim": 512,
    "layer_norm_eps": 1e-5,
}
SD21_SCHEDULER = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "clip_sample": False, "steps_offset": 1, "prediction_type": "epsilon",
}
SAM_FILE = "sam_vit_h_4b8939.pth"
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")


def overrides(args: argparse.Namespace, work: Path) -> dict:
    """The dotted overrides of the `full` profile this run uses (see the module doc)."""
    from pipeline.config import load_config

    cpu = args.device == "cpu"
    device = {"path": str(work / "sd-2-1-base"), **({"device": "cpu", "dtype": "float32"} if cpu else {})}
    sources = [{**source.model_dump(mode="json", exclude_unset=True), "config": {**source.config, **device}}
               for source in load_config("full").sample.sources]
    if args.candidates:  # the first N of the profile's candidate settings (a shorter run)
        sources = [{**sources[0], "settings": sources[0]["settings"][:args.candidates]}]
    train = {"max_steps": 1, "batch_size": 1, "gradient_accumulation_steps": 1, "num_workers": 0,
             "eval_every": 0, "logging_steps": 1}
    if cpu:
        train["mixed_precision"] = "no"
    chosen = {
        "ingest.source": str(work / "photos"),
        "degrade.crops_per_image": 1,
        "sample.sources": sources,
        "segment.segmenter.device": args.device,
        "segment.segmenter.sam.model_type": "vit_h",
        "segment.segmenter.sam.points_per_side": 8,
        "segment.segmenter.sam.pred_iou_thresh": 0.0,
        "segment.segmenter.sam.stability_score_thresh": 0.0,
        "score.iqa.metrics": ["psnr", "ssim", "piqe"],
        "score.iqa.device": args.device,
        "caption.captioner.model": str(work / "tiny-qwen-vl"),
        "caption.captioner.revision": None,
        "caption.captioner.device": args.device,
        "train.backbone_config": {**load_config("full").train.backbone_config, **device},
        "evaluate.metrics": ["psnr", "ssim"],
        "evaluate.device": args.device,
        **{f"train.train.{key}": value for key, value in train.items()},
    }
    if cpu:
        chosen["caption.captioner.dtype"] = "float32"
    import yaml

    for item in args.set:
        key, _, value = item.partition("=")
        chosen[key] = yaml.safe_load(value)
    return chosen


# ------------------------------------------------------------------ weights and photos (a child process)
def prepare(work: Path, images: int) -> None:
    """The random-init SD-2.1-base folder, osediff.pkl, the SAM vit_h file, the tiny VLM and `images` photos."""
    import numpy as np
    import torch
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from PIL import Image
    from skimage import data as skdata
    from transformers import CLIPTextConfig, CLIPTextModel

    from dspo_core.feedback.tiny_vlm import build_tiny_qwen_vl
    from dspo_core.sr import load_clip_tokenizer, save_osediff_checkpoint

    torch.manual_seed(0)
    models, sd_folder = work / "models", work / "sd-2-1-base"
    models.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    pipeline = StableDiffusionPipeline(
        vae=AutoencoderKL(**SD21_VAE), text_encoder=CLIPTextModel(CLIPTextConfig(**SD21_TEXT)),
        tokenizer=load_clip_tokenizer(str(work / "tokenizer")), unet=UNet2DConditionModel(**SD21_UNET),
        scheduler=DDPMScheduler(**SD21_SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    sizes = {name: sum(p.numel() for p in getattr(pipeline, name).parameters()) / 1e6
             for name in ("unet", "vae", "text_encoder")}
    pipeline.save_pretrained(str(sd_folder), safe_serialization=True)
    del pipeline
    unet = UNet2DConditionModel.from_pretrained(str(sd_folder), subfolder="unet")
    vae = AutoencoderKL.from_pretrained(str(sd_folder), subfolder="vae")
    save_osediff_checkpoint(str(models / "osediff.pkl"), unet, vae, rank=4, seed=0, std=1e-3)
    del unet, vae
    from segment_anything import sam_model_registry

    sam = sam_model_registry["vit_h"]()
    sizes["sam_vit_h"] = sum(p.numel() for p in sam.parameters()) / 1e6
    torch.save(sam.state_dict(), models / SAM_FILE)
    del sam
    build_tiny_qwen_vl(str(work / "tiny-qwen-vl"))
    photos = work / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for index in range(images):  # distinct 560 px crops of the photos, short side first scaled to 600
        name = PHOTOS[index % len(PHOTOS)]
        image = Image.fromarray(np.asarray(getattr(skdata, name)())[..., :3])
        scale = 600 / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
        top, left = (int(rng.integers(0, side - 560 + 1)) for side in (image.height, image.width))
        crop = image.crop((left, top, left + 560, top + 560))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop.save(photos / f"{index:03d}-{name}.png")
    print("PREPARED " + json.dumps({"seconds": time.perf_counter() - started, "params_m": sizes}), flush=True)


# ------------------------------------------------------------------ one stage (a child process)
def child(args: argparse.Namespace) -> None:
    import contextlib

    import torch

    torch.set_num_threads(args.threads)
    from pipeline.config import load_config
    from pipeline.stage import run_stage
    from pipeline.stages import STAGES
    from storage import DatasetStore

    work = Path(args.workdir)
    config = load_config("full", overrides(args, work))
    store = DatasetStore(str(work / "store"))
    stage = STAGES[args.stage]
    unit = "hr_images" if args.stage in ("ingest", "degrade") else "lq_pairs"
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    counter = contextlib.nullcontext()
    if cuda and args.stage == "train":
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
    before = status_mb("VmRSS")
    peak_reset = reset_peak()
    started = time.perf_counter()
    with counter:
        result = run_stage(stage, store, config)
    seconds = time.perf_counter() - started
    peak = status_mb("VmHWM") if peak_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.stage == "ingest":
        inputs = len(list((work / "photos").iterdir()))
    else:
        inputs = store.manifest(store.resolve(f"{unit}@latest"))["rows"]
    record = {"stage": args.stage, "seconds": seconds, "inputs": inputs, "rows": result.rows, "peak_mb": peak,
              "before_mb": before, "cache_hit": result.cache_hit, "ref": result.ref}
    if cuda:
        record["gpu_peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
    if cuda and args.stage == "train":
        record["flops"] = counter.get_total_flops()
        record["mfu"] = record["flops"] / seconds / (args.peak_tflops * 1e12)
    if args.stage == "sample":
        record["describe"] = store.manifest(result.ref)["metadata"].get("backbones", [{}])[0].get("osediff")
    print("RESULT " + json.dumps(record), flush=True)
    os._exit(0)  # skip teardown: native thread pools can abort at exit after the result is out


# ------------------------------------------------------------------ parent
def run(args: argparse.Namespace, work: Path, env: dict, *extra: str) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--workdir", str(work), "--device", args.device,
               "--threads", str(args.threads), "--images", str(args.images), "--peak-tflops", str(args.peak_tflops),
               *(["--candidates", str(args.candidates)] if args.candidates else []),
               *[f"--set={item}" for item in args.set], *extra]
    proc = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    tag = "PREPARED " if "--prepare" in extra else "RESULT "
    lines = [line for line in proc.stdout.splitlines() if line.startswith(tag)]
    if not lines:
        sys.exit(f"{' '.join(extra)} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return json.loads(lines[-1][len(tag):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--workdir")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (weights, store)")
    parser.add_argument("--reuse", action="store_true", help="reuse the weights and photos a --keep run left in "
                                                             "--workdir (the store starts empty)")
    parser.add_argument("--from", dest="start", help="with --reuse: keep the store and start at this stage")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--candidates", type=int, help="keep only the first N of the profile's candidate settings")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100/H200 SXM: 989)")
    parser.add_argument("--set", action="append", default=[], help="one more override, key=value (YAML value)")
    parser.add_argument("--stage")
    parser.add_argument("--prepare", action="store_true")
    args = parser.parse_args()
    if args.prepare:
        return prepare(Path(args.workdir), args.images)
    if args.stage:
        return child(args)

    from pipeline.stages import STAGES

    work = Path(args.workdir or tempfile.mkdtemp(prefix="dspo-full-shapes-"))
    env = {**os.environ, "DSPO_MODELS": str(work / "models"), "HF_HUB_OFFLINE": "1",
           **{name: str(args.threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}}
    try:
        if args.reuse and not args.start:
            shutil.rmtree(work / "store", ignore_errors=True)
        else:
            prepared = run(args, work, env, "--prepare")
            print(f"weights built in {prepared['seconds']:.0f} s; parameters (M): "
                  + ", ".join(f"{name} {count:.0f}" for name, count in prepared["params_m"].items()), flush=True)
        results = []
        names = list(STAGES)
        for name in names[names.index(args.start) if args.start else 0:]:
            record = run(args, work, env, "--stage", name)
            results.append(record)
            print(f"  {name:<9} {record['seconds']:8.1f} s  {record['inputs'] / record['seconds']:7.3f} img/s  "
                  f"rows {record['rows']:<5} peak RSS {record['peak_mb'] / 1024:5.2f} GB"
                  + (f"  GPU {record['gpu_peak_gb']:.2f} GB" if "gpu_peak_gb" in record else "")
                  + (f"  MFU {record['mfu']:.1%}" if "mfu" in record else ""), flush=True)
        print("RESULTS " + json.dumps(results))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
