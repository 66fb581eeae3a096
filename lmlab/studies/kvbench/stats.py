"""Seeded bootstrap intervals for a mean and for paired differences."""

from __future__ import annotations

import zlib

import numpy as np


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
        return float("nan"), float("nan")
    if x.size == 1 or np.all(x == x[0]):
        return float(x[0]), float(x[0])
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    means = x[idx].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def percentile(values, q: float) -> float:
    x = np.asarray([v for v in values if v is not None], dtype=float)
    return float(np.percentile(x, q)) if x.size else float("nan")
