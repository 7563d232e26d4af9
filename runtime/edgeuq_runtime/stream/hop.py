"""One window per hop, fixed S, in as few calls as the decision allows (issue 23 item 6).

:class:`HopPath` decides what :meth:`Diagnoser.decide <edgeuq_runtime.stream.Diagnoser.decide>`'s
general path decides for one window (same trunk and head graphs, same noise rows from the same
generator, same calibration), for the configuration a deployed stream runs: fixed S, a
calibration with the conformal p-value rule, a LAC set (or none), no order-tracking front end.
What it does differently is only how many Python and numpy calls a hop costs:

* the z-score of the window is written into a preallocated float32 row (float64 work buffers
  kept between hops; the same operations as :func:`~edgeuq_runtime.preprocess.zscore_windows` on
  one row, so the same values);
* the head's S rows of features are a preallocated (S, d) buffer filled by broadcasting, not a
  new ``np.tile`` per hop; the noise is the runtime's own stream, drawn by a
  :func:`~edgeuq_runtime.noise.noise_writer` straight into the bound head's input buffers (checked
  once when the path is built; noise inputs of one shape are slabs of one block, so a run of
  dropout masks is written by two numpy calls, not two per input); the logits are read through a
  fixed (S, 1, C) view of the bound output;
* the decomposition is :func:`~edgeuq_runtime.uncertainty.decompose_logits`'s steps into float64
  buffers kept between hops (:class:`~edgeuq_runtime.uncertainty.LogitDecomposer`), its one row
  read out as Python floats;
* the density score is the runtime's :class:`~edgeuq_runtime.density.GaussianDensity` formula on
  one row (no pooling checks);
* the p-values, their combination, the LAC set and the abstention rule are scalar Python on one
  window: a binary search (:func:`bisect.bisect_left`, the ``searchsorted(side="left")`` of
  :meth:`Calibrated.pvalues`) in each part's distinct calibration scores and a lookup in the
  same per-class rank table (``calibration._rank_table``), instead of array calls built for
  batches.

Everything else (which windows are refused, the error accounting of the loop, the records) is the
loop's and :class:`Diagnoser`'s, unchanged. :meth:`HopPath.build` returns ``(None, reason)`` for
a configuration it does not cover; the diagnoser then keeps its general path.
"""
from __future__ import annotations

import math
from bisect import bisect_left
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..noise import noise_writer, sample_noise_rows
from ..session import UncertaintyRuntime
from ..uncertainty import LogitDecomposer
from .quality import BLOCKING_FLAGS, window_flags

__all__ = ["HopPath", "HOP_STAGES"]

#: the stages of :meth:`HopPath.decide`, in order (``bench/stream.py --profile`` times each)
HOP_STAGES = ("quality flags", "normalise + trunk graph", "noise + head (S draws)", "density score",
              "decomposition", "calibrated post (p-values, set, abstain)")

_INF = math.inf


class _Part:
    """One p-value part: the distinct calibration scores as a Python list, and per class either
    the rank-table row (Mondrian) or the class's sorted scores."""

    __slots__ = ("name", "values", "below", "sizes", "pooled")

    def __init__(self, name: str, values: list, below: Optional[list], sizes: Optional[list], pooled: bool) -> None:
        self.name, self.values, self.below, self.sizes, self.pooled = name, values, below, sizes, pooled

    def pvalue(self, s: float, k: int) -> float:
        """The p-value :meth:`Calibrated.pvalues` gives score ``s`` of a window predicted ``k``."""
        i = bisect_left(self.values, _INF if s != s else s)   # NaN counts as beyond every score
        if self.pooled:
            n = len(self.values)
            return (1.0 + (n - i)) / (n + 1.0)
        n = self.sizes[k]
        return (1.0 + (n - self.below[k][i])) / (n + 1.0)


class HopPath:
    """The decision of one window, fixed S, with few calls and no per-hop allocation beyond the
    graphs' outputs (see the module docstring). Build it with :meth:`build`."""

    def __init__(self, diagnoser: Any, parts: List[_Part]) -> None:
        d = diagnoser
        rt = d.rt
        m = rt.manifest
        self.d = d
        self.samples = int(d.samples)
        runners = rt.graph_runners
        self._trunk, self._head = runners["trunk"], runners["head"]
        self._in_name, self._feat_name, self._logits_name = m.input.name, m.feature_name, m.logits_name
        self._noise = m.noise
        self._zscore = m.input.normalization == "zscore"
        n = self._n = int(m.input.length)
        self._x = np.empty((1, n), dtype=np.float32)      # the trunk's input row
        self._x0 = self._x[0]
        self._y = np.empty(n, dtype=np.float64)           # float64 work buffers of the z-score
        self._sq = np.empty(n, dtype=np.float64)
        self._bind_graphs()
        cal = d.cal
        dens = cal.density
        self._density = dens is not None
        if dens is not None:
            self._chol = dens._chol
            self._mean_w = dens._mean_w
            self._ll0 = (dens.log_priors + dens._const).tolist()
        self._cal = cal
        pv = cal.cal.pvalues
        self._parts = parts
        self._k = len(pv.parts)
        self._rule_min = pv.rule == "min"
        self._rule = pv.rule
        # the weighted rule's weight of each part, in the order of self._parts (= pv.parts)
        self._weights = None if pv.weights is None else tuple(float(v) for v in pv.weights)
        self._level = float(pv.level)
        cp = cal.cal.conformal
        self._lac: Optional[Tuple[float, ...]] = None
        if cp is not None:
            c = len(d.class_names)
            self._lac = tuple(float(q) for q in cp.qhat) if cp.class_conditional else (float(cp.qhat[0]),) * c
        self._names = tuple(d.class_names)
        from .decide import Decision   # decide.py builds this class: imported here, not at module level

        self._decision = Decision

    @classmethod
    def build(cls, diagnoser: Any) -> Tuple[Optional["HopPath"], str]:
        """``(HopPath, "")`` when it decides exactly what the diagnoser's general path decides for
        this configuration, else ``(None, why not)``."""
        d = diagnoser
        rt = d.rt
        if d.adaptive:
            return None, "adaptive S (windows stop at different S)"
        cal = d.cal
        if cal is None or cal.cal.pvalues is None:
            return None, "no calibration with the conformal p-value rule"
        if not isinstance(rt, UncertaintyRuntime):
            return None, "not an UncertaintyRuntime"
        m = rt.manifest
        if m.input.is_tokens or m.input.normalization not in ("zscore", "none"):
            return None, f"input {m.input.dtype} / normalization {m.input.normalization!r}"
        if getattr(rt, "_front_end", None) is not None:
            return None, "order-tracking front end"
        if int(d.samples) > int(rt.max_batch):
            return None, "S exceeds the runtime's max_batch (the head runs in chunks)"
        cp = cal.cal.conformal
        if cp is not None and cp.method != "lac":
            return None, f"conformal method {cp.method!r}"
        pv = cal.cal.pvalues
        if "density" in pv.parts and cal.density is None:
            return None, "density p-value without a density model"
        parts: List[_Part] = []
        for name in pv.parts:
            per, pooled = cal._sorted[name]
            if not pv.mondrian:
                parts.append(_Part(name, pooled.tolist(), None, None, True))
            elif name in cal._ranks:
                values, below, sizes = cal._ranks[name]
                parts.append(_Part(name, values.tolist(), below.tolist(), sizes.tolist(), False))
            else:
                return None, f"p-value part {name!r} has no rank table (too many calibration scores)"
        return cls(d, parts), ""

    def _bind_graphs(self) -> None:
        """Run both graphs once (a zero window, mean-free noise rows) to learn their output shapes, and
        bind them to fixed buffers where the executor can (``bind``: ONNX Runtime's IO binding)."""
        s = self.samples
        self._x.fill(0.0)
        f = np.asarray(self._trunk.run({self._in_name: self._x})[self._feat_name])
        self._feat = np.empty(f.shape, dtype=f.dtype)
        self._rows = np.empty((s,) + f.shape[1:], dtype=np.float32)
        self._rows[...] = f
        shapes = {spec.shape for spec in self._noise}
        if len(self._noise) > 1 and len(shapes) == 1:   # one block, one slab per input: noise_writer can
            block = np.ones((len(self._noise), s) + shapes.pop(), dtype=np.float32)   # fill runs at once
            self._noise_buf = {spec.name: block[i] for i, spec in enumerate(self._noise)}
        else:
            self._noise_buf = {spec.name: np.ones((s,) + spec.shape, dtype=np.float32) for spec in self._noise}
        feeds = {self._feat_name: self._rows, **self._noise_buf}
        out = np.asarray(self._head.run(feeds)[self._logits_name])
        self._logits = np.empty(out.shape, dtype=out.dtype)
        bind_t, bind_h = getattr(self._trunk, "bind", None), getattr(self._head, "bind", None)
        self._run_trunk = None if bind_t is None else bind_t({self._in_name: self._x}, {self._feat_name: self._feat})
        self._run_head = None if bind_h is None else bind_h(feeds, {self._logits_name: self._logits})
        self.bound = self._run_trunk is not None and self._run_head is not None
        # bound head: the noise rows are drawn straight into its input buffers (checked once, here),
        # and its float32 logits are read through a fixed (S, 1, C) view of the output buffer
        self._draw = None if self._run_head is None else noise_writer(self._noise, s, self._noise_buf)
        self._logits3 = self._logits.reshape(s, 1, -1) if self._logits.dtype == np.float32 else None
        # decompose_logits' steps into buffers kept between hops (the logits' shape never changes)
        self._decompose = LogitDecomposer((s, 1, int(np.prod(out.shape)) // s)).one

    # -- the stages -------------------------------------------------------------------------
    def features(self, window: np.ndarray) -> np.ndarray:
        """Normalised window -> trunk features (1, d): ``stream_features(window[None])``."""
        x = self._x
        if self._zscore:
            y, sq = self._y, self._sq
            np.copyto(y, window)                      # float32 -> float64, exact
            np.subtract(y, np.add.reduce(y) / self._n, out=y)     # d = y - mean (what ndarray.mean computes)
            np.multiply(y, y, out=sq)
            var = np.add.reduce(sq) / self._n
            if var == 0.0:      # constant row (d is exactly 0 then): zeros, as zscore_windows
                x.fill(0.0)
            else:
                # divided in float64 and rounded to float32 on the way out (= divide, then astype);
                # sqrt is correctly rounded in both math and numpy
                np.divide(y, math.sqrt(var), out=self._x0, casting="same_kind")
        else:
            np.copyto(x[0], window)
        if self._run_trunk is None:
            return self._trunk.run({self._in_name: x})[self._feat_name]
        self._run_trunk()
        return self._feat

    def density(self, features: np.ndarray) -> float:
        """``GaussianDensity.score`` of one row of features (pooling ``none``/``auto`` of (1, d)); token
        features (1, T, d) go through the calibration's own ``density_score`` (its pooling), as on the
        general path."""
        if features.ndim != 2:
            return float(self._cal.density_score(features)[0])
        zw = np.dot(features[0], self._chol)        # float32 row cast to float64 inside, as astype + @
        diff = zw - self._mean_w
        np.multiply(diff, diff, out=diff)
        # log pi_c + log N(z; mu_c, Sigma), per class in Python floats (the same IEEE operations)
        ll = [a - 0.5 * b for a, b in zip(self._ll0, np.add.reduce(diff, axis=-1).tolist())]
        top = max(ll)
        return -(top + math.log(sum([math.exp(v - top) for v in ll])))   # left to right, as numpy sums 4

    def logits(self, features: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """S head draws on one window's features: (S, 1, C), the rows ``sample_logits`` draws."""
        self._rows[...] = features
        if self._run_head is None:
            noise = sample_noise_rows(self._noise, self.samples, rng)
            noise[self._feat_name] = self._rows
            out = np.asarray(self._head.run(noise)[self._logits_name], dtype=np.float32)
        else:   # the noise rows written straight into the bound buffers
            self._draw(rng)
            self._run_head()
            if self._logits3 is not None:
                return self._logits3
            out = self._logits.astype(np.float32)
        return out.reshape(self.samples, 1, -1)

    def summary(self, logits: np.ndarray) -> Tuple[list, int, float, float, float, float]:
        """``decompose_logits(logits)`` of the window as Python values: ``(probs, prediction,
        confidence, total, aleatoric, epistemic)`` (:meth:`LogitDecomposer.one
        <edgeuq_runtime.uncertainty.LogitDecomposer.one>`: the same steps into kept buffers)."""
        return self._decompose(logits)

    def post(self, s: Tuple[list, int, float, float, float, float], density: Optional[float],
             flags: List[str]) -> Any:
        """p-values, their combination, the LAC set and the abstention rule of one window (``s``:
        :meth:`summary`'s values)."""
        probs, k, conf, tot, alea, epi = s
        given = {"epistemic": epi, "total": tot, "density": density}
        pvals = {p.name: p.pvalue(given[p.name], k) for p in self._parts}
        if self._rule_min:
            pc = min(1.0, self._k * min(pvals.values()))
        elif self._weights is not None:     # weighted Bonferroni: min(1, min_k p_k / w_k), as combine_pvalues
            pc = min(1.0, min([pvals[p.name] / w for p, w in zip(self._parts, self._weights)]))
        else:
            from ..conformal import combine_pvalues

            pc = float(combine_pvalues(np.array([[pvals[p.name] for p in self._parts]]), self._rule)[0])
        reasons = list(flags)
        pset = None
        if self._lac is not None:
            pset = [n for n, p, q in zip(self._names, probs, self._lac) if 1.0 - p <= q]
            if len(pset) != 1:
                reasons.append("set_size")
        if pc <= self._level:
            if self._rule_min:
                reasons.extend(f"pvalue:{p.name}" for p in self._parts if self._k * pvals[p.name] <= self._level)
            elif self._weights is not None:
                reasons.extend(f"pvalue:{p.name}" for p, w in zip(self._parts, self._weights)
                               if pvals[p.name] / w <= self._level)
            else:
                best = min(range(self._k), key=lambda j: (pvals[self._parts[j].name], j))
                reasons.append(f"pvalue:{self._parts[best].name}")
        combined = float(-np.log10(pc))
        return self._decision(self._names[k], k, conf, tot, alea, epi, density,
                        combined, pset, bool(reasons), reasons, flags, self.samples, probs,
                        {"pvalues": pvals, "p_combined": pc})

    # -- one window -------------------------------------------------------------------------
    def decide(self, window: np.ndarray) -> Any:
        """The decision of one float32 window of the input length (the caller checks both)."""
        flags = window_flags(window)
        for f in flags:
            if f in BLOCKING_FLAGS:
                blocking = [f for f in flags if f in BLOCKING_FLAGS]
                return self._decision(None, None, None, None, None, None, None, None, None, True, blocking, flags, 0)
        features = self.features(window)
        logits = self.logits(features, self.d.rng)   # the head right after the trunk; the density (no
        dens = self.density(features) if self._density else None   # noise drawn) after it: same values
        return self.post(self._decompose(logits), dens, flags)
