"""The datasets this pipeline writes: names and Arrow schemas, one documented record each.

Image columns use the Hugging Face `Image` struct (storage.IMAGE_TYPE): `datasets`
decodes them to PIL, pandas sees {bytes, path}.
"""
from __future__ import annotations

import hashlib

import pyarrow as pa

from storage import IMAGE_TYPE


def stable_id(kind: str, *parts: object) -> str:
    """A row id: 20 hex digits of sha256("kind:part:part..."). The kind keeps ids of different
    datasets apart (candidate k and instance k of a sample never share an id)."""
    return hashlib.sha256(":".join([kind, *map(str, parts)]).encode()).hexdigest()[:20]


HR_IMAGES = pa.schema([
    ("image_id", pa.string()),   # first 20 hex digits of the sha256 of the source file's bytes
    ("source", pa.string()),     # where it came from, relative to the ingest source (no credentials)
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("split", pa.string()),      # train | val | test, from the content hash: stable across re-ingests
    ("image", IMAGE_TYPE),       # 8-bit RGB PNG, EXIF orientation applied
    ("notes", pa.string()),      # conversions applied ("CMYK -> RGB; EXIF orientation 6 applied"), or ""
])
"""`hr_images`: one row per distinct source image (duplicates by content are stored once)."""

LQ_PAIRS = pa.schema([
    ("sample_id", pa.string()),          # stable_id("sample", image_id, seed): what later datasets refer to
    ("image_id", pa.string()),           # the hr_images row it came from
    ("split", pa.string()),
    ("crop_top", pa.int32()),            # HR crop box, in pixels of the source padded by pad_bottom / pad_right
    ("crop_left", pa.int32()),
    ("crop_height", pa.int32()),         # = degrade.degradation.gt_size
    ("crop_width", pa.int32()),
    ("pad_bottom", pa.int32()),          # rows mirrored below a source shorter than gt_size (BORDER_REFLECT_101), else 0
    ("pad_right", pa.int32()),           # columns mirrored right of a source narrower than gt_size, else 0
    ("scale", pa.int32()),               # HR side / LQ side
    ("hr", IMAGE_TYPE),                  # the HR crop (ground truth, not sharpened), padded where the source is smaller
    ("hr_usm", IMAGE_TYPE),              # degradation.gt_usm on: USMSharp(hr), what the lq was degraded from
                                         # (Real-ESRGAN's L1 / perceptual target); null when gt_usm is off
    ("lq", IMAGE_TYPE),                  # the degraded low-quality input
    ("seed", pa.int64()),                # seed of every random draw of this degradation
    ("degradation_params", pa.string()), # JSON of every sampled value (dspo_core.degradation.DegradationParams)
    ("notes", pa.string()),              # what was done beyond the degradation ("padded 16 px at the bottom ..."), or ""
])
"""`lq_pairs`: one row per degraded crop, every crop `gt_size` square (sources smaller on a side
are padded there, as BasicSR's RealESRGANDataset does; the manifest counts them in
`padded_crops`); `dspo_core.degradation.replay(row, hr)` regenerates `lq` bit-for-bit.
A real-world paired benchmark (`dspo ingest --paired`, pipeline.paired) writes the same columns:
one row per HR/LR file pair, split `test`, the crop box the whole HR, `seed` and
`degradation_params` null (nothing synthetic to replay), `notes` naming the two files; its
manifest says `degradation: real` and names the benchmark."""

SR_CANDIDATES = pa.schema([
    ("candidate_id", pa.string()),       # stable_id("candidate", sample_id, candidate_index)
    ("sample_id", pa.string()),          # the lq_pairs row
    ("candidate_index", pa.int32()),     # 0..N-1, in the order of the sample config's sources
    ("backbone", pa.string()),           # name in dspo_core.sr.BACKBONES
    ("weights_id", pa.string()),         # identity of the weights (path or builtin label + sha256 prefix)
    ("seed", pa.int64()),                # the seed the candidate was drawn with
    ("settings", pa.string()),           # JSON of the resolved CandidateSettings (steps, guidance, noise, prompt...)
    ("image", IMAGE_TYPE),               # the SR output, same size as the HR crop
])
"""`sr_candidates`: one row per SR output; the backbones' full descriptions are in the manifest."""

RLE_TYPE = pa.struct([("size", pa.list_(pa.int32())), ("counts", pa.string())])

INSTANCES = pa.schema([
    ("instance_id", pa.string()),        # stable_id("instance", sample_id, index)
    ("sample_id", pa.string()),          # the lq_pairs row; masks apply to every candidate of that sample
    ("index", pa.int32()),               # position among the sample's instances (priority order)
    ("mask", RLE_TYPE),                  # COCO RLE (pycocotools-compatible compressed counts), at HR resolution
    ("bbox", pa.list_(pa.int32())),      # [x, y, w, h] in pixels
    ("area", pa.int64()),                # |s_m|, pixels
    ("weight", pa.float64()),            # w_m = |s_m| / sum of the sample's areas (sums to 1 per sample)
    ("predicted_iou", pa.float64()),     # SAM's quality estimate; null for felzenszwalb / remainder
    ("stability_score", pa.float64()),   # SAM's stability; null for felzenszwalb / remainder
    ("source", pa.string()),             # sam | felzenszwalb | remainder
    ("anchor", pa.string()),             # the image segmented: hr | lq_bicubic
])
"""`instances`: one row per instance mask; the segmenter and all its parameters are in the manifest."""

HUMAN_LABELS = pa.schema([
    ("label_id", pa.string()),           # hash of (annotator, sample_id, instance_id)
    ("sample_id", pa.string()),
    ("instance_id", pa.string()),        # null: the label is about the whole image
    ("best", pa.string()),               # candidate_id judged best for this instance
    ("worst", pa.string()),              # candidate_id judged worst
    ("hallucination", pa.bool_()),       # the worst candidate hallucinates in this instance
    ("description", pa.string()),        # the annotator's words about the hallucination (user description feedback)
    ("mask", RLE_TYPE),                  # optional region drawn by the annotator (COCO RLE), null if none
    ("annotator", pa.string()),
    ("source", pa.string()),             # csv | parquet | label-studio | app
    ("labelled_at", pa.timestamp("us", tz="UTC")),
])
"""`human_labels`: one row per (annotator, instance) judgement; every import publishes a new
version holding all labels so far."""

INSTANCE_SCORES = pa.schema([
    ("instance_id", pa.string()),
    ("sample_id", pa.string()),
    ("candidate_id", pa.string()),
    ("metric", pa.string()),             # pyiqa name, or "reward" / "fr_mean" / "nr_mean" (aggregates)
    ("kind", pa.string()),               # fr | nr | reward | fr_mean | nr_mean
    ("value", pa.float64()),             # raw metric value on pyiqa's scale (aggregates: same as normalised)
    ("lower_better", pa.bool_()),
    ("normalised", pa.float64()),        # logistic of the metric's z-score over the whole dataset (higher = better)
    ("method", pa.string()),             # masked_map | bbox_fill | aggregate
    ("normalisation", pa.string()),      # how `normalised` was computed
    ("pyiqa_version", pa.string()),
])
"""`instance_scores`: one row per (instance, candidate, metric), plus the reward rows: the
hybrid reward = fr_weight * fr_mean + nr_weight * nr_mean (DP2O-SR). The manifest's
`normalisation` holds each metric's dataset-wide scale (dspo_core.iqa.rewards)."""

PAIRS = pa.schema([
    ("pair_id", pa.string()),            # stable hash of (sample_id, instance_id, winner_id, loser_id)
    ("sample_id", pa.string()),
    ("instance_id", pa.string()),
    ("winner_id", pa.string()),          # candidate_id preferred on this instance
    ("loser_id", pa.string()),
    ("weight", pa.float64()),            # loss weight: w_m (split over the instance's pairs for top-k x bottom-k)
    ("margin", pa.float64()),            # IQA reward winner - loser (<= 0 where a human overrode IQA)
    ("source", pa.string()),             # iqa | human | both
    ("winner_reward", pa.float64()),
    ("loser_reward", pa.float64()),
    ("human_hallucination", pa.bool_()),
    ("human_description", pa.string()),
    ("annotators", pa.list_(pa.string())),
])
"""`pairs`: instance-level preference pairs; the manifest holds the report (counts, dropped
pairs, rejected labels) and the human-vs-IQA agreement table."""

PREFERENCES = pa.schema([
    ("pair_id", pa.string()),
    ("sample_id", pa.string()),          # lq_pairs row: the LQ input and the HR crop
    ("instance_id", pa.string()),        # instances row
    ("winner_id", pa.string()),          # sr_candidates row preferred on this instance
    ("loser_id", pa.string()),
    ("weight", pa.float64()),            # w_m, the instance's loss weight
    ("margin", pa.float64()),            # IQA reward gap winner - loser
    ("source", pa.string()),             # iqa | human | both
    ("mask", RLE_TYPE),                  # the instance mask (COCO RLE at HR resolution), for self-contained use
    ("hallucination", pa.bool_()),       # the loser instance is a hallucination suspect (IQA test or human flag)
    ("hallucination_reason", pa.string()),
    ("positive_text", pa.string()),      # what the HR region shows: the prompt during training
    ("negative_text", pa.string()),      # what the loser region shows: negative-prompt text during training
    ("feedback_source", pa.string()),    # human | captioner:<name> | template
    ("attributes", pa.string()),         # JSON of the measured region attributes (sharpness, colour shift, ...)
])
"""`preferences`: the dataset other experiments pull. One row per instance-level pair with its
mask, weight, margin and text feedback; its manifest lineage names every input version.
`dspo datasets pull preferences@vN --with-images` adds the LQ, HR, winner and loser images."""

#: The per-step metric columns of `train_metrics`: dspo_core.train.metrics.TRAIN_KEYS, spelled
#: out here so importing the schemas needs no torch (a test checks they stay equal).
TRAIN_METRIC_KEYS = ("loss", "implicit_acc", "margin", "d_w_policy", "d_w_ref", "d_l_policy", "d_l_ref",
                     "grad_norm", "lr", "epoch", "pairs_per_s")

CHECKPOINTS = pa.schema([
    ("checkpoint_id", pa.string()),      # stable_id("checkpoint", run_id, step)
    ("run_id", pa.string()),             # training identity: backbone, data, hyperparameters (not the run length)
    ("step", pa.int64()),                # optimizer steps done when saved
    ("final", pa.bool_()),               # the last checkpoint this stage run wrote
    ("backbone", pa.string()),           # name in dspo_core.sr.BACKBONES
    ("base_weights_id", pa.string()),    # the weights the adapter sits on (backbone.base_weights_id)
    ("lora_file", pa.string()),          # "pytorch_lora_weights.safetensors": the name load_lora expects
    ("lora_weights", pa.large_binary()), # that file's bytes (diffusers LoRA format; rank/alpha in its metadata)
    ("lora_sha256", pa.string()),        # sha256 of lora_weights
    ("trainer_state", pa.large_binary()),# tar of the whole DSPOTrainer.save_checkpoint folder (optimizer, scheduler, RNG): resume
    ("config", pa.string()),             # JSON of the train stage config (backbone, TrainConfig, split, eval_fraction)
    ("train_pairs", pa.int32()),         # pairs trained on
    ("eval_pairs", pa.int32()),          # held-out pairs: all pairs of the samples whose stable hash of sample_id < eval_fraction
    ("train_metrics", pa.string()),      # ref of the train_metrics version this run logged to
    ("resumed_from", pa.string()),       # "checkpoints@vN:step" this run continued from, or null
    ("inputs", pa.list_(pa.string())),   # the pinned input refs (also the manifest's lineage)
])
"""`checkpoints`: one row per checkpoint saved by the train stage. The LoRA file travels inline
(`lora_weights`), so any machine with store access can load it:
`pipeline.stages.train.load_checkpoint_into(backbone, store, "checkpoints@vN")`. The manifest
metadata names the run, its train_metrics ref and the final train/eval metrics."""

TRAIN_METRICS = pa.schema([
    ("run_id", pa.string()),             # the checkpoints run_id
    ("step", pa.int64()),                # optimizer step the values belong to (continues across resumes)
    ("split", pa.string()),              # train | eval (held-out pairs; eval rows have null grad_norm/lr/epoch/pairs_per_s)
    *[(key, pa.float64()) for key in TRAIN_METRIC_KEYS],  # meanings: dspo_core.train.metrics
])
"""`train_metrics`: one row per logged step of one train stage run; eval rows carry the
`eval_<key>` values under the plain key names. Published by the train stage next to `checkpoints`."""

EVAL_RESULTS = pa.schema([
    ("sample_id", pa.string()),          # the lq_pairs row evaluated; null on a set-level row (FID)
    ("split", pa.string()),              # its lq_pairs split; null on a set-level row
    ("method", pa.string()),             # the evaluate.compare name (base, tuned, image-dpo, dspo, ...)
    ("weights_id", pa.string()),         # backbone weights (a checkpoint: base + the LoRA digest)
    ("checkpoint_ref", pa.string()),     # the checkpoints version whose LoRA makes `method`; null for base
    ("checkpoint_id", pa.string()),      # that checkpoints row; null for base
    ("step", pa.int64()),                # that checkpoint's step; null for base
    ("protocol", pa.string()),           # evaluate.protocol: osediff | weight-free
    ("metric", pa.string()),             # the protocol's metric key (psnr, ssim, lpips, fid, maniqa-pipal, ...)
    ("pyiqa_metric", pa.string()),       # the pyiqa.create_metric name
    ("options", pa.string()),            # JSON of its create_metric options ({"color_space": "ycbcr", ...})
    ("kind", pa.string()),               # fr (against the HR image) | nr (the SR image alone)
    ("level", pa.string()),              # image (one value per sample) | set (one value per method: FID)
    ("value", pa.float64()),             # whole-image score of the SR output, pyiqa's scale
    ("lower_better", pa.bool_()),
])
"""`eval_results`: one row per (held-out sample, method, image-level metric), plus one row per
(method, set-level metric) with null sample_id. Every method is scored on the same samples, seeds
and settings, so the per-image values pair up by sample_id (recompute any mean, CI or win-rate
from them). The manifest metadata holds the table, the markdown report, the methods (refs,
checkpoint ids, steps: what exactly was evaluated) and the ref of its `eval_report` row."""

EVAL_REPORT = pa.schema([
    ("protocol", pa.string()),           # evaluate.protocol
    ("methods", pa.string()),            # JSON list of {name, source, checkpoint_ref, checkpoint_id, step, ...}
    ("split", pa.string()),              # the split evaluated, or "all" (fallbacks are named in `notes`)
    ("samples", pa.int32()),
    ("table", pa.string()),              # JSON {method: {metric: {level, mean, ci_low, ci_high, n, wins, ties, losses, win_rate}}}
    ("markdown", pa.string()),           # the report: the method x metric table with CIs, the win-rates vs base
    ("csv", pa.string()),                # the same table as CSV, one row per method
    ("grid", IMAGE_TYPE),                # PNG: LQ (upscaled) | each method | HR, one row per sample
    ("notes", pa.string()),              # fallbacks used, or ""
])
"""`eval_report`: one row per evaluate run, published by the evaluate stage next to `eval_results`."""
