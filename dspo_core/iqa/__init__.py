"""Per-instance image quality scores and the hybrid reward (DSPO pipeline step 5).

Typical use::

    scorer = IQAScorer(IQAConfig())            # default: weight-free pyiqa metrics, offline
    records = scorer.score_instances(candidates, hr, masks)
    # candidates (N, H, W, 3) uint8; hr (H, W, 3) uint8 or None (NR-only); masks: M x (H, W) bool
    rewards = reward(normalise(records))       # one RewardRecord per (instance, candidate)
    manifest_params = scorer.describe()        # metric names, fr/nr, lower_better, method, pyiqa version

Full-reference metrics score fidelity to the HR crop, no-reference metrics realism;
each is min-max normalised over the N candidates of an instance (1 = best) and the two
families are averaged 50/50 (DP2O-SR). Pixel-wise metrics are pooled inside the mask
(``maps``), the rest are scored on a filled bounding-box crop (``crop``). Learned
metrics run only from locally cached weights (``weights``): never a download.
"""

from .config import DEFAULT_METRICS, MIN_SIZES, WEIGHT_FREE_METRICS, IQAConfig
from .maps import MASKED_MAP_METRICS, masked_map_scores
from .reward import RewardRecord, normalise, reward
from .scoring import IQAScorer, MetricInfo, ScoreRecord, check_inputs, score_instances
from .weights import (
    MissingWeightsError,
    clear_metric_cache,
    load_metric,
    missing_weights,
    offline_guard,
    weights_present,
)

__all__ = [
    "DEFAULT_METRICS",
    "MASKED_MAP_METRICS",
    "MIN_SIZES",
    "WEIGHT_FREE_METRICS",
    "IQAConfig",
    "IQAScorer",
    "MetricInfo",
    "MissingWeightsError",
    "RewardRecord",
    "ScoreRecord",
    "check_inputs",
    "clear_metric_cache",
    "load_metric",
    "masked_map_scores",
    "missing_weights",
    "normalise",
    "offline_guard",
    "reward",
    "score_instances",
    "weights_present",
]
