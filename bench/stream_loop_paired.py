"""The device stream of this tree against the same stream of an earlier commit, paired and interleaved.

The runtime package (``runtime/edgeuq_runtime``) of ``--base`` (a git commit, default ``HEAD``) is
copied out of git under another package name (``edgeuq_runtime_base``: the runtime imports itself
only relatively) into a temporary folder, so both versions load in one process. Each keeps its own
runtime and diagnoser (seed 0, one ORT thread, fixed S, the one-window path where the diagnoser
has it) across rounds; every round streams the next ``--windows`` windows of the base signal
(``bench/stream.py``'s ``LoopSource``, hop deadline, a 3-of-5 alarm, per-window records emitted
and dropped) through each version in a seeded random order, timed by ``time.process_time``
(``edgeuq_runtime.harness.measure_stages``), and the per-round CPU-time ratio is summarized as
its median with a bootstrap interval (``paired_ratio``). Before timing, one stream of
``--windows`` windows through fresh diagnosers of both versions checks that they emit the same
records (all keys but the wall clock ``time`` and the measured ``latency_ms``).

    python bench/stream_loop_paired.py --bundle runs/demo/student/bundle [--base COMMIT]
        [--rounds 30] [--windows 300] [--samples 32] [--hop 2048] [--signal synthetic]

Prints measured CPU ms per window of both versions, the ratio (this tree / base) and the load
average before and after. Nothing is written.
"""
from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

BASE_NAME = "edgeuq_runtime_base"


def load_base_runtime(commit: str, into: Path):
    """``runtime/edgeuq_runtime`` at ``commit``, imported as :data:`BASE_NAME` from ``into``."""
    raw = subprocess.run(["git", "-C", str(REPO), "archive", commit, "runtime/edgeuq_runtime"],
                         check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(raw)) as tar:
        tar.extractall(into, filter="data")
    (into / "runtime" / "edgeuq_runtime").rename(into / BASE_NAME)
    sys.path.insert(0, str(into))
    return importlib.import_module(BASE_NAME)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--base", default="HEAD", help="git commit of the runtime to compare against")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--windows", type=int, default=300, help="windows per version per round")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--hop", type=int, default=2048)
    ap.add_argument("--signal", default="synthetic", help="bench/stream.py's base signal (synthetic: SIMULATED)")
    a = ap.parse_args(argv)

    import numpy as np
    import stream as bench_stream

    import edgeuq_runtime as new_rt
    from edgeuq_runtime.harness import measure_stages, paired_ratio

    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=12", a.base], check=True,
                            capture_output=True, text=True).stdout.strip()
    tmp = tempfile.TemporaryDirectory()
    base_rt = load_base_runtime(commit, Path(tmp.name))
    base, what = bench_stream.STREAM_SIGNALS[a.signal](REPO.parent / "shared" / "data" / "cwru")
    base = np.ascontiguousarray(base, dtype=np.float32)
    rate = 12000.0
    versions = {"this tree": new_rt, f"base {commit}": base_rt}

    def diagnoser(pkg):
        rt = pkg.UncertaintyRuntime(a.bundle, threads=1)
        d = importlib.import_module(pkg.__name__ + ".stream").Diagnoser(rt, samples=a.samples, seed=0)
        return d

    def stream(pkg, diag, emit):
        s = importlib.import_module(pkg.__name__ + ".stream")
        length = diag.rt.input_length
        total = a.windows * a.hop + length - a.hop
        return s.run_stream(diag, bench_stream.LoopSource(base, rate, total, "paired"), emit, hop=a.hop,
                            alarm=s.Hysteresis(3, 5, "normal"))

    # the same records from both versions (fresh diagnosers, one stream each)
    recs = {}
    for name, pkg in versions.items():
        out = []
        stream(pkg, diagnoser(pkg), out.append)
        recs[name] = [{k: v for k, v in r.items() if k not in ("time", "latency_ms")}
                      for r in out if r["type"] != "summary"]
    (na, ra), (nb, rb) = recs.items()
    same = len(ra) == len(rb) and all(x == y for x, y in zip(ra, rb))
    print(f"records ({len(ra)} per version, '{what}'): {'identical' if same else 'DIFFERENT'} "
          "(all keys but time and latency_ms)")
    if not same:
        bad = next(i for i, (x, y) in enumerate(zip(ra, rb)) if x != y) if len(ra) == len(rb) else None
        print(f"first differing record: {bad}: {ra[bad] if bad is not None else len(ra)} vs "
              f"{rb[bad] if bad is not None else len(rb)}", file=sys.stderr)

    diags = {name: diagnoser(pkg) for name, pkg in versions.items()}
    paths = {name: (d.hop_path is not None) for name, d in diags.items()}
    counted = {name: 0 for name in versions}

    def run(name):
        pkg, diag = versions[name], diags[name]

        def go() -> None:
            counted[name] += stream(pkg, diag, lambda rec: None).windows
        return go

    load0 = os.getloadavg()
    stages = measure_stages({k: run(k) for k in versions}, warmup=2, repeats=a.rounds, clock=time.process_time)
    load1 = os.getloadavg()
    r = paired_ratio(stages["this tree"], stages[f"base {commit}"], names=("this tree", f"base {commit}"))
    per = a.windows
    print(f"one-window path: {paths}; fixed S = {a.samples}, hop {a.hop}, deadline one hop, "
          f"{a.rounds} rounds x {a.windows} windows per version (measured, time.process_time)")
    print(f"this tree:   {r.numerator_median_ms / per:.4f} ms CPU per window (median round), "
          f"{a.hop / rate / (r.numerator_median_ms / per / 1e3):.1f}x real time by CPU")
    print(f"base {commit}: {r.denominator_median_ms / per:.4f} ms CPU per window (median round), "
          f"{a.hop / rate / (r.denominator_median_ms / per / 1e3):.1f}x real time by CPU")
    print(f"ratio this tree / base: median {r.median:.4f} [{r.ci_low:.4f}, {r.ci_high:.4f}] (95 % bootstrap, "
          f"{r.rounds} paired rounds)")
    print(f"load average before {tuple(round(v, 2) for v in load0)}, after {tuple(round(v, 2) for v in load1)}")
    tmp.cleanup()
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
