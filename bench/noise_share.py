"""Share of end-to-end ``predict`` time spent drawing noise, before and after the bit-threshold stream.

"before" is the previous sampler, reproduced here: float32 uniforms ``rng.random`` compared with
``p`` (dropout), ``rng.standard_normal`` / ``rng.random`` / ``rng.integers`` for the other kinds,
one numpy call per spec. "after" is the runtime's stream (``noise.sample_noise_rows``: one
``random_raw`` draw for every kind, 16-bit thresholds for dropout). Each round runs four callables
in a seeded random order (paired, interleaved): noise(before), noise(after), predict with the
before sampler patched into the session, predict as shipped. Per round: share = noise / predict of
the same sampler; reported as the median with a bootstrap 95 % interval over rounds.

    python bench/noise_share.py BUNDLE [BUNDLE ...] [--batch 1] [--samples 16] [--rounds 200]
        [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Callable, Dict, List

import numpy as np


def old_rows(specs, rows: int, rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """The previous sampler's work for ``rows`` head rows (float draws, one call per spec)."""
    out = {}
    for s in specs:
        shape = (rows,) + s.shape
        if s.kind == "dropout_mask":
            p = float(s.params["p"])
            out[s.name] = (rng.random(shape, dtype=np.float32) >= p).astype(np.float32) * np.float32(1 / (1 - p))
        elif s.kind == "standard_normal":
            out[s.name] = rng.standard_normal(shape, dtype=np.float32)
        elif s.kind == "uniform":
            out[s.name] = rng.random(shape, dtype=np.float32)
        else:
            k = int(s.params["k"])
            out[s.name] = np.eye(k, dtype=np.float32)[rng.integers(0, k, size=shape[:-1])]
    return out


def bootstrap(v: np.ndarray, rng: np.random.Generator, n: int = 2000) -> List[float]:
    meds = np.median(rng.choice(v, size=(n, len(v)), replace=True), axis=1)
    return [float(np.quantile(meds, 0.025)), float(np.quantile(meds, 0.975))]


def measure(bundle: str, batch: int, samples: int, rounds: int, seed: int) -> dict:
    import edgeuq_runtime.session as session
    from edgeuq_runtime import UncertaintyRuntime
    from edgeuq_runtime.noise import sample_noise_rows, words_per_row

    rt = UncertaintyRuntime(bundle, threads=1, seed=0)
    m = rt.manifest
    x = np.random.default_rng(1).standard_normal((batch, rt.input_length)).astype(np.float32) \
        if not m.input.is_tokens else np.ones((batch, rt.input_length), np.int64)
    rows = samples * batch
    g = np.random.default_rng(2)
    shipped = session.sample_noise_rows

    def predict_before():
        session.sample_noise_rows = old_rows
        try:
            rt.predict(x, samples=samples)
        finally:
            session.sample_noise_rows = shipped

    calls: Dict[str, Callable[[], object]] = {
        "noise_before": lambda: old_rows(m.noise, rows, g),
        "noise_after": lambda: sample_noise_rows(m.noise, rows, g),
        "predict_before": predict_before,
        "predict_after": lambda: rt.predict(x, samples=samples),
    }
    for fn in calls.values():  # warm-up
        for _ in range(3):
            fn()
    order_rng = np.random.default_rng(seed)
    t = {k: np.empty(rounds) for k in calls}
    names = list(calls)
    for r in range(rounds):
        for i in order_rng.permutation(len(names)):
            k = names[i]
            t0 = time.perf_counter()
            calls[k]()
            t[k][r] = time.perf_counter() - t0
    share_b = t["noise_before"] / t["predict_before"]
    share_a = t["noise_after"] / t["predict_after"]
    speed = t["noise_before"] / t["noise_after"]
    br = np.random.default_rng(seed + 1)
    elems = sum(int(np.prod(s.shape)) for s in m.noise)
    return {
        "bundle": bundle, "model": m.model_name, "noise_kinds": sorted({s.kind for s in m.noise}),
        "noise_elements_per_row": elems, "words_per_row": words_per_row(m.noise), "batch": batch,
        "samples": samples, "rounds": rounds,
        "median_ms": {k: 1e3 * float(np.median(v)) for k, v in t.items()},
        "noise_share_before": {"median": float(np.median(share_b)), "ci95": bootstrap(share_b, br)},
        "noise_share_after": {"median": float(np.median(share_a)), "ci95": bootstrap(share_a, br)},
        "noise_speedup_paired": {"median": float(np.median(speed)), "ci95": bootstrap(speed, br)},
        "predict_ratio_before_over_after": {"median": float(np.median(t["predict_before"] / t["predict_after"])),
                                            "ci95": bootstrap(t["predict_before"] / t["predict_after"], br)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    a = ap.parse_args()
    results = [measure(b, a.batch, a.samples, a.rounds, a.seed) for b in a.bundles]
    prov = {"command": " ".join([os.path.basename(sys.executable)] + sys.argv), "cpu": platform.processor() or
            platform.machine(), "load_average": os.getloadavg(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                        time.gmtime()),
            "threads": 1, "note": "timings on a shared machine; ratios are paired per round in random order"}
    for r in results:
        print(f"{r['model']} ({', '.join(r['noise_kinds'])}; {r['noise_elements_per_row']} noise elements per row), "
              f"B={r['batch']} S={r['samples']}, {r['rounds']} rounds: predict {r['median_ms']['predict_before']:.3f}"
              f" -> {r['median_ms']['predict_after']:.3f} ms; noise {r['median_ms']['noise_before']:.3f} -> "
              f"{r['median_ms']['noise_after']:.3f} ms; noise share {100 * r['noise_share_before']['median']:.1f} % "
              f"{[round(100 * v, 1) for v in r['noise_share_before']['ci95']]} -> "
              f"{100 * r['noise_share_after']['median']:.1f} % {[round(100 * v, 1) for v in r['noise_share_after']['ci95']]}"
              f"; noise speed-up x{r['noise_speedup_paired']['median']:.2f}")
    print(f"load average {prov['load_average']}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"provenance": prov, "results": results}, fh, indent=2)


if __name__ == "__main__":
    main()
