"""Score a bundle through the device runtime: metrics and uncertainty per dataset."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Mapping, Optional

import numpy as np
from tqdm.auto import tqdm

from edgeuq_runtime import UncertaintyRuntime, UncertaintyResult

from .data.sources import DataOptions
from .uq import auroc, classification_metrics

__all__ = [
    "SetEvaluation", "evaluate_sets", "run_runtime",
    "EvalInputs", "load_eval_inputs", "set_metrics", "ood_metrics", "BundleEvaluation", "evaluate_bundle",
    "write_evaluation_plots", "SELECTIVE_COVERAGE", "EVAL_SPLITS",
]


@dataclass(frozen=True)
class SetEvaluation:
    """Runtime outputs for one dataset; metrics only where labels are known."""

    name: str
    result: UncertaintyResult
    labels: np.ndarray
    metrics: Mapping[str, float] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(len(self.labels))

    @property
    def flagged(self) -> int:
        """Rows the runtime flagged as unusable input (``result.input_flags``: flat, clipped)."""
        return int(np.sum(~self.result.diagnosed))

    def summary(self) -> Dict[str, float]:
        r = self.result
        return {
            "n": self.n,
            **dict(self.metrics),
            "mean_total": float(r.total.mean()),
            "mean_aleatoric": float(r.aleatoric.mean()),
            "mean_epistemic": float(r.epistemic.mean()),
        }


def run_runtime(
    rt: UncertaintyRuntime, x: np.ndarray, samples: int, seed: int, progress: bool = False, desc: str = ""
) -> UncertaintyResult:
    """``rt.predict`` over the whole set, in one call: the runtime bounds memory itself (at most
    ``max_batch`` rows per graph run) and its result never depends on ``max_batch``, so the
    result is the runtime's own, ``input_flags`` and ``bundle_digest`` included (stitching
    chunks by hand, reseeded per chunk, made results depend on the chunk size)."""
    with tqdm(total=len(x), desc=desc, disable=not progress, leave=False) as bar:
        result = rt.predict(x, samples=samples, seed=seed)
        bar.update(len(x))
    return result


def _runtime(bundle_dir: Path, seed: int, max_batch: Optional[int]) -> UncertaintyRuntime:
    if max_batch is None:
        return UncertaintyRuntime(bundle_dir, seed=seed)
    return UncertaintyRuntime(bundle_dir, seed=seed, max_batch=max_batch)


def evaluate_sets(
    bundle_dir: Path,
    sets: Mapping[str, "object"],
    samples: Optional[int] = None,
    seed: int = 0,
    reference: Optional[str] = None,
    progress: bool = True,
    max_batch: Optional[int] = None,
) -> Dict[str, SetEvaluation]:
    """Evaluate WindowDataset-like objects (``.x``, ``.y``) through the runtime.

    Labelled sets (all labels >= 0) get accuracy/NLL/Brier/ECE. With
    ``reference`` naming the in-distribution set, every other set also gets the
    OOD AUROC of epistemic (MI) and total uncertainty against it. ``max_batch`` (the runtime's
    rows per graph run; its default when None) bounds memory and never changes a result.
    """
    rt = _runtime(bundle_dir, seed, max_batch)
    s = samples or rt.default_samples
    out: Dict[str, SetEvaluation] = {}
    for name, ds in sets.items():
        res = run_runtime(rt, ds.x, s, seed, progress=progress, desc=f"runtime: {name}")
        labels = np.asarray(ds.y)
        ok_res, ok_labels = diagnosed_only(res, labels)
        metrics = (classification_metrics(ok_res.probs, ok_labels).to_dict()
                   if len(ok_labels) and ok_labels.min() >= 0 else {})
        out[name] = SetEvaluation(name, res, labels, metrics)
    if reference is not None:
        ref = diagnosed_only(out[reference].result)[0]
        for name, ev in out.items():
            if name == reference:
                continue
            other = diagnosed_only(ev.result)[0]
            ood = {
                "auroc_epistemic": auroc(ref.epistemic, other.epistemic),
                "auroc_total": auroc(ref.total, other.total),
            }
            out[name] = SetEvaluation(name, ev.result, ev.labels, {**ev.metrics, **ood})
    return out


# ----------------------------------------------------------------------------------------
# `edgeuq evaluate`: a bundle on any dataset in the generic formats, optionally vs an OOD set
# ----------------------------------------------------------------------------------------

#: Coverage at which selective accuracy is reported.
SELECTIVE_COVERAGE = 0.9


@dataclass(frozen=True, eq=False)
class EvalInputs:
    """Model-ready inputs: float32 windows or int64 token ids, labels (-1 = unknown)."""

    name: str
    x: np.ndarray
    y: np.ndarray
    description: str = ""

    @property
    def labelled(self) -> bool:
        return bool(len(self.y)) and bool(np.all(self.y >= 0))


EVAL_SPLITS = ("auto", "test", "all", "train")


def load_eval_inputs(path: Path, rt: UncertaintyRuntime, fs: Optional[float] = None, key: Optional[str] = None,
                     hop: Optional[int] = None, allow_unknown: bool = False, split: str = "auto",
                     options: Optional[DataOptions] = None) -> EvalInputs:
    """Read ``path`` for the bundle loaded in ``rt``.

    Signal bundles: a CWRU folder (with ``MANIFEST.csv``), or a file / folder of
    ``.npz`` (``signal``, ``fs``, optional ``label``), ``.npy``/``.csv`` (give
    ``fs``) or ``.mat`` (give ``key``); resampled to the bundle's rate and cut
    into windows of its length every ``hop`` samples (default: non-overlapping).
    ``split``: ``"test"`` keeps only the held-out segment of each record (the last
    15 % in time, exactly the test split ``edgeuq train`` makes of the same data),
    ``"all"`` every window; ``"auto"`` is ``"test"`` for a CWRU folder (a model is
    usually trained on it) and ``"all"`` for other files. The description says which.
    Token bundles: a TSV (with a header naming ``sentence``/``text`` and ``label``, or
    without one: text in column 0, label in column 1), tokenized with the bundle's
    tokenizer. Labels are placed among the bundle's class names forgivingly (case
    and separators; ``options.label_map`` for other spellings); the rest raise
    :class:`~edgeuq.data.labels.UnknownLabelsError` unless ``allow_unknown`` (-1).
    """
    from .data import read_text_tsv, split_in_domain, window_records
    from .data.sources import load_records, relabel_records

    if split not in EVAL_SPLITS:
        raise ValueError(f"split must be one of {EVAL_SPLITS}, got {split!r}")
    opts = options if options is not None else DataOptions(fs=fs, key=key)
    path = Path(path)
    m = rt.manifest
    name = path.name if path.is_dir() else f"{path.parent.name}/{path.name}"
    if m.input.is_tokens:
        ds = read_text_tsv(path, m.class_names, text_column=opts.text_column, label_column=opts.label_column,
                           allow_unknown=allow_unknown, label_map=opts.label_map)
        return EvalInputs(name, rt.tokenize(ds.texts), ds.y, f"{len(ds)} texts from {path}")
    rate, length = m.input.sample_rate_hz, m.input.length
    records, src = load_records(path, opts, rate)
    records = relabel_records(records, m.class_names, opts.label_map, allow_unknown=allow_unknown, where=str(path))
    use = ("test" if src.held_out_split else "all") if split == "auto" else split
    step = hop or length
    if use == "test":
        ds = split_in_domain(records, length, step, class_names=m.class_names, allow_unknown=allow_unknown).test
        what = (f"held-out test split (last 15 % in time of each record, as `edgeuq train` splits it; "
                f"--split all scores every window)")
    elif use == "train":
        ds = split_in_domain(records, length, step, class_names=m.class_names, allow_unknown=allow_unknown).train
        what = "training split (first 70 % in time of each record, as `edgeuq train` splits it)"
    else:
        ds = window_records(records, length, step, class_names=m.class_names, allow_unknown=allow_unknown)
        what = "all windows" + (" (including any a model trained on this folder saw; --split test for the "
                                "held-out split)" if src.held_out_split else "")
    if len(ds) == 0:
        raise ValueError(f"{path}: no window of {length} samples at {rate:g} Hz fits in the signals")
    return EvalInputs(name, ds.x, ds.y,
                      f"{len(ds)} windows of {length} from {len(records)} record(s) in {path}: {what}")


def diagnosed_only(result: UncertaintyResult, *per_row: Optional[np.ndarray]) -> tuple:
    """``result`` and each per-row array restricted to the rows the runtime diagnosed: a flagged
    input (flat, clipped, NaN window) carries no prediction (-1) and NaN numbers, so metrics are
    computed on the other rows and the flagged ones are counted apart (``flagged_inputs``)."""
    ok = np.asarray(result.diagnosed)
    if ok.all():
        return (result, *per_row)
    return (result.select(ok), *(None if a is None else np.asarray(a)[ok] for a in per_row))


def set_metrics(result: UncertaintyResult, labels: np.ndarray) -> Dict[str, float]:
    """Uncertainty means, plus (all labels known) accuracy, NLL, Brier, ECE, AURC and
    accuracy at 90 % coverage (ranked by max p̄), over the diagnosed rows; ``flagged_inputs``
    counts the rest."""
    flagged = int(np.sum(~np.asarray(result.diagnosed)))
    result, labels = diagnosed_only(result, np.asarray(labels))
    out: Dict[str, float] = {
        "flagged_inputs": flagged,
        "mean_total": float(result.total.mean()),
        "mean_aleatoric": float(result.aleatoric.mean()),
        "mean_epistemic": float(result.epistemic.mean()),
    }
    labels = np.asarray(labels)
    if len(labels) and labels.min() >= 0:
        from .uq import aurc, selective_accuracy

        out.update(classification_metrics(result.probs, labels).to_dict())
        correct = result.prediction == labels
        out["aurc"] = aurc(result.confidence, correct)
        out["acc_at_90"] = selective_accuracy(result.probs, labels, SELECTIVE_COVERAGE)
    return out


def ood_metrics(reference: UncertaintyResult, ood: UncertaintyResult, extra_in: Optional[Mapping] = None,
                extra_out: Optional[Mapping] = None) -> Dict[str, float]:
    """AUROC / AUPR / FPR at 95 % TPR of mutual information and total entropy (OOD positive), and
    of any ``extra`` scores given for both sets (a calibrated bundle's ``density`` and ``combined``)."""
    from .uq import aupr, fpr_at_95_tpr

    keys = [k for k in (extra_in or {}) if k in (extra_out or {})]
    reference, *ins = diagnosed_only(reference, *(extra_in[k] for k in keys))
    ood, *outs = diagnosed_only(ood, *(extra_out[k] for k in keys))
    extra_in, extra_out = dict(zip(keys, ins)), dict(zip(keys, outs))
    out: Dict[str, float] = {}
    extra = [(k, k) for k in keys]
    for tag, attr in (("mi", "epistemic"), ("total", "total"), *extra):
        s_in, s_out = ((extra_in[attr], extra_out[attr]) if attr in (extra_in or {}) else
                       (getattr(reference, attr), getattr(ood, attr)))
        out[f"auroc_{tag}"] = auroc(s_in, s_out)
        out[f"aupr_{tag}"] = aupr(s_in, s_out)
        out[f"fpr95_{tag}"] = fpr_at_95_tpr(s_in, s_out)
    return out


@dataclass(frozen=True)
class BundleEvaluation:
    """Result of :func:`evaluate_bundle`: the data set, optionally an OOD set, and OOD metrics."""

    bundle: str
    model: str
    samples: int
    data: SetEvaluation
    ood: Optional[SetEvaluation] = None
    ood_metrics: Mapping[str, float] = field(default_factory=dict)
    descriptions: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        sets = {"data": {"name": self.data.name, "n": self.data.n, "flagged_inputs": self.data.flagged,
                         **dict(self.data.metrics)}}
        if self.ood is not None:
            sets["ood"] = {"name": self.ood.name, "n": self.ood.n, "flagged_inputs": self.ood.flagged,
                           **dict(self.ood.metrics)}
        return {"bundle": self.bundle, "bundle_digest": self.data.result.bundle_digest, "model": self.model,
                "samples": self.samples, "sets": sets,
                "ood_metrics": dict(self.ood_metrics), "descriptions": dict(self.descriptions)}

    def table(self) -> tuple:
        """(headers, rows) of the printed table."""
        keys = ("n", "accuracy", "nll", "brier", "ece", "aurc", "acc_at_90", "mean_total", "mean_aleatoric",
                "mean_epistemic")
        rows = []
        for role, ev in (("data", self.data), ("ood", self.ood)):
            if ev is None:
                continue
            m = {"n": ev.n, **dict(ev.metrics)}
            rows.append([f"{role}: {ev.name}", *[m.get(k, "n/a") for k in keys]])
        return ("set", *keys), rows

    def ood_table(self) -> tuple:
        rows = [[score, *[self.ood_metrics[f"{m}_{tag}"] for m in ("auroc", "aupr", "fpr95")]]
                for score, tag in (("mutual information (epistemic)", "mi"), ("total entropy", "total"),
                                   ("density (-log p of trunk features)", "density"),
                                   ("combined (-log10 p of the device rule)", "combined"))
                if f"auroc_{tag}" in self.ood_metrics]
        return ("OOD score", "AUROC", "AUPR", "FPR@95%TPR"), rows


def evaluate_bundle(
    bundle_dir: Path,
    data: Path,
    ood: Optional[Path] = None,
    samples: Optional[int] = None,
    seed: int = 0,
    fs: Optional[float] = None,
    key: Optional[str] = None,
    hop: Optional[int] = None,
    progress: bool = True,
    split: str = "auto",
    options: Optional[DataOptions] = None,
    max_batch: Optional[int] = None,
) -> BundleEvaluation:
    """Run the device runtime on ``data`` (and ``ood``) and score it (see :func:`load_eval_inputs`)."""
    rt = _runtime(bundle_dir, seed, max_batch)
    s = samples or rt.default_samples
    inputs = load_eval_inputs(data, rt, fs=fs, key=key, hop=hop, split=split, options=options)
    res = run_runtime(rt, inputs.x, s, seed, progress=progress, desc=f"runtime: {inputs.name}")
    data_eval = SetEvaluation(inputs.name, res, inputs.y, set_metrics(res, inputs.y))
    descriptions = {"data": inputs.description}
    ood_eval, ood_m = None, {}
    if ood is not None:
        o = load_eval_inputs(ood, rt, fs=fs, key=key, hop=hop, allow_unknown=True, split="all", options=options)
        o_res = run_runtime(rt, o.x, s, seed + 1, progress=progress, desc=f"runtime: {o.name}")
        ood_eval = SetEvaluation(o.name, o_res, o.y, set_metrics(o_res, o.y))
        from .calibrate.scores import calibrated_extra_scores  # density + combined of a calibrated bundle

        ood_m = ood_metrics(res, o_res, calibrated_extra_scores(rt, inputs.x, res.epistemic, res.total, res.prediction),
                            calibrated_extra_scores(rt, o.x, o_res.epistemic, o_res.total, o_res.prediction))
        descriptions["ood"] = o.description
    return BundleEvaluation(str(bundle_dir), rt.manifest.model_name, s, data_eval, ood_eval, ood_m, descriptions)


def write_evaluation_plots(ev: BundleEvaluation, out_dir: Path) -> Dict[str, Path]:
    """Reliability diagram and accuracy-vs-coverage (labelled data), and histograms of
    MI and total entropy in vs out (with an OOD set). Returns name -> PNG path."""
    from .uq import accuracy_coverage_curve, plot_accuracy_coverage, plot_reliability_diagram
    from .uq import plot_uncertainty_histograms

    out_dir = Path(out_dir)
    paths: Dict[str, Path] = {}
    r, y = ev.data.result, ev.data.labels
    if len(y) and y.min() >= 0:
        paths["reliability"] = plot_reliability_diagram(r.probs, y, out_dir / "reliability.png",
                                                        title=f"{ev.model} on {ev.data.name}")
        curves = {"ranked by confidence (max p̄)": accuracy_coverage_curve(r.probs, y),
                  "ranked by -MI (epistemic)": accuracy_coverage_curve(r.probs, y, -r.epistemic),
                  "ranked by -total entropy": accuracy_coverage_curve(r.probs, y, -r.total)}
        paths["accuracy_coverage"] = plot_accuracy_coverage(curves, out_dir / "accuracy_coverage.png",
                                                            title=f"Accuracy vs coverage: {ev.data.name}")
    if ev.ood is not None:
        for attr, label in (("epistemic", "mutual information (nats)"), ("total", "total entropy (nats)")):
            sets = {f"in: {ev.data.name}": getattr(r, attr), f"out: {ev.ood.name}": getattr(ev.ood.result, attr)}
            paths[f"hist_{attr}"] = plot_uncertainty_histograms(
                sets, out_dir / f"{attr}_hist.png", xlabel=label, title=f"{ev.model}: {label}, in vs out", log_y=True)
    return paths
