"""Length and key-position buckets, Wilson intervals and the fixed-axis heatmaps of the study."""

from __future__ import annotations

import math

import numpy as np

from lmlab.runs.stats import Z95, wilson  # noqa: F401  (the study reads them from here)

LENGTH_BUCKETS = (("<=16", 1, 16), ("17-64", 17, 64), ("65-128", 65, 128), (">128", 129, 10**9))
POSITION_BUCKETS = ("front", "middle", "back")


def length_bucket(num_pairs: int) -> str:
    for name, lo, hi in LENGTH_BUCKETS:
        if lo <= num_pairs <= hi:
            return name
    raise ValueError(f"num_pairs {num_pairs} < 1")


def position_bucket(pos: float) -> str:
    """front: < 0.25 of the pairs, back: > 0.75, middle: the rest."""
    return "front" if pos < 0.25 else "back" if pos > 0.75 else "middle"


def bucket_counts(values: list, names: list[str] | tuple[str, ...], key) -> dict[str, int]:
    counts = dict.fromkeys(names, 0)
    for v in values:
        counts[key(v)] += 1
    return counts


def heat_bins(max_pairs: int, target: int = 50) -> int:
    return max(1, math.ceil(max_pairs / target))


def count_matrix(num_pairs, query_index, max_pairs: int) -> tuple[np.ndarray, tuple, int]:
    """Sample counts on axes fixed by `max_pairs` (the eval split's): x = number of pairs
    1..max_pairs, y = query index 0..max_pairs-1. Returns (matrix [y, x], extent, outside)."""
    b = heat_bins(max_pairs)
    x_edges = np.arange(0.5, max_pairs + 0.5 + b, b)
    y_edges = x_edges - 1.0
    n = np.asarray(num_pairs)
    q = np.asarray(query_index)
    m, _, _ = np.histogram2d(q, n, bins=[y_edges, x_edges])
    outside = int(len(n) - m.sum())
    return m, (x_edges[0], x_edges[-1], y_edges[0], y_edges[-1]), outside


def accuracy_matrix(num_pairs, positions, correct, max_pairs: int, min_pairs: int = 1, pos_bins=10):
    """Accuracy per (pairs bin, relative-position bin); NaN where no sample fell."""
    b = heat_bins(max_pairs, target=20)
    x_edges = np.arange(min_pairs - 0.5, max_pairs + 0.5 + b, b)
    y_edges = np.linspace(0.0, 1.0 + 1e-9, pos_bins + 1)
    n = np.asarray(num_pairs)
    p = np.asarray(positions)
    c = np.asarray(correct, dtype=float)
    total, _, _ = np.histogram2d(p, n, bins=[y_edges, x_edges])
    hits, _, _ = np.histogram2d(p, n, bins=[y_edges, x_edges], weights=c)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(total > 0, hits / np.maximum(total, 1), np.nan)
    return acc, (x_edges[0], x_edges[-1], 0.0, 1.0)
