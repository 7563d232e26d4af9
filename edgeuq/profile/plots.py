"""PNG plots of a :class:`~edgeuq.profile.report.LatencyReport`: per-stage bars and latency vs S.

Every plot's title names where the times were taken (host / remote / emulated)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Sequence

from .stage_names import ordered_stages as _ordered

__all__ = ["write_plots", "plot_stages", "plot_vs_samples", "plot_targets"]

STAGES_PNG = "stages.png"
SAMPLES_PNG = "latency_vs_samples.png"


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, ax: Any, path: Path, legend_size: int, title: str = "") -> Path:
    """Title (cut to 90 characters), legend, layout; the PNG written at 110 dpi and the figure closed."""
    if title:
        ax.set_title(title[:90], fontsize=9)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _stage_names(report: Any) -> List[str]:
    names: List[str] = []
    for per in report.stages.values():
        names += [n for n in _ordered(per) if n not in names and n != "sum of stages"]
    return names


def plot_stages(report: Any, path: Path) -> Path:
    """Grouped bars: median per stage for each S, whiskers to p90."""
    plt = _plt()
    names = _stage_names(report)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(names) + 2), 3.6))
    width = 0.8 / max(1, len(report.samples))
    for i, s in enumerate(report.samples):
        per = report.stages.get(str(s), {})
        xs = [j + i * width for j in range(len(names))]
        med = [per[n]["median_ms"] if n in per else 0.0 for n in names]
        err = [per[n]["p90_ms"] - per[n]["median_ms"] if n in per else 0.0 for n in names]
        ax.bar(xs, med, width, yerr=[[0.0] * len(err), err], capsize=2, label=f"S={s}")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names, rotation=20, ha="right")
    ax.set_ylabel("ms (median, whisker p90)")
    return _save(plt, fig, ax, path, legend_size=8, title=f"per-stage latency, {report.measured_where}")


def plot_vs_samples(report: Any, path: Path) -> Path:
    """Median of each stage and of predict against S."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    ss = list(report.samples)
    series = [(n, [report.stages.get(str(s), {}).get(n) for s in ss]) for n in _stage_names(report)]
    if report.end_to_end:
        series.append(("end-to-end (predict)", [report.end_to_end.get(str(s)) for s in ss]))
    for name, stats in series:
        pts = [(s, st) for s, st in zip(ss, stats) if st is not None]
        if not pts:
            continue
        ax.plot([s for s, _ in pts], [st["median_ms"] for _, st in pts], marker="o", label=name)
    ax.set_xlabel("S (stochastic head samples)")
    ax.set_ylabel("ms (median; p90/p99 in the report)")
    if len(ss) > 1 and max(ss) / min(ss) >= 8:
        ax.set_xscale("log", base=2)
    ax.set_xticks(ss, [str(s) for s in ss])
    return _save(plt, fig, ax, path, legend_size=7, title=f"latency vs S, {report.measured_where}")


def plot_targets(reports: Sequence[Any], path: Path, samples: int) -> Path:
    """Targets side by side: one bar group per report (label: board or location), stages stacked, at ``samples``."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(reports) + 2), 3.6))
    names: List[str] = []
    for r in reports:
        names += [n for n in _stage_names(r) if n not in names]
    labels = [f"{r.board or '?'}\n{r.location}" for r in reports]
    bottom = [0.0] * len(reports)
    for n in names:
        vals = [r.stages.get(str(samples), {}).get(n, {}).get("median_ms", 0.0) for r in reports]
        ax.bar(labels, vals, bottom=bottom, label=n)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_ylabel(f"ms (median), S={samples}")
    return _save(plt, fig, ax, path, legend_size=7)


def write_plots(report: Any, directory: Path) -> List[str]:
    """Write the report's plots into ``directory``; their file names (relative)."""
    directory = Path(directory)
    plot_stages(report, directory / STAGES_PNG)
    plot_vs_samples(report, directory / SAMPLES_PNG)
    return [STAGES_PNG, SAMPLES_PNG]
