"""The images and pairs of the controlled experiment bench/instance_vs_image.py (its docstring,
"Construction", describes them): HR-like bases from skimage photos, the planted artifact in
instance A, the blurred loser outside A, and the image-level and instance-level pairs with the
texts the caption stage would give them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from dspo_core.train import PairExample

SIZE = 64
QUADRANT = 32  # side of instance A (top-left)
TRAIN_SOURCES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "brick", "grass")
HELDOUT_SOURCES = ("camera", "moon", "gravel", "hubble_deep_field", "colorwheel", "clock", "coins", "retina")
#: The hallucination description of instance A's loser (the negative text of A pairs), and the
#: description of B's loser (the negative text of B pairs).
ARTIFACT_TEXT = "diagonal stripe artifacts, invented texture"
BLUR_TEXT = "blurry, out of focus"
TEXT_MODES = ("none", "prompt", "prompt+negative")


def _source(name: str) -> np.ndarray:
    import skimage.data

    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3]).astype(np.uint8)


def make_bases(count: int, sources: tuple[str, ...], seed: int) -> list[np.ndarray]:
    """`count` HR-like 64 px images: random photo crops blended with smooth colour gradients."""
    rng = np.random.default_rng(seed)
    photos = [_source(name) for name in sources]
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / (SIZE - 1)
    bases = []
    for index in range(count):
        photo = photos[index % len(photos)]
        height, width = photo.shape[:2]
        side = int(rng.integers(96, min(height, width, 320) + 1))
        top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        crop = Image.fromarray(photo[top : top + side, left : left + side]).resize((SIZE, SIZE), Image.BICUBIC)
        crop = np.asarray(crop, np.float32)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        angle = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(angle) * xx + np.sin(angle) * yy  # (H, W) in [-1.4, 1.4]
        colours = rng.uniform(0, 255, (2, 3)).astype(np.float32)
        gradient = colours[0] + (ramp[..., None] - ramp.min()) / (np.ptp(ramp) + 1e-6) * (colours[1] - colours[0])
        bases.append(np.clip(0.7 * crop + 0.3 * gradient, 0, 255).astype(np.uint8))
    return bases


def _artifact(rng: np.random.Generator, amplitude: float, noise_sigma: float, period: int) -> np.ndarray:
    """(S, S, 3) float: diagonal stripes of `period` px (fixed phase) plus Gaussian pixel noise."""
    yy, xx = np.mgrid[0:QUADRANT, 0:QUADRANT].astype(np.float32)
    stripes = amplitude * np.sign(np.sin(2 * np.pi * (xx + yy) / period + np.pi / 4))
    noise = rng.normal(0, noise_sigma, (QUADRANT, QUADRANT, 3)) if noise_sigma > 0 else 0.0
    return np.broadcast_to(stripes[..., None] + noise, (QUADRANT, QUADRANT, 3))


@dataclass
class Item:
    """One image of the experiment: LQ, the clean image, the image-level winner/loser and the two instance masks."""

    lq: np.ndarray  # (16, 16, 3) uint8
    clean: np.ndarray  # (64, 64, 3) uint8: sharp everywhere, no artifact
    winner: np.ndarray  # (64, 64, 3) uint8: sharp, artifact in A
    loser: np.ndarray  # (64, 64, 3) uint8: blurred, clean in A
    mask_a: np.ndarray  # (64, 64) bool
    mask_b: np.ndarray  # (64, 64) bool
    caption: str = ""  # "a photo of <source photo>": the pairs' positive_text


def make_items(
    count: int,
    sources: tuple[str, ...],
    seed: int,
    artifact: float = 80.0,
    period: int = 8,
    blur: float = 1.5,
    noise: float = 0.0,
) -> list[Item]:
    rng = np.random.default_rng(seed + 1_000_003)
    mask_a = np.zeros((SIZE, SIZE), bool)
    mask_a[:QUADRANT, :QUADRANT] = True
    items = []
    for index, base in enumerate(make_bases(count, sources, seed)):
        clean = base.astype(np.float32)
        winner = clean.copy()
        winner[:QUADRANT, :QUADRANT] += _artifact(rng, artifact, noise, period)
        loser = gaussian_filter(clean, sigma=(blur, blur, 0))
        loser[:QUADRANT, :QUADRANT] = clean[:QUADRANT, :QUADRANT]
        items.append(
            Item(
                lq=np.asarray(Image.fromarray(base).resize((SIZE // 4, SIZE // 4), Image.BICUBIC)),
                clean=base,
                winner=np.clip(winner, 0, 255).round().astype(np.uint8),
                loser=np.clip(loser, 0, 255).round().astype(np.uint8),
                mask_a=mask_a,
                mask_b=~mask_a,
                caption=f"a photo of {sources[index % len(sources)].replace('_', ' ')}",
            )
        )
    return items


def image_pairs(items: list[Item]) -> list[PairExample]:
    """Image-level labels: winner > loser, one pair per image (the mask is ignored under instance_masks=False)."""
    ones = np.ones((SIZE, SIZE), bool)
    return [PairExample(lq=it.lq, winner=it.winner, loser=it.loser, mask=ones, pair_id=f"img{i}") for i, it in enumerate(items)]


def instance_pairs(items: list[Item]) -> list[PairExample]:
    """Instance-level labels: on A the (artifact-free) loser wins, on B the (sharp) winner wins.
    Texts as the caption stage writes them: the caption as positive, the loser's flaw as negative."""
    pairs = []
    for i, it in enumerate(items):
        w_a = float(it.mask_a.mean())
        pairs.append(PairExample(lq=it.lq, winner=it.loser, loser=it.winner, mask=it.mask_a, weight=w_a, pair_id=f"A{i}",
                                 positive_text=it.caption, negative_text=ARTIFACT_TEXT))
        pairs.append(PairExample(lq=it.lq, winner=it.winner, loser=it.loser, mask=it.mask_b, weight=1 - w_a,
                                 pair_id=f"B{i}", positive_text=it.caption, negative_text=BLUR_TEXT))
    return pairs
