"""Per-stage latency of one inference through the device runtime, timed from outside it
(numpy only: ``edgeuq profile`` on the host and the timing agent on a board both use it).

``UncertaintyRuntime.predict`` is one call; its stages are rebuilt here from the
runtime's *public* pieces, in the order ``predict`` runs them:

``validate_normalize``  ``preprocess.validate_signal`` + ``normalize`` + ``input_quality``
                        (token bundles: ``validate_tokens``);
``trunk``               the trunk graph, loaded by the runtime's own executor registry
                        (``executors.load_graph``, the manifest's backend and options);
``noise``               the S noise draws (``noise.sample_noise_for_sample``, sample by
                        sample from one Generator) and the S-fold tiling of the features;
``head``                the head graph on the S*B tiled rows;
``decompose``           softmax + ``uncertainty.decompose``.

:func:`compose_once` runs the same pieces once and returns the ``UncertaintyResult``:
tests check it equals ``predict`` with the same seed, so the stages timed are the
computation ``predict`` does. What this cannot separate: ``predict``'s own argument
checks and, when S*B exceeds the runtime's ``max_batch``, its chunking (the report
notes it). ``end_to_end`` times ``predict`` itself, for comparison with the sum.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .executors import GraphRunner, load_graph
from .harness import measure, measure_stages
from .noise import sample_noise_for_sample
from .preprocess import input_quality, normalize, validate_signal, validate_tokens
from .session import UncertaintyRuntime
from .uncertainty import UncertaintyResult, decompose, softmax

__all__ = ["StageProfiler", "HostProfile", "example_input", "profile_host", "STAGES", "stats_dict"]

#: The stages of one inference, in order (``edgeuq.profile.stage_names.STAGES`` is the same tuple).
STAGES = ("validate_normalize", "trunk", "noise", "head", "decompose")
_STAT_KEYS = ("median_ms", "p90_ms", "p99_ms", "min_ms", "mean_ms", "repeats")


def stats_dict(stats: Any, samples: bool = False) -> Dict[str, Any]:
    """A ``LatencyStats`` as a report stores it (the host's ``LatencyReport`` checks it again);
    ``samples``: also every timed call (``samples_ms``, in call order)."""
    d = stats.to_dict()
    out: Dict[str, Any] = {k: int(d[k]) if k == "repeats" else float(d[k]) for k in _STAT_KEYS}
    if samples:
        out["samples_ms"] = [float(t) for t in stats.samples_ms]
    return out


def example_input(rt: UncertaintyRuntime, batch: int = 1, seed: int = 0) -> np.ndarray:
    """A reproducible input for ``rt``'s bundle: N(0, 1) windows, or token ids in [1, vocab)."""
    spec = rt.manifest.input
    rng = np.random.default_rng(seed)
    if spec.is_tokens:
        return rng.integers(1, max(2, int(spec.vocab_size)), size=(batch, spec.length)).astype(np.int64)
    return rng.standard_normal((batch, spec.length)).astype(np.float32)


class StageProfiler:
    """The stages of ``predict`` as separate callables over one bundle (see the module docstring)."""

    def __init__(self, bundle_dir: Any, threads: Optional[int] = 1, seed: int = 0) -> None:
        self.rt = UncertaintyRuntime(bundle_dir, threads=threads, seed=seed)
        m = self.rt.manifest
        b = self.rt.bundle
        self.trunk: GraphRunner = load_graph(m.trunk.backend or m.backend, b.listed_path(m.trunk.file, "trunk graph"),
                                             threads, m.trunk.options)
        self.head: GraphRunner = load_graph(m.head.backend or m.backend, b.listed_path(m.head.file, "head graph"),
                                            threads, m.head.options)

    @property
    def backends(self) -> Dict[str, str]:
        m = self.rt.manifest
        return {"trunk": m.trunk.backend or m.backend, "head": m.head.backend or m.backend}

    # -- the stages -------------------------------------------------------------------------
    def validate_normalize(self, x: Any) -> Tuple[np.ndarray, Optional[Tuple[str, ...]]]:
        spec = self.rt.manifest.input
        if spec.is_tokens:
            return validate_tokens(x, spec.length, int(spec.vocab_size)), None
        windows = validate_signal(x, spec.length)
        return normalize(windows, spec.normalization), input_quality(windows)

    def run_trunk(self, windows: np.ndarray) -> np.ndarray:
        m = self.rt.manifest
        return np.asarray(self.trunk.run({m.input.name: windows})[m.feature_name])

    def draw_noise(self, features: np.ndarray, samples: int, rng: np.random.Generator) -> Dict[str, np.ndarray]:
        """Head feeds for S samples: noise drawn sample by sample, features tiled S times (s-major)."""
        m = self.rt.manifest
        features = np.ascontiguousarray(features, dtype=np.float32)
        b = features.shape[0]
        draws = [sample_noise_for_sample(m.noise, b, rng) for _ in range(samples)]
        feeds = {spec.name: draws[0][spec.name] if samples == 1 else
                 np.concatenate([d[spec.name] for d in draws], axis=0) for spec in m.noise}
        feeds[m.feature_name] = features if samples == 1 else np.tile(features, (samples,) + (1,) * (features.ndim - 1))
        return feeds

    def run_head(self, feeds: Mapping[str, np.ndarray], samples: int, batch: int) -> np.ndarray:
        m = self.rt.manifest
        logits = np.asarray(self.head.run(dict(feeds))[m.logits_name], dtype=np.float32)
        return logits.reshape(samples, batch, m.num_classes)

    def decompose(self, logits: np.ndarray, flags: Optional[Tuple[str, ...]]) -> UncertaintyResult:
        probs = softmax(logits.astype(np.float64), axis=-1)
        return decompose(probs, self.rt.class_names, input_flags=flags, bundle_digest=self.rt.bundle_digest)

    def compose_once(self, x: Any, samples: int, seed: int) -> UncertaintyResult:
        """All stages once, in ``predict``'s order, with a Generator seeded like ``predict(seed=...)``."""
        windows, flags = self.validate_normalize(x)
        features = self.run_trunk(windows)
        feeds = self.draw_noise(features, samples, np.random.default_rng(seed))
        return self.decompose(self.run_head(feeds, samples, features.shape[0]), flags)

    def stage_callables(self, x: Any, samples: int, seed: int = 0) -> Dict[str, Callable[[], object]]:
        """Zero-argument callables for :func:`measure_stages` (interleaved, in order: each reads
        the previous stage's output)."""
        state: Dict[str, Any] = {}
        rng = np.random.default_rng(seed)

        def vn() -> None:
            state["windows"], state["flags"] = self.validate_normalize(x)

        def trunk() -> None:
            state["features"] = self.run_trunk(state["windows"])

        def noise() -> None:
            state["feeds"] = self.draw_noise(state["features"], samples, rng)

        def head() -> None:
            state["logits"] = self.run_head(state["feeds"], samples, state["features"].shape[0])

        def dec() -> None:
            state["result"] = self.decompose(state["logits"], state["flags"])

        return dict(zip(STAGES, (vn, trunk, noise, head, dec)))


@dataclass(frozen=True)
class HostProfile:
    stages: Dict[str, Dict[str, Dict[str, float]]]
    end_to_end: Dict[str, Dict[str, float]]
    backends: Dict[str, str]
    notes: Tuple[str, ...]
    environment: Dict[str, Any]


def profile_host(profiler: StageProfiler, samples: Sequence[int], *, warmup: int = 5, repeats: int = 50,
                 batch: int = 1, seed: int = 0, keep_samples: bool = False) -> HostProfile:
    """Per-stage (interleaved) and end-to-end latency of one inference for each S, on this machine."""
    x = example_input(profiler.rt, batch, seed)
    stages: Dict[str, Dict[str, Dict[str, float]]] = {}
    e2e: Dict[str, Dict[str, float]] = {}
    notes: List[str] = []
    for s in samples:
        # shuffle=False: the stages are one pipeline (each reads the previous one's output), so they
        # run in predict's order; they are a breakdown of one call, never compared with each other.
        per = measure_stages(profiler.stage_callables(x, int(s), seed), warmup=warmup, repeats=repeats,
                             shuffle=False)
        stages[str(s)] = {k: stats_dict(v, keep_samples) for k, v in per.items() if k != "total"}
        stages[str(s)]["sum of stages"] = stats_dict(per["total"], keep_samples)
        e2e[str(s)] = stats_dict(measure(lambda: profiler.rt.predict(x, samples=int(s), seed=seed),
                                         warmup=warmup, repeats=repeats, name=f"predict S={s}"))
        if int(s) * batch > profiler.rt.max_batch:
            notes.append(f"S={s}: S*B = {int(s) * batch} rows exceeds the runtime's max_batch "
                         f"{profiler.rt.max_batch}; predict runs the head in chunks, the stage timing in one run")
    notes.append("stages are the runtime's public pieces run in predict's order (edgeuq.profile.stages); "
                 "predict's own argument checks are inside end-to-end only; 'noise' includes tiling the features")
    env = {"machine": platform.machine(), "system": platform.system(), "python": platform.python_version(),
           "processor": platform.processor() or platform.machine()}
    return HostProfile(stages, e2e, profiler.backends, tuple(notes), env)
