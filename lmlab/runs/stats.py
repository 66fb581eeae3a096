"""Confidence intervals every study reports: Wilson for proportions, seeded bootstrap for means.

One copy in the core, so that "95% CI" means the same computation in every report.
"""

from __future__ import annotations

import math
import zlib

import numpy as np

Z95 = 1.959963984540054


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion; (nan, nan) for n = 0."""
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def rng_for(seed: int, *key) -> np.random.Generator:
    """A generator per (seed, cell): the same cell gets the same resamples in every run."""
    tag = zlib.crc32(repr(key).encode())
    return np.random.default_rng(np.random.SeedSequence([seed, tag]))


def bootstrap_ci(
    values, n_boot: int, rng: np.random.Generator, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of the mean over `n_boot` resamples (both ends nan when empty)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan
    if x.size == 1 or np.all(x == x[0]):
        return float(x[0]), float(x[0])
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    means = x[idx].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def bootstrap_mean_ci(
    correct: np.ndarray, reps: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """correct [seeds, items]: the mean over seeds and items, and a 95% interval from resampling
    the items (each resample averaged over the seeds), so seeds are not counted as new data."""
    per_item = np.asarray(correct, dtype=float).mean(axis=0)
    lo, hi = bootstrap_ci(per_item, reps, np.random.default_rng(seed))
    return float(per_item.mean()), lo, hi


def percentile(values, q: float) -> float:
    x = np.asarray([v for v in values if v is not None], dtype=float)
    return float(np.percentile(x, q)) if x.size else math.nan
