"""Pick a calibrated bundle's device rule (which conformal p-values, combined how) on validation data.

The device abstains when the combination of the conformal p-values of some of its scores (mutual
information ``epistemic``, total entropy ``total``, ``density``) is ``<= level``. Which parts and
which combination is a choice made on *validation* data -- in-distribution inputs that neither
fitted the density, nor calibrated the p-values, nor are reported, against *constructed* shifted
inputs (never a held-out set that is reported): every candidate's AUROC of ``-log`` its combined
p-value is measured and the best is written into the bundle (:func:`set_device_rule`).

Candidates (:func:`rule_candidates`): every non-empty subset of the parts with each of the rules
asked for; ``"weighted"`` (weighted Bonferroni, ``min_k p_k / w_k``) adds, for every subset of two
or more parts holding the emphasised part (``density``), one candidate per weight of
:data:`DENSITY_WEIGHTS` on it, the rest of the weight split evenly over the subset's other parts.
``"min"`` and ``"weighted"`` keep the false-alarm guarantee whatever the dependence between the
scores; ``"fisher"`` does not (it is offered only when asked for). Ties (AUROC equal to 12 digits):
fewer parts, then ``min``, then the first candidate in order (the grid ascending: least extreme
weights first).

:func:`pick_bundle_rule` does it for a calibrated bundle and model-ready inputs (windows or token
ids); :func:`pick_text_rule` for a text bundle and texts (its own tokenizer). The shift suite
(:mod:`edgeuq.shifts.suite`) uses :func:`pick_rule` on its own validation sets.
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from edgeuq_runtime import UncertaintyRuntime, load_bundle
from edgeuq_runtime.calibration import PVALUE_PARTS, Calibrated, load_pvalue_scores, read_calibration
from edgeuq_runtime.conformal import combine_pvalues
from edgeuq_runtime.density import GaussianDensity

from ..uq import auroc
from .scores import score_windows

__all__ = ["DENSITY_WEIGHTS", "RuleCandidate", "RulePick", "RulePickOptions", "rule_candidates", "pick_rule",
           "set_device_rule", "all_parts_calibrated", "pick_bundle_rule", "pick_text_rule", "RULE_ROWS_FILE",
           "TextRuleRows", "save_text_rule_rows", "load_text_rule_rows"]

#: the weights the ``weighted`` candidates give the emphasised part (the rest split evenly over the others)
DENSITY_WEIGHTS = (0.5, 0.7, 0.8, 0.9, 0.95)

Log = Callable[[str], None]
#: where a bench keeps the text validation rows it picked a rule on (so another copy of the bundle, e.g.
#: its int8 twin, picks its own rule on exactly those rows)
RULE_ROWS_FILE = "device_rule_rows.json"


@dataclass(frozen=True)
class RuleCandidate:
    """A device rule: ``parts`` combined by ``rule`` (``weights``: one per part, ``weighted`` only)."""

    parts: Tuple[str, ...]
    rule: str
    weights: Optional[Tuple[float, ...]] = None

    def combine(self, pvalues: Mapping[str, np.ndarray]) -> np.ndarray:
        """The combined p-value of per-part p-values (each ``(N,)``)."""
        return combine_pvalues(np.stack([np.asarray(pvalues[p], dtype=np.float64) for p in self.parts], 1),
                               self.rule, self.weights)

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"parts": list(self.parts), "rule": self.rule}
        if self.weights is not None:
            out["weights"] = {p: float(w) for p, w in zip(self.parts, self.weights)}
        return out

    def describe(self) -> str:
        if self.weights is None:
            return f"{self.rule} of {'/'.join(self.parts)}"
        return f"{self.rule} of " + "/".join(f"{p} ({w:.3g})" for p, w in zip(self.parts, self.weights))


@dataclass(frozen=True, eq=False)
class RulePick:
    """The picked rule, its validation AUROC (pooled shifted sets), per shifted set, and every candidate's row."""

    candidate: RuleCandidate
    auroc: float
    table: List[Dict[str, Any]]
    per_set: Dict[str, float] = dataclasses.field(default_factory=dict)
    n_in: int = 0
    n_out: Dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def parts(self) -> Tuple[str, ...]:
        return self.candidate.parts

    @property
    def rule(self) -> str:
        return self.candidate.rule

    @property
    def weights(self) -> Optional[Tuple[float, ...]]:
        return self.candidate.weights

    def to_json(self) -> Dict[str, Any]:
        return {**self.candidate.to_json(), "validation_auroc": self.auroc, "validation_auroc_per_set": self.per_set,
                "validation_n_in": self.n_in, "validation_n_out": self.n_out, "validation": self.table}


def _weighted(sub: Tuple[str, ...], emphasis: str, grid: Sequence[float]) -> List[RuleCandidate]:
    if len(sub) < 2 or emphasis not in sub:
        return []
    out = []
    for w in grid:
        if not 0.0 < w < 1.0:
            raise ValueError(f"weights of the emphasised part must lie in (0, 1), got {w!r}")
        rest = round((1.0 - w) / (len(sub) - 1), 12)    # 0.2, not 0.19999999999999996 (still sums to 1)
        out.append(RuleCandidate(sub, "weighted", tuple(w if p == emphasis else rest for p in sub)))
    return out


def rule_candidates(parts: Sequence[str], rules: Sequence[str] = ("min",), weights: Sequence[float] = DENSITY_WEIGHTS,
                    emphasis: str = "density") -> List[RuleCandidate]:
    """Every non-empty subset of ``parts`` with each of ``rules`` (singletons once, with ``rules[0]``;
    ``"weighted"``: one candidate per weight of ``weights`` on ``emphasis``, for the subsets of two or
    more parts that hold it). The default keeps only Bonferroni ``min``."""
    single = next((r for r in rules if r != "weighted"), "min")
    out: List[RuleCandidate] = []
    for k in range(1, len(parts) + 1):
        for sub in itertools.combinations(parts, k):
            if k == 1:
                out.append(RuleCandidate(sub, single))
                continue
            for r in rules:
                out += _weighted(sub, emphasis, weights) if r == "weighted" else [RuleCandidate(sub, r)]
    return out


def pick_rule(p_in: Mapping[str, np.ndarray], p_out: Mapping[str, np.ndarray], parts: Sequence[str],
              rules: Sequence[str] = ("min",), weights: Sequence[float] = DENSITY_WEIGHTS,
              emphasis: str = "density") -> RulePick:
    """The candidate (:func:`rule_candidates`) with the highest validation AUROC of ``-log`` its combined
    p-value (in-distribution p-values ``p_in``, shifted ``p_out``, per part); ties: fewer parts, then
    ``min``, then the first in order."""
    table, cands = [], rule_candidates(parts, rules, weights, emphasis)
    for c in cands:
        table.append({**c.to_json(), "auroc": float(auroc(-np.log(c.combine(p_in)), -np.log(c.combine(p_out))))})
    i = max(range(len(table)), key=lambda j: (round(table[j]["auroc"], 12), -len(table[j]["parts"]),
                                              table[j]["rule"] == "min", -j))
    return RulePick(cands[i], table[i]["auroc"], table)


def set_device_rule(bundle_dir: Path, parts: Sequence[str], rule: str,
                    weights: Optional[Sequence[float]] = None) -> None:
    """Rewrite the bundle's ``calibration.pvalues`` to use ``parts`` combined by ``rule`` (``weights``: one
    per part, for ``weighted``); the stored calibration scores hold every part."""
    b = load_bundle(bundle_dir, verify=True)
    cal = b.manifest.sections["calibration"]
    w = None if weights is None else tuple(float(v) for v in weights)
    cal = dataclasses.replace(cal, pvalues=dataclasses.replace(cal.pvalues, parts=tuple(parts), rule=rule, weights=w))
    b.amend(sections={"calibration": cal})


def all_parts_calibrated(bundle: Any) -> Calibrated:
    """The bundle's calibration with every part its p-value file stores (in :data:`PVALUE_PARTS` order),
    combined by Bonferroni ``min``: the p-values a rule is picked from, whatever rule the bundle runs now."""
    cal = read_calibration(bundle)
    if cal is None or cal.pvalues is None:
        raise ValueError(f"{bundle.root}: the bundle has no calibration with conformal p-values (edgeuq calibrate)")
    with np.load(bundle.path(cal.pvalues.file), allow_pickle=False) as z:
        stored = set(z.files)
    parts = tuple(p for p in PVALUE_PARTS if p in stored)
    pv = dataclasses.replace(cal.pvalues, parts=parts, rule="min", weights=None)
    cal = dataclasses.replace(cal, pvalues=pv)
    dens = None if cal.density is None else GaussianDensity.load(bundle.path(cal.density.file))
    return Calibrated(cal, dens, load_pvalue_scores(bundle.path(pv.file), pv, bundle.manifest.num_classes))


@dataclass(frozen=True)
class RulePickOptions:
    rules: Tuple[str, ...] = ("min", "weighted")    # weighted Bonferroni keeps the guarantee, as min
    weights: Tuple[float, ...] = DENSITY_WEIGHTS    # of the emphasised part in the weighted candidates
    emphasis: str = "density"
    samples: Optional[int] = None                   # S (default: the calibration's)
    seed: int = 0
    threads: Optional[int] = None


def pick_bundle_rule(bundle_dir: Path, x_in: np.ndarray, shifted: Mapping[str, np.ndarray],
                     options: RulePickOptions = RulePickOptions(), write: bool = True,
                     log: Log = lambda s: None) -> RulePick:
    """Pick the device rule of a calibrated bundle on validation inputs: ``x_in`` in-distribution (neither
    the density fit nor the calibration data, nor anything reported), ``shifted`` {name: inputs} the
    constructed shifts (pooled for the pick; the picked rule's AUROC per set is recorded too). With
    ``write`` the rule is written into the bundle (:func:`set_device_rule`)."""
    o = options
    if not shifted or not all(len(v) for v in shifted.values()) or not len(x_in):
        raise ValueError("picking a device rule needs in-distribution and non-empty shifted validation inputs")
    rt = UncertaintyRuntime(Path(bundle_dir), threads=o.threads, seed=o.seed)
    cal = all_parts_calibrated(rt.bundle)
    s = int(o.samples or cal.cal.samples)

    def pvalues(x, seed):
        sc = score_windows(rt, x, s, seed, calibrated=cal)
        return cal.pvalues(sc.epistemic, sc.total, sc.density, sc.prediction)

    p_in = pvalues(x_in, o.seed + 11)
    outs = {name: pvalues(x, o.seed + 12 + i) for i, (name, x) in enumerate(shifted.items())}
    parts = cal.cal.pvalues.parts
    p_out = {p: np.concatenate([v[p] for v in outs.values()]) for p in parts}
    pick = pick_rule(p_in, p_out, parts, o.rules, o.weights, o.emphasis)
    s_in = -np.log(pick.candidate.combine(p_in))
    per = {name: float(auroc(s_in, -np.log(pick.candidate.combine(v)))) for name, v in outs.items()}
    pick = dataclasses.replace(pick, per_set=per, n_in=int(len(x_in)),
                               n_out={k: int(len(v)) for k, v in shifted.items()})
    if write:
        set_device_rule(Path(bundle_dir), pick.parts, pick.rule, pick.weights)
    log(f"device rule picked on validation ({len(x_in)} in-distribution, "
        f"{sum(pick.n_out.values())} shifted in {len(shifted)} sets): {pick.candidate.describe()} "
        f"(validation AUROC {pick.auroc:.4f}){'; written to ' + str(bundle_dir) if write else ''}")
    return pick


def pick_text_rule(bundle_dir: Path, in_texts: Sequence[str], shifted_texts: Mapping[str, Sequence[str]],
                   options: RulePickOptions = RulePickOptions(), write: bool = True,
                   log: Log = lambda s: None) -> RulePick:
    """:func:`pick_bundle_rule` for a text bundle: the texts tokenized by the bundle's own tokenizer."""
    rt = UncertaintyRuntime(Path(bundle_dir), threads=options.threads, seed=options.seed)
    return pick_bundle_rule(bundle_dir, rt.tokenize(list(in_texts)),
                            {k: rt.tokenize(list(v)) for k, v in shifted_texts.items()}, options, write, log)


@dataclass(frozen=True)
class TextRuleRows:
    """The validation texts a text bundle's rule is picked on: in-distribution, and shifted per set."""

    in_distribution: Tuple[str, ...]
    shifted: Mapping[str, Tuple[str, ...]]
    source: str = ""


def save_text_rule_rows(path: Path, rows: TextRuleRows) -> Path:
    from edgeuq_runtime.atomic import atomic_write
    import json

    return atomic_write(Path(path), json.dumps({"in_distribution": list(rows.in_distribution),
                                                "shifted": {k: list(v) for k, v in rows.shifted.items()},
                                                "source": rows.source}).encode())


def load_text_rule_rows(path: Path) -> TextRuleRows:
    """:func:`save_text_rule_rows`'s file, checked: texts only, at least one in-distribution text and one
    non-empty shifted set (ValueError naming the file otherwise)."""
    import json

    d = json.loads(Path(path).read_text())
    ok = (isinstance(d, dict) and isinstance(d.get("in_distribution"), list) and isinstance(d.get("shifted"), dict)
          and all(isinstance(t, str) for t in d["in_distribution"])
          and all(isinstance(v, list) and all(isinstance(t, str) for t in v) for v in d["shifted"].values()))
    if not ok or not d["in_distribution"] or not any(d["shifted"].values()):
        raise ValueError(f"{path}: not a device-rule rows file (in_distribution: [texts], shifted: {{set: [texts]}}, "
                         "both non-empty)")
    return TextRuleRows(tuple(d["in_distribution"]), {k: tuple(v) for k, v in d["shifted"].items() if v},
                        str(d.get("source", "")))
