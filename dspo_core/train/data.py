"""Training data: ``PairExample`` records, the Dataset, the collator and the sharded order.

The trainer takes plain Python data — any sequence or iterable of ``PairExample`` (or of
mappings with its fields) with numpy images — never a store: the pipeline layer reads
its preference tables and builds the records.

Order and randomness are functions of the seed and the micro-step only
(``ShardedPairOrder``, ``pair_seed``): micro-step j of process r always holds the same
pairs with the same noise and timestep, whatever happened before, so a resumed run
reproduces the uninterrupted one and one process with accumulation sees the same pairs,
noise and t as several processes without it. Pairs of different image sizes train
together: the order buckets them by size, so each optimizer step is one size.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..loss import pool_mask
from ..sr.diffusion import batches, images_to_tensor

#: SR scale of every pair: the LQ is 1/SCALE of the winner and loser sides (DSPO: x4).
SCALE = 4

# Streams of pair_seed: independent random draws for the same (seed, epoch, index).
SHUFFLE_STREAM, TRAIN_NOISE_STREAM, EVAL_NOISE_STREAM, ENCODE_STREAM = 0, 1, 2, 3


def pair_seed(seed: int, stream: int, *keys: int) -> int:
    """A 63-bit seed from (seed, stream, keys...) via numpy's SeedSequence: independent streams per key."""
    entropy = [int(seed), int(stream), *(int(key) + 1 for key in keys)]  # +1: keys may be -1 (eval epoch)
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))


@dataclass(frozen=True, kw_only=True, eq=False)
class PairExample:
    """One DSPO training pair: the winner and loser SR images of one LQ input, judged on one instance.

    Fields:
        lq: the LQ input, ``(H/4, W/4, 3)`` uint8 RGB.
        winner: the preferred SR candidate, ``(H, W, 3)`` uint8 — the *full* image (DSPO, revision).
        loser: the dispreferred candidate, same shape as winner.
        mask: the instance the preference is about, ``(H, W)`` bool or float in [0, 1] on the SR
            grid; not empty. Ignored (all ones) under ``TrainConfig.instance_masks=False``.
        weight: the instance weight w_m = |s_m| / sum |s_m'|, finite and >= 0 (1 for image-level pairs).
        positive_text: caption of the HR content (the prompt); "" = none.
        negative_text: description of the loser's hallucination (the negative prompt); "" = none.
        pair_id: stable id of the pair (``dspo_core.pairs.pair_id``), for logs and debugging.
    """

    lq: np.ndarray
    winner: np.ndarray
    loser: np.ndarray
    mask: np.ndarray
    weight: float = 1.0
    positive_text: str = ""
    negative_text: str = ""
    pair_id: str = ""

    def __post_init__(self) -> None:
        for name in ("lq", "winner", "loser"):
            image = getattr(self, name)
            if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                described = f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}"
                raise ValueError(f"pair {self.pair_id!r}: {name} must be an (H, W, 3) uint8 array, got {described}")
        height, width = self.winner.shape[:2]
        if self.loser.shape != self.winner.shape:
            raise ValueError(f"pair {self.pair_id!r}: loser {self.loser.shape} != winner {self.winner.shape}")
        if (self.lq.shape[0] * SCALE, self.lq.shape[1] * SCALE) != (height, width):
            raise ValueError(f"pair {self.pair_id!r}: lq {self.lq.shape[:2]} x{SCALE} != winner {(height, width)}")
        mask = self.mask
        if not isinstance(mask, np.ndarray) or mask.shape != (height, width):
            raise ValueError(f"pair {self.pair_id!r}: mask must be an ({height}, {width}) array, got {getattr(mask, 'shape', mask)}")
        if mask.dtype != np.bool_ and not np.issubdtype(mask.dtype, np.floating):
            raise ValueError(f"pair {self.pair_id!r}: mask must be bool or float in [0, 1], got {mask.dtype}")
        if mask.dtype != np.bool_ and not (np.all(mask >= 0) and np.all(mask <= 1)):
            raise ValueError(f"pair {self.pair_id!r}: mask values must lie in [0, 1]")
        if not mask.any():
            raise ValueError(f"pair {self.pair_id!r}: empty instance mask")
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"pair {self.pair_id!r}: weight must be finite and >= 0, got {self.weight}")
        if not isinstance(self.positive_text, str) or not isinstance(self.negative_text, str):
            raise TypeError(f"pair {self.pair_id!r}: positive_text and negative_text must be str")


class PairDataset(torch.utils.data.Dataset):
    """A map-style Dataset over pair records; item i is ``(i, PairExample)`` (the index keys the latent cache).

    Pairs may differ in size (``ShardedPairOrder`` batches them by size); each side must be a
    multiple of ``size_multiple`` (the VAE factor), checked here, before any step: pairs are
    never resized.
    """

    def __init__(self, pairs: Iterable[PairExample | Mapping], size_multiple: int = 1):
        self.pairs: list[PairExample] = [p if isinstance(p, PairExample) else PairExample(**p) for p in pairs]
        if not self.pairs:
            raise ValueError("no training pairs")
        odd: dict[tuple[int, ...], list[str]] = {}
        for pair in self.pairs:
            if pair.winner.shape[0] % size_multiple or pair.winner.shape[1] % size_multiple:
                odd.setdefault(pair.winner.shape[:2], []).append(pair.pair_id)
        if odd:
            described = "; ".join(f"{h}x{w} (pairs {', '.join(map(repr, ids[:3]))}{', ...' if len(ids) > 3 else ''})"
                                  for (h, w), ids in odd.items())
            raise ValueError(f"image sizes not a multiple of the VAE factor {size_multiple}: {described}; "
                             f"crop or pad those pairs to multiples of {size_multiple}")

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[int, PairExample]:
        return index, self.pairs[index]

    def size_counts(self) -> list[dict[str, int]]:
        """``{height, width, pairs}`` per image size of the pairs, smallest size first."""
        counts = Counter(pair.winner.shape[:2] for pair in self.pairs)
        return [{"height": h, "width": w, "pairs": n} for (h, w), n in sorted(counts.items())]


@dataclass
class PairBatch:
    """B collated pairs. Tensors on the CPU; ``winner``/``loser`` are None when latents are cached."""

    indices: torch.Tensor  # (B,) int64 dataset indices
    pair_ids: list[str]
    lq: list[np.ndarray]  # B x (H/4, W/4, 3) uint8
    masks: torch.Tensor  # (B, h, w) float32 in [0, 1], pooled to the latent grid
    weights: torch.Tensor  # (B,) float32
    positive_text: list[str]
    negative_text: list[str]
    winner: torch.Tensor | None = None  # (B, 3, H, W) float32 in [-1, 1]
    loser: torch.Tensor | None = None  # (B, 3, H, W)
    image_size: tuple[int, int] = field(default=(0, 0))  # (H, W)


class PairCollator:
    """Collate ``(index, PairExample)`` items into a ``PairBatch``.

    Masks are pooled to the latent grid (H/f, W/f) with ``dspo_core.loss.pool_mask``. With
    ``instance_masks=False`` (image-level Diffusion-DPO) masks and weights are all ones.
    ``with_images=False`` skips converting the SR images (the latent cache has them).
    """

    def __init__(self, vae_scale_factor: int, instance_masks: bool = True, with_images: bool = True):
        self.vae_scale_factor = vae_scale_factor
        self.instance_masks = instance_masks
        self.with_images = with_images

    def __call__(self, items: Sequence[tuple[int, PairExample]]) -> PairBatch:
        pairs = [pair for _, pair in items]
        sizes = {pair.winner.shape for pair in pairs}
        if len(sizes) != 1:
            raise ValueError(f"pairs of one batch must share their image size, got {sorted(sizes)}")
        height, width = pairs[0].winner.shape[:2]
        f = self.vae_scale_factor
        if height % f or width % f:
            raise ValueError(f"image size {height}x{width} is not a multiple of the VAE factor {f}")
        latent_hw = (height // f, width // f)
        B = len(pairs)
        if self.instance_masks:
            pixel_masks = torch.from_numpy(np.stack([pair.mask.astype(np.float32) for pair in pairs]))  # (B, H, W)
            masks = pool_mask(pixel_masks, latent_hw)  # (B, h, w)
            weights = torch.tensor([pair.weight for pair in pairs], dtype=torch.float32)  # (B,)
        else:
            masks = torch.ones(B, *latent_hw)  # (B, h, w) one all-ones instance
            weights = torch.ones(B)  # (B,)
        return PairBatch(
            indices=torch.tensor([index for index, _ in items], dtype=torch.long),
            pair_ids=[pair.pair_id for pair in pairs],
            lq=[pair.lq for pair in pairs],
            masks=masks,
            weights=weights,
            positive_text=[pair.positive_text for pair in pairs],
            negative_text=[pair.negative_text for pair in pairs],
            winner=images_to_tensor([pair.winner for pair in pairs]) if self.with_images else None,
            loser=images_to_tensor([pair.loser for pair in pairs]) if self.with_images else None,
            image_size=(height, width),
        )


@dataclass(frozen=True)
class SizeBucket:
    """The training pairs of one image size, as ``ShardedPairOrder`` schedules them.

    Fields:
        height, width: the SR image size of every pair in the bucket.
        pairs: how many pairs have that size.
        steps_per_epoch: optimizer steps of this bucket per epoch, ``ceil(pairs / step_pairs)``.
        repeated_per_epoch: pairs trained a second time per epoch to fill its last step,
            ``steps_per_epoch * step_pairs - pairs`` (0 when ``pairs`` is a multiple of ``step_pairs``).
    """

    height: int
    width: int
    pairs: int
    steps_per_epoch: int
    repeated_per_epoch: int


class ShardedPairOrder:
    """Which dataset indices process r trains on at micro-step j (deterministic, no state).

    Pairs are bucketed by image size, as diffusers' DreamBooth LoRA scripts bucket by aspect
    ratio (``BucketBatchSampler``): one optimizer step (``step_pairs = batch_size x processes x
    accumulation`` pairs) draws from one bucket, so every micro-batch shares one size; no pair
    is resized. Epoch e is a permutation of all pairs seeded by (seed, e) (identity when not
    shuffled); each bucket takes its pairs in that order and is cut into steps of
    ``step_pairs``. Where diffusers keeps a short last batch, a bucket's short last step is
    filled with the bucket's first pairs of the epoch again (cycling when the bucket holds
    fewer than ``step_pairs``): processes must hold equal slices and an accumulation window
    averages equal micro-batches. So no pair is ever left out, and a pair repeated in a step
    counts once more in it (``SizeBucket.repeated_per_epoch``). The steps of all buckets run
    in the order of their first pair in the permutation, which spreads each bucket over the
    epoch. Inside a step, micro-batch a of process r is the slice starting at
    ``(a x processes + r) x batch_size``, so P processes see the same pairs as one process
    accumulating P micro-batches.

    With one size and ``step_pairs`` dividing the pair count this is the plain sharded order:
    global micro-batch j is pairs ``[j x B x P, (j + 1) x B x P)`` of the permutation.
    """

    def __init__(self, sizes: Sequence[tuple[int, int]], batch_size: int, num_processes: int, process_index: int,
                 seed: int, shuffle: bool, accumulation: int = 1):
        self.sizes = [tuple(int(side) for side in size) for size in sizes]
        self.num_pairs, self.batch_size, self.accumulation = len(self.sizes), batch_size, accumulation
        self.num_processes, self.process_index = num_processes, process_index
        self.seed, self.shuffle = seed, shuffle
        if self.num_pairs < batch_size * num_processes:
            raise ValueError(f"{self.num_pairs} pairs cannot fill one global micro-batch of batch_size {batch_size} "
                             f"x {num_processes} processes")
        self.step_pairs = batch_size * num_processes * accumulation
        counts = Counter(self.sizes)
        self.buckets = [
            SizeBucket(height=h, width=w, pairs=n, steps_per_epoch=-(-n // self.step_pairs),
                       repeated_per_epoch=-(-n // self.step_pairs) * self.step_pairs - n)
            for (h, w), n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        ]
        self.steps_per_epoch = sum(bucket.steps_per_epoch for bucket in self.buckets)
        self.batches_per_epoch = self.steps_per_epoch * accumulation  # micro-steps per process
        self._epoch_steps: tuple[int, list[list[int]]] | None = None

    def epoch_of(self, micro_step: int) -> int:
        return micro_step // self.batches_per_epoch

    def describe(self) -> str:
        """One line per bucket for the log: size, pairs, steps per epoch, repeats."""
        return "; ".join(
            f"{b.height}x{b.width}: {b.pairs} pairs, {b.steps_per_epoch} steps/epoch"
            + (f", {b.repeated_per_epoch} repeated to fill steps of {self.step_pairs}" if b.repeated_per_epoch else "")
            for b in self.buckets
        )

    def permutation(self, epoch: int) -> torch.Tensor:
        if self.shuffle:
            generator = torch.Generator().manual_seed(pair_seed(self.seed, SHUFFLE_STREAM, epoch))
            return torch.randperm(self.num_pairs, generator=generator)
        return torch.arange(self.num_pairs)

    def steps(self, epoch: int) -> list[list[int]]:
        """The ``step_pairs`` dataset indices of every optimizer step of `epoch`, in training order."""
        if self._epoch_steps is None or self._epoch_steps[0] != epoch:
            order = self.permutation(epoch).tolist()
            members: dict[tuple[int, int], list[int]] = {}
            for index in order:
                members.setdefault(self.sizes[index], []).append(index)
            position = {index: rank for rank, index in enumerate(order)}
            steps = []
            for bucket in members.values():
                for start in range(0, len(bucket), self.step_pairs):
                    step = bucket[start : start + self.step_pairs]
                    step += [bucket[k % len(bucket)] for k in range(self.step_pairs - len(step))]
                    steps.append(step)
            steps.sort(key=lambda step: position[step[0]])
            self._epoch_steps = (epoch, steps)
        return self._epoch_steps[1]

    def indices(self, micro_step: int) -> list[int]:
        epoch, position = divmod(micro_step, self.batches_per_epoch)
        step, window = divmod(position, self.accumulation)
        start = (window * self.num_processes + self.process_index) * self.batch_size
        return self.steps(epoch)[step][start : start + self.batch_size]


class MicroBatches:
    """Endless batch sampler for a DataLoader: the index lists of micro-steps start, start+1, ..."""

    def __init__(self, order: ShardedPairOrder, start: int):
        self.order, self.start = order, start

    def __iter__(self) -> Iterator[list[int]]:
        micro_step = self.start
        while True:
            yield self.order.indices(micro_step)
            micro_step += 1


def eval_shard(sizes: Sequence[tuple[int, ...]], num_processes: int, process_index: int,
               batch_size: int) -> tuple[list[list[int]], list[float]]:
    """Process r's share of the held-out pairs of image `sizes`: every P-th pair, padded with
    its first pair to ``ceil(n / P)`` so every process gathers as many, in batches of at most
    `batch_size` pairs of one size. Returns the batches (dataset indices) and, in batch order,
    1.0 per real pair and 0.0 per padding."""
    shard = list(range(process_index, len(sizes), num_processes))
    length = math.ceil(len(sizes) / num_processes)
    valid = [1.0] * len(shard) + [0.0] * (length - len(shard))
    shard += [shard[0] if shard else 0] * (length - len(shard))
    groups = batches([sizes[index] for index in shard], batch_size)
    return [[shard[position] for position in group] for group in groups], [valid[p] for g in groups for p in g]


def pair_noise(
    seeds: Sequence[int], latent_shape: Sequence[int], timestep_range: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One noise tensor and one timestep per pair, each from its own seeded CPU generator.

    Returns eps (B, C, h, w) float32 and t (B,) int64 in [low, high] (inclusive). A pair's
    draw depends on its seed only, not on the batch it is in or the device.
    """
    low, high = timestep_range
    noise, timesteps = [], []
    for seed in seeds:
        generator = torch.Generator().manual_seed(seed)
        timesteps.append(torch.randint(low, high + 1, (1,), generator=generator))
        noise.append(torch.randn(tuple(latent_shape), generator=generator))
    return torch.stack(noise), torch.cat(timesteps)
