"""Per-instance image quality scores and the hybrid reward (DSPO pipeline step 5).

Typical use::

    scorer = IQAScorer(IQAConfig())            # default: weight-free pyiqa metrics, offline
    records = scorer.score_instances(candidates, hr, masks)
    # candidates (N, H, W, 3) uint8; hr (H, W, 3) uint8 or None (NR-only); masks: M x (H, W) bool
    scales = fit_scales(records)               # per metric over the whole dataset (shards: merge_moments)
    rewards = reward(normalise(records, scales))  # one RewardRecord per (instance, candidate)
    manifest_params = scorer.describe()        # metric names, fr/nr, lower_better, method, pyiqa version

Full-reference metrics score fidelity to the HR crop, no-reference metrics realism;
each becomes a z-score over the whole dataset, mapped into (0, 1) by a logistic (``rewards``),
and the two families are averaged 50/50 (DP2O-SR). Pixel-wise metrics are pooled inside the mask
(``maps``), the rest are scored on a filled bounding-box crop (``crop``). Learned
metrics run only from locally cached weights (``weights``): never a download.
"""

from dspo_core.lazy import lazy_exports

# Public name -> submodule, imported on first use (dspo_core.lazy).
_EXPORTS = {
    "DEFAULT_METRICS": ".config",
    "MIN_SIZES": ".config",
    "WEIGHT_FREE_METRICS": ".config",
    "IQAConfig": ".config",
    "MASKED_MAP_METRICS": ".maps",
    "masked_map_scores": ".maps",
    "NORMALISATION": ".rewards",
    "NORMALISATION_RULE": ".rewards",
    "MetricScale": ".rewards",
    "Moments": ".rewards",
    "RewardRecord": ".rewards",
    "fit_scales": ".rewards",
    "merge_moments": ".rewards",
    "metric_moments": ".rewards",
    "normalise": ".rewards",
    "reward": ".rewards",
    "IQAScorer": ".scoring",
    "MetricInfo": ".scoring",
    "ScoreRecord": ".scoring",
    "check_inputs": ".scoring",
    "score_instances": ".scoring",
    "MissingWeightsError": ".weights",
    "clear_metric_cache": ".weights",
    "load_metric": ".weights",
    "missing_weights": ".weights",
    "offline_guard": ".weights",
    "weights_present": ".weights",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
