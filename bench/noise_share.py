"""Share of end-to-end ``predict`` time spent drawing noise, before and after the bit-threshold stream.

"before" is the float sampler, reproduced here: float32 uniforms ``rng.random`` compared with
``p`` (dropout), ``rng.standard_normal`` / ``rng.random`` / ``rng.integers`` for the other kinds,
one numpy call per spec. "after" is the runtime's stream (``noise.sample_noise_rows``, stream
``raw64-fixed-words-per-row-2``): one ``random_raw`` draw for every kind, 8 or 16 bits per element,
decoded without transcendental functions: 8-bit dropout thresholds where that moves p by at most
2 % of min(p, 1 - p), else 16-bit (``noise.dropout_threshold``), 16-bit midpoint uniforms, and
normals as one gather from the table of the 2**16 cell means of N(0, 1). "stream 1" is the previous
stream, reproduced here (``stream1_rows``: 16-bit dropout thresholds, 32-bit uniforms, float32
Box-Muller on 24-bit uniforms), timed in the same rounds for a paired stream 1 / stream 2 ratio of
the noise alone (CPU time).

"per-spec decoder" is stream 2 decoded as it was before the cached decoding plans
(``stream2_plain_rows``: ``noise._decode`` spec by spec, the same values), timed in the same rounds,
alone and inside ``predict``, for a paired before/after of the plans within one run.

"mixed-type multiply" is stream 2 decoded by the plans as they were before dropout runs cast each
spec's keep slice to float32 and scaled it in place (``stream2_mixed_multiply_rows``: one
``np.multiply(keep, scale, dtype=float32)`` per spec, the same values), timed alone and inside
``predict`` in the same rounds: the paired before/after of that change.

Each round runs ten callables in a seeded random order (paired, interleaved): noise(before),
noise(after), noise(stream 1), noise(per-spec decoder), noise(mixed-type multiply), predict with
the before sampler patched into the session, predict with the per-spec decoder patched in, predict
with the mixed-type multiply patched in, predict as shipped, and the in-graph draw below. Per round: share = noise / predict of the same sampler;
reported as the median with a bootstrap 95 % interval over rounds, in wall time and (a second
column, less sensitive to a loaded machine) in this thread's CPU time (``time.thread_time``: numpy
and ONNX Runtime with one thread both run in the calling thread).

The in-graph callable draws the same noise *inside* ONNX Runtime (a graph of ``RandomNormalLike`` /
``RandomUniformLike`` ops, dropout masks as uniform < p, one-hot categoricals from ArgMax of
uniforms), the in-graph alternative to drawing in numpy: its time is reported next to the numpy
stream's (in-graph noise is not seeded reproducibly: ONNX Runtime's ``seed`` attribute fixes one
session's sequence, not the values other runtimes draw, and TVM has no random ops).

``--recipes`` builds untrained bundles of catalog recipes (latency does not depend on weight values)
in a temporary folder (``RECIPE:key=value`` overrides an integer ``[model]`` field, e.g.
``cwru-variational:stochastic_tokens=0`` for the recipe without token pooling), so the run needs no prepared bundles; ``--json`` writes the table for
``scripts/render_tables.py`` with the run's provenance (``edgeuq.provenance``).

    python bench/noise_share.py [BUNDLE ...] [--recipes cwru-variational ...] [--batch 1] [--samples 16]
        [--rounds 200] [--quick] [--json results/noise_share.json]
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
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


def stream1_rows(specs, rows: int, rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """The previous runtime stream (``raw64-fixed-words-per-row-1``) for ``rows`` head rows: one
    ``random_raw`` draw; 16-bit dropout thresholds, 32-bit uniforms ``(u >> 8) 2**-24``, normals by
    Box-Muller in float32 from two 24-bit uniforms per pair, 32-bit categorical indices."""
    bits = {"dropout_mask": 16, "uniform": 32, "standard_normal": 32, "categorical": 32}
    counts = [2 * ((math.prod(s.shape) + 1) // 2) if s.kind == "standard_normal" else
              math.prod(s.shape) // int(s.params["k"]) if s.kind == "categorical" else math.prod(s.shape)
              for s in specs]
    words = [-(-n * bits[s.kind] // 64) for s, n in zip(specs, counts)]
    raw = rng.bit_generator.random_raw(rows * sum(words)).astype("<u8", copy=False).reshape(rows, sum(words))
    out, off = {}, 0
    for s, n, w in zip(specs, counts, words):
        if s.kind == "dropout_mask":
            t = min(int(round(float(s.params["p"]) * 65536)), 65535)
            p_eff = t / 65536
            v = np.greater_equal(raw.view("<u2")[:, 4 * off:4 * off + n], t).astype(np.float32)
            v *= np.float32(1.0 / (1.0 - p_eff))
        else:
            u32 = raw.view("<u4")[:, 2 * off:2 * off + n]
            if s.kind == "uniform":
                v = (u32 >> np.uint32(8)).astype(np.float32)
                v *= np.float32(2.0 ** -24)
            elif s.kind == "standard_normal":
                r = (u32[:, 0::2] >> np.uint32(8)).astype(np.float32)
                r += np.float32(1.0)
                r *= np.float32(2.0 ** -24)
                np.log(r, out=r)
                r *= np.float32(-2.0)
                np.sqrt(r, out=r)
                angle = (u32[:, 1::2] >> np.uint32(8)).astype(np.float32)
                angle *= np.float32(2.0 * np.pi * 2.0 ** -24)
                v = np.empty((rows, n), dtype=np.float32)
                np.multiply(r, np.cos(angle), out=v[:, 0::2])
                np.multiply(r, np.sin(angle), out=v[:, 1::2])
                v = np.ascontiguousarray(v[:, :math.prod(s.shape)])
            else:
                k = int(s.params["k"])
                v = np.eye(k, dtype=np.float32)[(u32.astype(np.uint64) * np.uint64(k)) >> np.uint64(32)]
        out[s.name] = v.reshape((rows,) + s.shape)
        off += w
    return out


def stream2_plain_rows(specs, rows: int, rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """Stream 2 decoded the way it was before the cached plans (``noise._decode`` spec by spec, the
    layout worked out per call): the same values as ``sample_noise_rows`` (runtime/tests), timed in
    the same rounds for a paired per-spec-decoder / plan ratio."""
    from edgeuq_runtime.noise import _decode, row_layout

    layout = row_layout(specs)
    width = sum(w for _, w in layout)
    raw = rng.bit_generator.random_raw(rows * width).astype("<u8", copy=False).reshape(rows, width)
    return {s.name: _decode(s, raw, off, rows) for s, (off, _) in zip(specs, layout)}


_MIXED_PLANS: Dict[int, tuple] = {}


def _mixed_multiply_run_step(members, bits: int, t: int, p_eff: float):
    """The step of one run of dropout specs as the plans had it before: the run compared once, then
    one mixed-type ``np.multiply(keep slice, scale, dtype=float32)`` per spec."""
    from edgeuq_runtime.noise import _dropout_run_parts

    view, lo, hi, parts = _dropout_run_parts(members, bits)
    scale = np.float32(1.0 / (1.0 - p_eff))

    def step(views, rows, out):
        keep = np.greater_equal(views[view][:, lo:hi], t)
        for name, shape, a, b in parts:
            out[name] = np.multiply(keep[:, a:b], scale, dtype=np.float32).reshape(shape)
    return step


def _mixed_multiply_plan(specs) -> tuple:
    """(words per row, steps) of :func:`stream2_mixed_multiply_rows`: the runtime's own plan builder
    with only the dropout-run step replaced, built once per spec tuple (as the runtime caches its
    plans), so the paired ratio times the decode alone, not layout work."""
    from edgeuq_runtime.noise import _build_plan

    width, steps = _build_plan(specs, _mixed_multiply_run_step)
    _MIXED_PLANS[id(specs)] = (specs, width, steps)
    return width, steps


def stream2_mixed_multiply_rows(specs, rows: int, rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """Stream 2 decoded as the cached plans did before dropout runs cast and scaled in place: each
    run of dropout specs with one threshold compared once, then one mixed-type
    ``np.multiply(keep slice, float32(1 / (1 - p_eff)), dtype=float32)`` per spec; other kinds by
    the shipped plan's own steps; the steps built once per spec tuple. The same values as
    ``sample_noise_rows`` (tests/test_noise_share_bench.py), timed in the same rounds for a paired
    before/after of that change."""
    specs = tuple(specs)
    hit = _MIXED_PLANS.get(id(specs))   # looked up first: a hit costs what the runtime's plan lookup costs
    width, steps = (hit[1], hit[2]) if hit is not None and hit[0] is specs else _mixed_multiply_plan(specs)
    raw = rng.bit_generator.random_raw(rows * width)
    if sys.byteorder != "little":
        raw = raw.astype("<u8")   # the stream reads words little-endian on every host
    raw = raw.reshape(rows, width)
    views = (raw.view("u1"), raw.view("<u2"), raw)
    out: Dict[str, np.ndarray] = {}
    for step in steps:   # manifest order, as the shipped plan writes
        step(views, rows, out)
    return out


def bootstrap(v: np.ndarray, rng: np.random.Generator, n: int = 2000) -> List[float]:
    meds = np.median(rng.choice(v, size=(n, len(v)), replace=True), axis=1)
    return [float(np.quantile(meds, 0.025)), float(np.quantile(meds, 0.975))]


def ingraph_noise_session(specs, rows: int):
    """An ONNX Runtime session drawing every spec's noise for ``rows`` rows in-graph (one thread);
    returns a callable. Distribution per kind as the runtime's stream (dropout: keep where U >= p,
    scaled by 1/(1-p); categorical: one-hot of the ArgMax of k uniforms)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    nodes, outputs, inits = [], [], []
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])  # expanded to each spec's (rows, *shape)
    for i, sp in enumerate(specs):
        shape = [rows] + list(sp.shape)
        out = f"n{i}"
        shape_name = f"shape{i}"
        inits.append(numpy_helper.from_array(np.array(shape, np.int64), shape_name))
        nodes.append(helper.make_node("Expand", ["x", shape_name], [f"like{i}"]))
        if sp.kind == "standard_normal":
            nodes.append(helper.make_node("RandomNormalLike", [f"like{i}"], [out]))
        elif sp.kind == "uniform":
            nodes.append(helper.make_node("RandomUniformLike", [f"like{i}"], [out]))
        elif sp.kind == "dropout_mask":
            p = float(sp.params["p"])
            inits += [numpy_helper.from_array(np.array(p, np.float32), f"p{i}"),
                      numpy_helper.from_array(np.array(1.0 / (1.0 - p), np.float32), f"s{i}")]
            nodes += [helper.make_node("RandomUniformLike", [f"like{i}"], [f"u{i}"]),
                      helper.make_node("GreaterOrEqual", [f"u{i}", f"p{i}"], [f"k{i}"]),
                      helper.make_node("Cast", [f"k{i}"], [f"kf{i}"], to=TensorProto.FLOAT),
                      helper.make_node("Mul", [f"kf{i}", f"s{i}"], [out])]
        else:  # categorical: one-hot of the argmax of k uniforms
            k = int(sp.params["k"])
            inits += [numpy_helper.from_array(np.array(k, np.int64), f"depth{i}"),
                      numpy_helper.from_array(np.array([0.0, 1.0], np.float32), f"vals{i}")]
            nodes += [helper.make_node("RandomUniformLike", [f"like{i}"], [f"u{i}"]),
                      helper.make_node("ArgMax", [f"u{i}"], [f"a{i}"], axis=-1, keepdims=0),
                      helper.make_node("OneHot", [f"a{i}", f"depth{i}", f"vals{i}"], [out], axis=-1)]
        outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, shape))
    graph = helper.make_graph(nodes, "ingraph_noise", [x], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feed = {"x": np.zeros((1,), np.float32)}
    names = [o.name for o in outputs]
    return lambda: sess.run(names, feed)


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

    def patched(sampler):
        def run():
            session.sample_noise_rows = sampler
            try:
                rt.predict(x, samples=samples)
            finally:
                session.sample_noise_rows = shipped
        return run

    calls: Dict[str, Callable[[], object]] = {
        "noise_before": lambda: old_rows(m.noise, rows, g),
        "noise_after": lambda: sample_noise_rows(m.noise, rows, g),
        "noise_stream1": lambda: stream1_rows(m.noise, rows, g),
        "noise_plain": lambda: stream2_plain_rows(m.noise, rows, g),
        "noise_mixed_multiply": lambda: stream2_mixed_multiply_rows(m.noise, rows, g),
        "predict_mixed_multiply": patched(stream2_mixed_multiply_rows),
        "predict_before": patched(old_rows),
        "predict_plain": patched(stream2_plain_rows),
        "predict_after": lambda: rt.predict(x, samples=samples),
        "noise_ort_ingraph": ingraph_noise_session(m.noise, rows),
    }
    for fn in calls.values():  # warm-up
        for _ in range(3):
            fn()
    order_rng = np.random.default_rng(seed)
    t = {k: np.empty(rounds) for k in calls}
    cpu = {k: np.empty(rounds) for k in calls}   # this thread's CPU time (ONNX Runtime, 1 thread, runs in it)
    names = list(calls)
    for r in range(rounds):
        for i in order_rng.permutation(len(names)):
            k = names[i]
            c0 = time.thread_time()
            t0 = time.perf_counter()
            calls[k]()
            t[k][r] = time.perf_counter() - t0
            cpu[k][r] = time.thread_time() - c0
    share_b = t["noise_before"] / t["predict_before"]
    share_a = t["noise_after"] / t["predict_after"]
    cpu_ok = bool(np.all(cpu["predict_after"] > 0))
    share_cpu = cpu["noise_after"] / np.where(cpu["predict_after"] > 0, cpu["predict_after"], np.nan)
    speed = t["noise_before"] / t["noise_after"]
    speed1 = cpu["noise_stream1"] / np.where(cpu["noise_after"] > 0, cpu["noise_after"], np.nan)
    plain = cpu["noise_plain"] / np.where(cpu["noise_after"] > 0, cpu["noise_after"], np.nan)
    share_plain = cpu["noise_plain"] / np.where(cpu["predict_plain"] > 0, cpu["predict_plain"], np.nan)
    mixed = cpu["noise_mixed_multiply"] / np.where(cpu["noise_after"] > 0, cpu["noise_after"], np.nan)
    share_mixed = cpu["noise_mixed_multiply"] / np.where(cpu["predict_mixed_multiply"] > 0,
                                                         cpu["predict_mixed_multiply"], np.nan)
    ingraph = t["noise_ort_ingraph"] / t["noise_after"]
    br = np.random.default_rng(seed + 1)
    elems = sum(int(np.prod(s.shape)) for s in m.noise)
    return {
        "bundle": bundle, "model": m.model_name, "noise_kinds": sorted({s.kind for s in m.noise}),
        "noise_elements_per_row": elems, "words_per_row": words_per_row(m.noise), "batch": batch,
        "samples": samples, "rounds": rounds,
        "median_ms": {k: 1e3 * float(np.median(v)) for k, v in t.items()},
        "noise_share_before": {"median": float(np.median(share_b)), "ci95": bootstrap(share_b, br)},
        "noise_share_after": {"median": float(np.median(share_a)), "ci95": bootstrap(share_a, br)},
        "noise_share_after_cpu": ({"median": float(np.median(share_cpu)), "ci95": bootstrap(share_cpu, br)}
                                  if cpu_ok else None),
        "median_cpu_ms": {k: 1e3 * float(np.median(v)) for k, v in cpu.items()},
        "noise_speedup_paired": {"median": float(np.median(speed)), "ci95": bootstrap(speed, br)},
        "noise_stream1_over_stream2_cpu": ({"median": float(np.nanmedian(speed1)), "ci95": bootstrap(speed1, br)}
                                           if cpu_ok and np.all(cpu["noise_after"] > 0) else None),
        "noise_plain_over_plan_cpu": ({"median": float(np.nanmedian(plain)), "ci95": bootstrap(plain, br)}
                                      if cpu_ok and np.all(cpu["noise_after"] > 0) else None),
        "noise_share_plain_cpu": ({"median": float(np.median(share_plain)), "ci95": bootstrap(share_plain, br)}
                                  if cpu_ok and np.all(cpu["predict_plain"] > 0) else None),
        "noise_mixed_multiply_over_plan_cpu": ({"median": float(np.nanmedian(mixed)), "ci95": bootstrap(mixed, br)}
                                               if cpu_ok and np.all(cpu["noise_after"] > 0) else None),
        "noise_share_mixed_multiply_cpu": ({"median": float(np.median(share_mixed)),
                                            "ci95": bootstrap(share_mixed, br)}
                                           if cpu_ok and np.all(cpu["predict_mixed_multiply"] > 0) else None),
        "ingraph_over_numpy_noise": {"median": float(np.median(ingraph)), "ci95": bootstrap(ingraph, br)},
        "predict_ratio_before_over_after": {"median": float(np.median(t["predict_before"] / t["predict_after"])),
                                            "ci95": bootstrap(t["predict_before"] / t["predict_after"], br)},
    }


def build_recipe_bundles(recipes, folder: Path, samples: int) -> List[str]:
    """Untrained bundles of catalog recipes (as bench/mc_overhead.py builds them)."""
    import torch

    from edgeuq.bundle import build_bundle
    from edgeuq.catalog import get_recipe
    from edgeuq.export import export_onnx
    from edgeuq.models import ModelConfig, build_model
    from edgeuq.training import save_checkpoint

    out = []
    for r in recipes:
        name, overrides = parse_recipe_arg(r)
        rec = get_recipe(name)
        cfg = ModelConfig.from_dict({**rec.model, **overrides}, input_length=int(rec.data["window"]),
                                    num_classes=len(rec.data["classes"]))
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        ck = save_checkpoint(model, folder / f"{r}-ck", tuple(rec.data["classes"]), float(rec.data["fs_hz"]))
        art = export_onnx(ck, folder / f"{r}-onnx", model=model)
        out.append(str(build_bundle(art, folder / f"{r.replace(':', '-')}-bundle", name, "0",
                                    default_samples=samples).root))
    return out


def recipe_label(arg: str) -> str:
    """The table's model name of a ``--recipes`` item: the recipe, then its overrides."""
    name, overrides = parse_recipe_arg(arg)
    return name + "".join(f" ({k} = {v})" for k, v in overrides.items())


def parse_recipe_arg(arg: str):
    """``RECIPE`` or ``RECIPE:key=value,...``: a catalog recipe, optionally with integer ``[model]``
    overrides (e.g. ``cwru-variational:stochastic_tokens=0``, the recipe without token pooling)."""
    name, _, rest = arg.partition(":")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key or not value.lstrip("-").isdigit():
            raise SystemExit(f"--recipes {arg!r}: overrides must be key=integer, got {item!r}")
        overrides[key] = int(value)
    return name, overrides


def _ci(d: dict, scale: float = 100.0, digits: int = 1) -> str:
    lo, hi = d["ci95"]
    return f"{scale * d['median']:.{digits}f} [{scale * lo:.{digits}f}, {scale * hi:.{digits}f}]"


def _met(r: dict) -> str:
    """``yes`` only if the median share is <= 10 % in wall time AND in CPU time (on a loaded machine
    the wall time of the longer predict call grows with preemption, which makes the wall share look
    smaller than the work is)."""
    cpu = r.get("noise_share_after_cpu")
    if cpu is None:
        return "not measured (no CPU time)"
    return "yes" if r["noise_share_after"]["median"] <= 0.10 and cpu["median"] <= 0.10 else "no"


def table(results: List[dict]):
    headers = ["model", "noise kinds", "noise elements / row", "predict ms (before -> after)",
               "noise ms (before -> after)", "noise share % before [95 % CI]", "noise share % after [95 % CI]",
               "<= 10 % (wall and CPU)", "noise share % after, thread CPU time [95 % CI]",
               "in-graph ORT noise / numpy stream [95 % CI]",
               "noise CPU ms, stream 1 -> 2 (paired ratio [95 % CI])",
               "noise share % CPU, per-spec decoder -> plan (noise paired ratio [95 % CI])",
               "noise share % CPU, mixed-type multiply -> in-place cast (noise paired ratio [95 % CI])"]
    rows = []
    for r in results:
        ms = r["median_ms"]
        rows.append([r["model"], ", ".join(r["noise_kinds"]), str(r["noise_elements_per_row"]),
                     f"{ms['predict_before']:.3f} -> {ms['predict_after']:.3f}",
                     f"{ms['noise_before']:.3f} -> {ms['noise_after']:.3f}",
                     _ci(r["noise_share_before"]), _ci(r["noise_share_after"]),
                     _met(r),
                     _ci(r["noise_share_after_cpu"]) if r.get("noise_share_after_cpu") else "not measured",
                     _ci(r["ingraph_over_numpy_noise"], 1.0, 2) + "x",
                     (f"{r['median_cpu_ms']['noise_stream1']:.3f} -> {r['median_cpu_ms']['noise_after']:.3f} "
                      f"({_ci(r['noise_stream1_over_stream2_cpu'], 1.0, 2)}x)")
                     if r.get("noise_stream1_over_stream2_cpu") else "not measured",
                     (f"{_ci(r['noise_share_plain_cpu'])} -> {_ci(r['noise_share_after_cpu'])} "
                      f"({_ci(r['noise_plain_over_plan_cpu'], 1.0, 2)}x)")
                     if r.get("noise_plain_over_plan_cpu") and r.get("noise_share_plain_cpu")
                     and r.get("noise_share_after_cpu") else "not measured",
                     (f"{_ci(r['noise_share_mixed_multiply_cpu'])} -> {_ci(r['noise_share_after_cpu'])} "
                      f"({_ci(r['noise_mixed_multiply_over_plan_cpu'], 1.0, 2)}x)")
                     if r.get("noise_mixed_multiply_over_plan_cpu") and r.get("noise_share_mixed_multiply_cpu")
                     and r.get("noise_share_after_cpu") else "not measured"])
    return headers, rows


def main() -> None:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="*")
    ap.add_argument("--recipes", nargs="*", default=[], help="catalog recipes to build untrained bundles of")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="60 rounds (a smoke run on a loaded machine)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    a = ap.parse_args()
    if not a.bundles and not a.recipes:
        ap.error("give BUNDLE paths or --recipes")
    from edgeuq.provenance import command_line, start, write_results
    from edgeuq.report import results_table
    from edgeuq_runtime.noise import NOISE_STREAM

    prov = start("quick" if a.quick else "full", 1)
    command = command_line("bench/noise_share.py")
    rounds = 60 if a.quick else a.rounds
    with tempfile.TemporaryDirectory(prefix="noise-share-") as tmp:
        labels = [None] * len(a.bundles) + [recipe_label(r) for r in a.recipes]
        bundles = list(a.bundles) + build_recipe_bundles(a.recipes, Path(tmp), a.samples)
        results = [measure(b, a.batch, a.samples, rounds, a.seed) for b in bundles]
    for r, label in zip(results, labels):
        if label is not None:
            r["model"] = label
    for r in results:
        r["bundle"] = os.path.basename(r["bundle"].rstrip("/"))
    for r in results:
        mixed = r["noise_share_mixed_multiply_cpu"]
        mixed_share = _ci(mixed) if mixed else "n/a"
        ratio = r["noise_mixed_multiply_over_plan_cpu"]
        mixed_ratio = ratio["median"] if ratio else float("nan")
        print(f"{r['model']} ({', '.join(r['noise_kinds'])}; {r['noise_elements_per_row']} noise elements per row), "
              f"B={r['batch']} S={r['samples']}, {r['rounds']} rounds: predict {r['median_ms']['predict_before']:.3f}"
              f" -> {r['median_ms']['predict_after']:.3f} ms; noise {r['median_ms']['noise_before']:.3f} -> "
              f"{r['median_ms']['noise_after']:.3f} ms; noise share {_ci(r['noise_share_before'])} % -> "
              f"{_ci(r['noise_share_after'])} % (CPU {_ci(r['noise_share_after_cpu']) if r['noise_share_after_cpu'] else 'n/a'} %); "
              f"noise speed-up x{r['noise_speedup_paired']['median']:.2f}; "
              f"in-graph ORT noise {r['median_ms']['noise_ort_ingraph']:.3f} ms "
              f"(x{r['ingraph_over_numpy_noise']['median']:.2f} the numpy stream); CPU share per-spec decoder -> "
              f"plan {_ci(r['noise_share_plain_cpu']) if r['noise_share_plain_cpu'] else 'n/a'} -> "
              f"{_ci(r['noise_share_after_cpu']) if r['noise_share_after_cpu'] else 'n/a'} %; CPU share mixed-type "
              f"multiply -> in-place cast {mixed_share} -> "
              f"{_ci(r['noise_share_after_cpu']) if r['noise_share_after_cpu'] else 'n/a'} % (noise x{mixed_ratio:.2f})")
    print(f"load average {os.getloadavg()}")
    if a.json:
        headers, rows = table(results)
        note = (f"B={a.batch}, S={a.samples}, one thread, {rounds} rounds, every callable once per round in a "
                "seeded random order; share = noise / predict of the same round; untrained weights where built "
                "from --recipes; 'before' = float32 uniforms / numpy normals one call per spec; 'after' = noise stream "
                f"{NOISE_STREAM} (8-bit dropout thresholds where p moves by <= 2 %, else 16; 16-bit midpoint "
                "uniforms and normals from the table of 2**16 N(0, 1) cell means); stream 1 = the previous stream "
                "(16-bit dropout thresholds, Box-Muller, 32-bit uniforms); 'after' decodes through the specs' cached "
                "plan (one compare per run of dropout specs with one threshold, then one float32 cast and in-place "
                "scale per spec; normals one gather per spec on a shaped index view), 'mixed-type multiply' = the "
                "plans before that (one np.multiply(keep, scale, dtype=float32) per spec, same values, predict with "
                "it patched in, same rounds), 'per-spec decoder' = the same stream-2 values decoded "
                "spec by spec as before the plans (predict with it patched in, same rounds); a model named "
                "'(key = value)' is its recipe with that [model] override (stochastic_tokens = 0: without token "
                "pooling, the recipe's model before it pooled); in-graph = the same noise drawn by ONNX "
                "Runtime random ops (not seeded reproducibly across runtimes)")
        write_results(a.json, results_table(headers, rows, note=note, results=results), command, prov)
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
