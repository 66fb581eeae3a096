"""Length and key-position buckets, Wilson intervals and the fixed-axis heatmaps of the study."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

LENGTH_BUCKETS = (("<=16", 1, 16), ("17-64", 17, 64), ("65-128", 65, 128), (">128", 129, 10**9))
POSITION_BUCKETS = ("front", "middle", "back")
Z95 = 1.959963984540054


def length_bucket(num_pairs: int) -> str:
    for name, lo, hi in LENGTH_BUCKETS:
        if lo <= num_pairs <= hi:
            return name
    raise ValueError(f"num_pairs {num_pairs} < 1")


def position_bucket(pos: float) -> str:
    """front: < 0.25 of the pairs, back: > 0.75, middle: the rest."""
    return "front" if pos < 0.25 else "back" if pos > 0.75 else "middle"


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion; (nan, nan) for n = 0."""
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


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


def heatmaps_side_by_side(
    panels: dict[str, np.ndarray],
    extent: tuple,
    path: Path,
    *,
    xlabel: str,
    ylabel: str,
    cbar_label: str,
    vmin: float | None = None,
    vmax: float | None = None,
) -> Path:
    """One row of heatmaps sharing axes and colour scale.

    TODO(core): move to lmlab/runs/report.py as `heatmap_grid(panels, path, ...)`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = max(1, len(panels))
    fig, axes = plt.subplots(1, k, figsize=(3.4 * k + 1.0, 3.6), squeeze=False, sharey=True)
    im = None
    for ax, (name, m) in zip(axes[0], panels.items(), strict=False):
        im = ax.imshow(
            np.asarray(m, dtype=float),
            origin="lower",
            aspect="auto",
            extent=extent,
            vmin=vmin,
            vmax=vmax,
            interpolation="nearest",
        )
        ax.set(title=name, xlabel=xlabel)
    axes[0][0].set_ylabel(ylabel)
    if im is not None:
        fig.colorbar(im, ax=list(axes[0]), label=cbar_label)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def category_lines(
    series: dict[str, tuple[list[int], list[float], list[float], list[float]]],
    labels: list[str],
    path: Path,
    *,
    title: str,
    xlabel: str,
    ylabel: str = "accuracy",
) -> Path:
    """One line per series over categorical x (bucket names), with (low, high) bands.

    TODO(core): move to lmlab/runs/report.py as an `xticklabels=` option of `line_plot`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, (xs, ys, lo, hi) in series.items():
        ax.plot(xs, ys, marker="o", label=name)
        ax.fill_between(xs, lo, hi, alpha=0.15)
    ax.set_xticks(range(len(labels)), labels)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel, ylim=(-0.02, 1.02))
    ax.legend()
    ax.grid(alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
