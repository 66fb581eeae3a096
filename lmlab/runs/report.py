"""Report helpers every study reuses: markdown sections and tables, matplotlib PNG plots."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from lmlab.paths import atomic_write_text


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    return plt


def fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def md_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    head = "| " + " | ".join(str(h) for h in headers) + " |"
    sep = "|" + "|".join("---" for _ in headers) + "|"
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join([head, sep, *body])


class Report:
    """A markdown document built section by section; images are linked relative to it."""

    def __init__(self, title: str):
        self.parts = [f"# {title}\n"]

    def section(self, title: str, body: str = "", level: int = 2) -> Report:
        self.parts.append(
            f"{'#' * level} {title}\n\n{body}\n" if body else f"{'#' * level} {title}\n"
        )
        return self

    def text(self, body: str) -> Report:
        self.parts.append(body.rstrip() + "\n")
        return self

    def table(self, headers: Sequence[str], rows: Sequence[Sequence]) -> Report:
        self.parts.append(md_table(headers, rows) + "\n")
        return self

    def image(self, path: Path, base: Path, alt: str = "") -> Report:
        rel = Path(path).resolve().relative_to(Path(base).resolve())
        self.parts.append(f"![{alt or rel.stem}]({rel.as_posix()})\n")
        return self

    def render(self) -> str:
        return "\n".join(self.parts)

    def write(self, path: Path) -> Path:
        atomic_write_text(path, self.render())
        return path


def line_plot(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    path: Path,
    *,
    title: str = "",
    xlabel: str = "step",
    ylabel: str = "",
    logy: bool = False,
    bands: dict[str, tuple[Sequence[float], Sequence[float]]] | None = None,
    xticklabels: Sequence[str] | None = None,
    ylim: tuple[float, float] | None = None,
) -> Path:
    """One line per named series of (x, y); optional (low, high) bands, e.g. confidence intervals.

    With `xticklabels`, x values are category indices (0, 1, ...) named by those labels.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, (xs, ys) in series.items():
        ax.plot(list(xs), list(ys), marker="o" if len(xs) < 12 else None, label=name)
        if bands and name in bands:
            lo, hi = bands[name]
            ax.fill_between(list(xs), list(lo), list(hi), alpha=0.15)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if xticklabels is not None:
        ax.set_xticks(range(len(xticklabels)), list(xticklabels))
    if ylim is not None:
        ax.set_ylim(*ylim)
    if logy:
        ax.set_yscale("log")
    if len(series) > 1:
        ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def bar_plot(
    groups: Sequence[str],
    values: dict[str, Sequence[float]],
    path: Path,
    *,
    title: str = "",
    ylabel: str = "",
    errors: dict[str, Sequence[float]] | None = None,
) -> Path:
    """Grouped bars: one group per label in `groups`, one bar per named series."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    n = max(1, len(values))
    width = 0.8 / n
    for i, (name, ys) in enumerate(values.items()):
        xs = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
        err = errors.get(name) if errors else None
        ax.bar(xs, list(ys), width=width, label=name, yerr=err, capsize=3 if err else 0)
    ax.set_xticks(range(len(groups)), list(groups))
    ax.set(title=title, ylabel=ylabel)
    if len(values) > 1:
        ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def _imshow(ax, matrix, extent, vmin, vmax):
    import numpy as np

    return ax.imshow(
        np.asarray(matrix, dtype=float),
        origin="lower",
        aspect="auto",
        extent=extent,
        vmin=vmin,
        vmax=vmax,
        interpolation="nearest",
    )


def heatmap(
    matrix: Sequence[Sequence[float]],
    path: Path,
    *,
    xlabel: str = "",
    ylabel: str = "",
    title: str = "",
    extent: tuple[float, float, float, float] | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    cbar_label: str = "",
) -> Path:
    """A heatmap with row 0 at the bottom; `extent` = (x0, x1, y0, y1) in data units."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    im = _imshow(ax, matrix, extent, vmin, vmax)
    fig.colorbar(im, ax=ax, label=cbar_label)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return _save(fig, path)


def heatmap_grid(
    panels: dict[str, Sequence[Sequence[float]]],
    path: Path,
    *,
    extent: tuple[float, float, float, float] | None = None,
    xlabel: str = "",
    ylabel: str = "",
    vmin: float | None = None,
    vmax: float | None = None,
    cbar_label: str = "",
) -> Path:
    """One row of heatmaps sharing axes and one colour scale, so panels compare by eye."""
    plt = _plt()
    k = max(1, len(panels))
    fig, axes = plt.subplots(1, k, figsize=(3.4 * k + 1.0, 3.6), squeeze=False, sharey=True)
    im = None
    for ax, (name, m) in zip(axes[0], panels.items(), strict=False):
        im = _imshow(ax, m, extent, vmin, vmax)
        ax.set(title=name, xlabel=xlabel)
    axes[0][0].set_ylabel(ylabel)
    if im is not None:
        fig.colorbar(im, ax=list(axes[0]), label=cbar_label)
    return _save(fig, path, tight=False)


def line_grid(
    panels: dict[str, tuple[dict, dict]],
    path: Path,
    *,
    xlabel: str = "",
    ylabel: str = "",
    xticklabels: Sequence[str] | None = None,
    ylim: tuple[float, float] | None = None,
) -> Path:
    """One row of line panels sharing the y axis: {panel: (series, bands)} with series and bands
    as in `line_plot` (x values are category indices when `xticklabels` is given)."""
    plt = _plt()
    k = max(1, len(panels))
    fig, axes = plt.subplots(1, k, figsize=(3.6 * k + 0.8, 3.6), squeeze=False, sharey=True)
    for ax, (name, (series, bands)) in zip(axes[0], panels.items(), strict=False):
        for label, (xs, ys) in series.items():
            ax.plot(list(xs), list(ys), marker="o", label=label)
            if bands and label in bands:
                lo, hi = bands[label]
                ax.fill_between(list(xs), list(lo), list(hi), alpha=0.12)
        ax.set(title=name, xlabel=xlabel)
        if xticklabels is not None:
            ax.set_xticks(range(len(xticklabels)), list(xticklabels))
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(fontsize="small")
    return _save(fig, path)


def _save(fig, path: Path, tight: bool = True) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches=None if tight else "tight")
    _plt().close(fig)
    return path
