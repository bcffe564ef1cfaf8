"""Per-method statistics over images: mean, percentile-bootstrap CI, paired win-rate vs base.

    indices = bootstrap_indices(n_images, resamples=1000, seed=0)   # shared by every method and metric
    cell = image_metric_cell(values, base_values, lower_better, indices, confidence=0.95)

The resamples draw images with replacement; the same draws serve every method and metric, so
the intervals of two methods come from the same image sets. Win-rate: the share of images on
which the method's value is better than base's in the metric's direction; a tie (equal values)
counts half, and the counts of wins, ties and losses are kept beside it.
"""
from __future__ import annotations

import numpy as np


def bootstrap_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) image indices drawn with replacement by numpy's default_rng(seed)."""
    if n < 1:
        raise ValueError("bootstrap needs at least one image")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def bootstrap_ci(values: np.ndarray, indices: np.ndarray, confidence: float) -> tuple[float, float]:
    """(low, high): percentiles (1 - confidence) / 2 and (1 + confidence) / 2 of the resampled means."""
    means = np.asarray(values, dtype=float)[indices].mean(axis=1)
    low, high = np.percentile(means, [50 * (1 - confidence), 50 * (1 + confidence)])
    return float(low), float(high)


def paired_outcomes(values: np.ndarray, base: np.ndarray, lower_better: bool) -> tuple[int, int, int]:
    """(wins, ties, losses) of `values` against `base`, image by image (same order)."""
    values, base = np.asarray(values, dtype=float), np.asarray(base, dtype=float)
    if values.shape != base.shape:
        raise ValueError(f"paired values differ in length: {values.shape} vs {base.shape}")
    gain = base - values if lower_better else values - base
    return int((gain > 0).sum()), int((gain == 0).sum()), int((gain < 0).sum())


def image_metric_cell(values, base, lower_better: bool, indices: np.ndarray, confidence: float,
                      is_base: bool) -> dict:
    """One (method, image-level metric) cell: {level: "image", mean, ci_low, ci_high, n, wins, ties,
    losses, win_rate}; the base method's own cell has None for the last four."""
    values = np.asarray(values, dtype=float)
    low, high = bootstrap_ci(values, indices, confidence)
    cell = {"level": "image", "mean": float(values.mean()), "ci_low": low, "ci_high": high, "n": int(values.size),
            "wins": None, "ties": None, "losses": None, "win_rate": None}
    if not is_base:
        wins, ties, losses = paired_outcomes(values, base, lower_better)
        cell.update(wins=wins, ties=ties, losses=losses, win_rate=(wins + 0.5 * ties) / values.size)
    return cell


def set_metric_cell(value: float, n: int) -> dict:
    """One (method, set-level metric) cell (FID): the value, no CI, no win-rate."""
    return {"level": "set", "mean": float(value), "ci_low": None, "ci_high": None, "n": n,
            "wins": None, "ties": None, "losses": None, "win_rate": None}


def method_table(image_values: dict[str, dict[str, list[float]]], set_values: dict[str, dict[str, float]],
                 metrics: list[tuple[str, bool]], base: str, images: int, resamples: int, seed: int,
                 confidence: float) -> dict[str, dict[str, dict]]:
    """{method: {metric: cell}} for `metrics` ((key, lower_better), report order), methods in the
    order of `image_values`.

    image_values: {method: {metric: per-image values, the same `images` images in the same order
    for every method}}; set_values: {method: {metric: value}}; base: the method the win-rates
    compare with.
    """
    indices = bootstrap_indices(images, resamples, seed)
    table: dict[str, dict[str, dict]] = {}
    for method in image_values:
        table[method] = {}
        for key, lower_better in metrics:
            if key in set_values.get(method, {}):
                table[method][key] = set_metric_cell(set_values[method][key], images)
            else:
                table[method][key] = image_metric_cell(image_values[method][key], image_values[base][key],
                                                       lower_better, indices, confidence, method == base)
    return table
