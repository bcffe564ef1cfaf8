"""VAE latents of the pairs: encoded per micro-batch, or once per run into a ``LatentCache``.

The encoders are frozen, so a pair's latents never change during training: the cache
encodes each pair's LQ conditioning, winner and loser once (under no_grad, in chunks of
``encode_batch_size`` in dataset order) and serves them every epoch. It lives on the CPU
(3 x C x h x w per pair: ~200 KB for a 512 px SD pair, ~2 GB for 10k pairs) and moves
each micro-batch to the device. Every process fills its own cache with all pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..sr.diffusion import DiffusionSRBackbone, batches, images_to_tensor
from .data import ENCODE_STREAM, PairDataset, pair_seed


@dataclass
class PairLatents:
    """Latents of B pairs on the backbone's device and dtype."""

    lq: torch.Tensor  # (B, C_lq, h_lq, w_lq) what predict() takes as lq_latents
    winner: torch.Tensor  # (B, C, h, w) scaled VAE latent of the winner
    loser: torch.Tensor  # (B, C, h, w)


@torch.no_grad()
def encode_pairs(
    backbone: DiffusionSRBackbone,
    lq: Sequence[np.ndarray],
    winner: torch.Tensor,
    loser: torch.Tensor,
    generator: torch.Generator | None = None,
) -> PairLatents:
    """Encode B pairs: ``encode_lq`` (`generator` seeds any LQ noise augmentation) and ``encode`` of
    winner and loser ((B, 3, H, W) in [-1, 1]) in one VAE call of 2B images."""
    both = backbone.encode(torch.cat([winner, loser]))  # (2B, C, h, w)
    z_w, z_l = both.chunk(2)
    return PairLatents(lq=backbone.encode_lq(list(lq), generator=generator), winner=z_w, loser=z_l)


class LatentCache:
    """Every pair of `dataset` encoded once; ``get(indices)`` returns them on the backbone's device."""

    def __init__(self, backbone: DiffusionSRBackbone, dataset: PairDataset, encode_batch_size: int, seed: int):
        self.device = backbone.device
        keys = [pair.winner.shape for pair in dataset.pairs]  # a chunk must share its image size
        lq, winner, loser = {}, {}, {}
        for chunk in batches(keys, encode_batch_size):
            pairs = [dataset.pairs[i] for i in chunk]
            generator = torch.Generator().manual_seed(pair_seed(seed, ENCODE_STREAM, chunk[0]))
            latents = encode_pairs(
                backbone,
                [pair.lq for pair in pairs],
                images_to_tensor([pair.winner for pair in pairs]),
                images_to_tensor([pair.loser for pair in pairs]),
                generator=generator,
            )
            for position, index in enumerate(chunk):
                lq[index] = latents.lq[position].cpu()
                winner[index] = latents.winner[position].cpu()
                loser[index] = latents.loser[position].cpu()
        self._lq, self._winner, self._loser = lq, winner, loser

    def __len__(self) -> int:
        return len(self._winner)

    def get(self, indices: Sequence[int]) -> PairLatents:
        def stack(store: dict[int, torch.Tensor]) -> torch.Tensor:
            return torch.stack([store[int(i)] for i in indices]).to(self.device)

        return PairLatents(lq=stack(self._lq), winner=stack(self._winner), loser=stack(self._loser))
