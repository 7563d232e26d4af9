"""Per-layer sensitivity plot of a FisherReport (PNG, matplotlib Agg; no display)."""
from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np

from .report import FisherReport

__all__ = ["plot_sensitivity", "sensitivity_rows", "SENSITIVITY_HEADERS"]

SENSITIVITY_HEADERS = ("layer", "kind", "params", "Tr(F_w)", "Tr(F_w)/param", "Tr(F_a)", "act range", "share %")


def sensitivity_rows(report: FisherReport) -> list:
    """Table rows: one per layer, with its share of the summed weight trace."""
    total = sum(lf.weight_trace for lf in report.layers) or 1.0
    return [
        [lf.name, lf.kind, lf.weight_numel, lf.weight_trace, lf.weight_trace / lf.weight_numel,
         lf.activation.trace, f"[{lf.activation.min:.3g}, {lf.activation.max:.3g}]",
         f"{100.0 * lf.weight_trace / total:.1f}"]
        for lf in report.layers
    ]


def plot_sensitivity(report: FisherReport, path: Union[str, Path], title: str = "") -> Path:
    """Two bar panels on a log scale: Tr(F) of each layer's weight and of its input activation."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [lf.name for lf in report.layers]
    w = np.array([max(lf.weight_trace, 1e-30) for lf in report.layers])
    a = np.array([max(lf.activation.trace, 1e-30) for lf in report.layers])
    fig = Figure(figsize=(max(6.0, 0.45 * len(names) + 2), 6.0))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    pos = np.arange(len(names))
    ax1.bar(pos, w, color="tab:blue")
    ax1.set_yscale("log")
    ax1.set_ylabel("Tr(F) weight")
    ax2.bar(pos, a, color="tab:orange")
    ax2.set_yscale("log")
    ax2.set_ylabel("Tr(F) input activation")
    ax2.set_xticks(pos)
    ax2.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    ax1.set_title(title or f"Fisher sensitivity per layer ({report.labels} Fisher, {report.n_samples} inputs)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=110)
    return path
