"""Reliability diagrams and uncertainty histograms, written as PNG files.

Rendering uses matplotlib's Agg canvas on a standalone ``Figure``: no display
is needed, pyplot's global figure registry is never touched and the caller's
backend is left as it was.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Union

import numpy as np

from .metrics import _check_scores, reliability_bins

__all__ = ["plot_reliability_diagram", "plot_uncertainty_histograms", "plot_accuracy_coverage"]

PathLike = Union[str, Path]


def _new_figure(**kwargs):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120)
    return path


def plot_reliability_diagram(probs, labels, path: PathLike, title: str = "Reliability diagram",
                             n_bins: int = 10) -> Path:
    """Accuracy per confidence bin against the diagonal, with the confidence
    histogram underneath and the ECE in the title. Returns the PNG path."""
    bins = reliability_bins(probs, labels, n_bins)
    edges, width = bins.edges, 1.0 / n_bins
    centers = edges[:-1] + width / 2
    filled = bins.count > 0

    fig = _new_figure(figsize=(5, 6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(centers[filled], bins.accuracy[filled], width=width, edgecolor="black",
            color="tab:blue", alpha=0.8, label="accuracy")
    top.bar(centers[filled], bins.confidence[filled] - bins.accuracy[filled], bottom=bins.accuracy[filled],
            width=width, edgecolor="tab:red", color="none", hatch="//", label="gap to confidence")
    top.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=f"{title} (ECE = {bins.ece():.3f})")
    top.legend(loc="upper left", fontsize="small")

    bottom.bar(centers, bins.count, width=width, edgecolor="black", color="tab:gray")
    bottom.set(xlabel="confidence (max p̄)", ylabel="count")
    return _save(fig, path)


def plot_uncertainty_histograms(scores_by_set: Mapping[str, np.ndarray], path: PathLike, xlabel: str,
                                title: str = "", bins: int = 30, log_y: bool = False) -> Path:
    """Overlaid, density-normalised histograms of a score per data set (e.g.
    epistemic MI in-distribution vs OOD), on shared bin edges; ``log_y`` shows
    the tails of heavily skewed scores. Returns the PNG path."""
    if not scores_by_set:
        raise ValueError("scores_by_set is empty")
    data = {name: _check_scores(np.ravel(s), f"scores_by_set[{name!r}]") for name, s in scores_by_set.items()}
    lo = min(float(s.min()) for s in data.values())
    hi = max(float(s.max()) for s in data.values())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)

    fig = _new_figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    for name, s in data.items():
        ax.hist(s, bins=edges, density=True, histtype="stepfilled", alpha=0.35, label=f"{name} (n={s.size})")
        ax.hist(s, bins=edges, density=True, histtype="step", linewidth=1.2, color=ax.patches[-1].get_facecolor()[:3])
    ax.set(xlabel=xlabel, ylabel="density" + (" (log scale)" if log_y else ""), title=title)
    if log_y:
        ax.set_yscale("log")
    ax.legend()
    return _save(fig, path)


def plot_accuracy_coverage(curves: Mapping[str, tuple], path: PathLike, title: str = "Accuracy vs coverage") -> Path:
    """One line per ranking (name -> (coverage, accuracy) from
    :func:`edgeuq.uq.accuracy_coverage_curve`): accuracy on the most confident
    fraction of inputs kept. Returns the PNG path."""
    if not curves:
        raise ValueError("curves is empty")
    fig = _new_figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    lowest = 1.0
    for name, (coverage, acc) in curves.items():
        coverage, acc = np.asarray(coverage, dtype=float), np.asarray(acc, dtype=float)
        if coverage.shape != acc.shape or coverage.ndim != 1 or coverage.size == 0:
            raise ValueError(f"curve {name!r}: coverage and accuracy must be 1-D arrays of one length")
        ax.plot(coverage, acc, label=name)
        lowest = min(lowest, float(acc[len(acc) // 10:].min()) if acc.size > 10 else float(acc.min()))
    ax.set(xlabel="coverage (fraction of inputs kept)", ylabel="accuracy on kept inputs", title=title,
           xlim=(0, 1), ylim=(max(0.0, lowest - 0.02), 1.005))
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)
