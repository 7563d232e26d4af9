"""The tuning database shipped with the package (demo architecture, x86 targets) and the fast
transcendental functions of CPU kernels: found, applied to the demo graphs with
``tune_trials=0`` (evidence says so), ignored by other architectures, results still equal
ONNX Runtime's; the fast softmax / erf / exp against independent references."""
from __future__ import annotations

import json

import numpy as np
import pytest
from require_extras import require_extra

require_extra("tvm", "tvm")

from edgeuq.catalog import get_target  # noqa: E402
from edgeuq.lower import lower  # noqa: E402
from edgeuq.lower.tvm.shipped import demo_graphs, prune_into  # noqa: E402
from edgeuq.lower.tvm.targets import detect_host_target, is_native  # noqa: E402
from edgeuq.lower.tvm.tune import SHIPPED_ROOT, SHIPPED_STATE, database_size, shipped_dir  # noqa: E402

SHIPPED_TARGETS = ("x86-64", "x86-64-avx2", "x86-64-avx512")
#: every shipped folder: the targets' own databases and the copies retuned on one CPU vendor's machines
SHIPPED_FOLDERS = SHIPPED_TARGETS + ("x86-64@intel", "x86-64-avx2@intel", "x86-64-avx512@intel")


def expected_dir(name):
    """The shipped folder a lowering for ``name`` on this host consults (the host vendor's copy when
    the package ships one and the target runs here)."""
    from edgeuq.lower.tvm.lowerer import TvmOptions, database_vendor

    return shipped_dir(name, database_vendor(get_target(name), TvmOptions()))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    # other weights than the ones the database was tuned with: tasks depend on shapes only
    import torch

    torch.manual_seed(123)
    return demo_graphs(tmp_path_factory.mktemp("demo"))


@pytest.mark.parametrize("folder", SHIPPED_FOLDERS)
def test_shipped_database_is_packaged_small_and_pruned(folder):
    name, _, vendor = folder.partition("@")
    d = shipped_dir(name, vendor or None)
    assert d is not None and d == SHIPPED_ROOT / folder, f"no shipped database {folder} in {SHIPPED_ROOT}"
    workloads = [json.loads(line) for line in (d / "database_workload.json").read_text().splitlines() if line]
    records = [json.loads(line) for line in (d / "database_tuning_record.json").read_text().splitlines() if line]
    assert len(records) == database_size(d) >= 10
    # pruned: one best record per workload, each pointing at a stored workload
    assert sorted(r[0] for r in records) == list(range(len(workloads)))
    prov = json.loads((d / "provenance.json").read_text())
    assert prov["target"] == name and prov["shipped_records"] == len(records) and prov["trials_per_task"]["max"] >= 1
    assert prov.get("vendor") == (vendor or None)
    if vendor:      # a vendor's copy: the target's database with tasks re-timed or retuned there, none lost
        base = {json.dumps(w[1]) for w in map(json.loads, (SHIPPED_ROOT / name / "database_workload.json")
                                              .read_text().splitlines()) if w}
        assert {json.dumps(w[1]) for w in workloads} >= base and prov["base"]["folder"] == name
    size = sum(f.stat().st_size for f in d.iterdir())
    # each workload is stored with its TIR (~65 kB): one per task and shape bucket (S = 1, 4, 8, 16: 54 for AVX-512;
    # a vendor's copy also keeps every base workload and adds the tasks it timed that the base lacks)
    assert size < 4_500_000, f"{name}: shipped database is {size} bytes"
    assert shipped_dir("cortex-a72") is None


def test_pyproject_ships_the_databases_as_package_data():
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    setup = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "edgeuq.lower.tvm.tuning" in setup["packages"]
    patterns = setup["package-data"]["edgeuq.lower.tvm.tuning"]
    shipped = {p for pat in patterns for p in SHIPPED_ROOT.glob(pat)}
    assert sorted(p.name for p in SHIPPED_ROOT.iterdir() if p.is_dir() and p.name != "__pycache__") == \
        sorted(SHIPPED_FOLDERS)
    for name in SHIPPED_FOLDERS:
        files = set((SHIPPED_ROOT / name).iterdir())
        assert files and files <= shipped, (sorted(files - shipped), patterns)


@pytest.fixture(scope="module")
def shipped_builds(demo, tmp_path_factory):
    """The demo graphs lowered with tune_trials=0 and an empty user database, per shipped target
    this host runs natively (x86-64, and the host-ISA one where it is shipped)."""
    out = {}
    for name in dict.fromkeys(["x86-64", detect_host_target()]):
        if name in SHIPPED_TARGETS:
            root = tmp_path_factory.mktemp(name)
            out[name] = lower("tvm", demo, get_target(name), root / "lib", tuning_root=root / "empty-db", samples=16)
    return out


@pytest.mark.parametrize("name", ["x86-64", "host"])
def test_shipped_database_applied_to_demo_graphs_and_matches_onnxruntime(demo, shipped_builds, tmp_path, name):
    name = detect_host_target() if name == "host" else name
    if name not in shipped_builds:
        pytest.skip(f"no shipped database for this host's ISA target {name}")
    res, target = shipped_builds[name], get_target(name)
    md = res.metadata
    assert md["tuning"] == SHIPPED_STATE
    for role, rows in (("trunk", 1), ("head", 16)):
        tuning = md["graphs"][role]["tuning"]
        assert tuning["state"] == SHIPPED_STATE and tuning["records"] == 0 and tuning["trials"] == 0
        assert tuning["shipped_database"] == str(expected_dir(name))
        assert tuning["shipped_tasks"] >= 8 and tuning["shipped_tasks"] <= tuning["tasks"]
        opts = getattr(res, role).options                           # static shapes the database was tuned for
        assert opts["batch"] == max(opts.get("buckets") or [rows]) and rows in (opts.get("buckets") or [rows])
    shipped = md["shipped_database"]        # which database: the one tuned for exactly this target
    assert shipped["used"] and shipped["target"] == name and shipped["folder"] == expected_dir(name).name
    assert shipped["records_measured"] > 0 and shipped["folder"].startswith(name)
    ev = res.evidence
    assert is_native(target) and ev.how == "native"
    for role in ("trunk", "head"):
        assert ev.detail["max_abs_err"][role] <= ev.detail["tolerance"][role] < 1e-2
    # the same graphs with the shipped database switched off: a plain untuned (dynamic) build
    plain = lower("tvm", demo, target, tmp_path / "plain", tuning_root=tmp_path / "empty-db", samples=16,
                  check="none", shipped_database=False, graphs=["trunk"])
    assert plain.metadata["tuning"] == "untuned" and plain.trunk.options["batch"] is None
    assert plain.metadata["shipped_database"] == {"used": False, "why": "switched off (shipped_database=False)"}


def test_executor_inputs_in_place_staged_or_read_only_give_the_same_results(demo, shipped_builds):
    """The tvm executor reads 64-byte-aligned arrays in place and copies others (misaligned,
    read-only, strided) into aligned staging buffers: every form gives ONNX Runtime's result,
    also over several calls and chunks (staging buffers are reused)."""
    from edgeuq.lower.tvm.numerics import max_error, ort_outputs, reference_feeds
    from edgeuq_runtime.executors.tvm import load_tvm

    res = shipped_builds["x86-64"]
    feeds = reference_feeds(demo, batch=3, samples=16)["head"]     # 48 rows: 3 calls of the 16-row library
    ref = ort_outputs(demo.head_path, feeds)
    graph = load_tvm(res.head.file, 1, res.head.options)

    def aligned(a, shift):
        raw = np.empty(a.nbytes + 128, np.uint8)
        off = (-raw.ctypes.data) % 64 + shift
        v = raw[off:off + a.nbytes].view(a.dtype).reshape(a.shape)
        v[...] = a
        assert (v.ctypes.data % 64 == 0) == (shift == 0)
        return v

    def read_only(a):
        b = aligned(a, 0)
        b.flags.writeable = False
        return b

    forms = {"aligned": lambda a: aligned(a, 0), "misaligned": lambda a: aligned(a, 4), "read-only": read_only,
             "strided": lambda a: np.repeat(a, 2, axis=0)[::2]}
    tol = 1e-4 + 1e-4 * max(float(np.max(np.abs(v))) for v in ref.values())
    for name, make in forms.items():
        for _ in range(2):
            got = graph.run({k: make(v) for k, v in feeds.items()})
            assert max_error(got, ref) <= tol, name


@pytest.mark.parametrize("name", ["x86-64", "host"])
def test_head_shape_buckets_are_the_tuned_ones_and_match_onnxruntime_for_any_samples(demo, shipped_builds, name):
    """The tuned head holds one function per shape bucket whose matmul kernels the shipped database
    covers (the metadata's coverage says which, independently recomputed here); the executor runs
    S = 1, 3, 8, 16, 33 in the smallest bucket holding them, and every S gives ONNX Runtime's output."""
    from edgeuq.lower.tvm.numerics import max_error, ort_outputs, reference_feeds
    from edgeuq_runtime.executors.tvm import load_tvm

    name = detect_host_target() if name == "host" else name
    if name not in shipped_builds:
        pytest.skip(f"no shipped database for this host's ISA target {name}")
    res = shipped_builds[name]
    head = res.metadata["graphs"]["head"]
    covered = [int(r) for r, c in head["bucket_coverage"].items() if c.split("/")[0] == c.split("/")[1] != "0"]
    assert head["buckets"] == sorted({16, *covered}) == res.head.options.get("buckets", [16])
    # independently: the demo head's matmul tasks per S (the tuning tool's own extraction), looked up
    # one by one in the shipped database
    from edgeuq.lower.tvm.shipped import demo_tasks
    from edgeuq.lower.tvm.targets import tvm_target
    from edgeuq.lower.tvm.tune import _ReadOnlyCopy, _has_record

    copy = _ReadOnlyCopy(expected_dir(name))
    try:
        expect = [16]
        for s in (1, 4, 8, 32):
            heavy = [t for t in demo_tasks(demo, tvm_target(get_target(name), num_cores=1), samples=s, graphs=["head"])
                     if "matmul" in t.task_name]
            assert head["bucket_coverage"][str(s)] == f"{sum(_has_record(copy.db, t) for t in heavy)}/{len(heavy)}"
            if heavy and all(_has_record(copy.db, t) for t in heavy):
                expect.append(s)
    finally:
        copy.close()
    assert head["buckets"] == sorted(expect)
    if name in ("x86-64-avx512", "x86-64-avx2"):
        assert 1 in head["buckets"], f"the shipped {name} database covers the S = 1 head (tuned for it)"
        assert 4 in head["buckets"], f"the shipped {name} database covers the S = 4 head (tuned for it)"
        assert 8 in head["buckets"], f"the shipped {name} database covers the S = 8 head (tuned for it)"
    graph = load_tvm(res.head.file, 1, res.head.options)
    for s in (1, 3, 8, 16, 33):
        feeds = reference_feeds(demo, batch=1, samples=s)["head"]
        ref = ort_outputs(demo.head_path, feeds)
        tol = 1e-4 + 1e-4 * max(float(np.max(np.abs(v))) for v in ref.values())
        got = graph.run(feeds)
        assert got["logits"].shape == ref["logits"].shape and max_error(got, ref) <= tol, s
        assert graph.bucket_for(min(s, graph.batch)) == min(b for b in head["buckets"] if b >= min(s, graph.batch))


def test_other_architectures_fall_back_to_untuned(tmp_path):
    """A model whose kernels have other shapes finds no shipped record: untuned, dynamic batch."""
    import torch

    from edgeuq.export import export_onnx
    from edgeuq.models import ModelConfig, SignalTransformer
    from edgeuq.training import save_checkpoint

    torch.manual_seed(0)
    cfg = ModelConfig(input_length=128, num_classes=3, patch=16, d_model=16, heads=2, depth=2, ffn=16,
                      stochastic_blocks=(1,))
    art = export_onnx(save_checkpoint(SignalTransformer(cfg).eval(), tmp_path / "ck", ("a", "b", "c"), 1.0),
                      tmp_path / "onnx")
    res = lower("tvm", art, get_target("x86-64"), tmp_path / "out", samples=16, tuning_root=tmp_path / "db",
                check="none")
    assert res.metadata["tuning"] == "untuned"
    assert res.trunk.options["batch"] is None and res.head.options["batch"] is None


def test_prune_keeps_whole_lines_of_an_interrupted_work_database(tmp_path):
    """A tuning run stopped by `timeout` can leave half a line; pruning skips it and keeps the
    best record per workload."""
    src = shipped_dir("x86-64")
    assert src is not None
    work = tmp_path / "work"
    work.mkdir()
    wl = (src / "database_workload.json").read_text()
    recs = (src / "database_tuning_record.json").read_text().splitlines()
    (work / "database_workload.json").write_text(wl)
    worse = []
    for line in recs:                       # a slower duplicate of every record: must not survive pruning
        r = json.loads(line)
        r[1][1] = [float(t) * 10 for t in r[1][1]]
        worse.append(json.dumps(r))
    (work / "database_tuning_record.json").write_text("\n".join(worse + recs) + "\n" + recs[0][: len(recs[0]) // 2])
    assert prune_into(work, tmp_path / "out") == len(recs)
    best = {json.loads(line)[0]: json.loads(line)[1][1] for line in recs}
    out = [json.loads(line) for line in (tmp_path / "out" / "database_tuning_record.json").read_text().splitlines()]
    got_times = sorted(np.mean(r[1][1]) for r in out)
    assert np.allclose(got_times, sorted(np.mean(v) for v in best.values()))


def test_fast_math_kernels_match_independent_references():
    """softmax / erf / exp legalized through the fast versions agree with numpy / scipy to float32
    accuracy over a wide input range, and the kernels no longer call the scalar libm functions."""
    import tvm
    from scipy.special import erf as sp_erf
    from tvm import relax

    from edgeuq.lower.tvm.fastmath import fast_math_legalize

    x = np.concatenate([np.linspace(-30, 30, 4001), np.random.default_rng(0).standard_normal(4099) * 4])
    x = x.astype(np.float32).reshape(-1, 81)
    bb = relax.BlockBuilder()
    v = relax.Var("x", relax.TensorType(x.shape, "float32"))
    with bb.function("main", [v]):
        with bb.dataflow():
            out = bb.emit_output(relax.Tuple([relax.op.nn.softmax(v, axis=-1), relax.op.erf(v),
                                              relax.op.exp(relax.op.clip(v, -80.0, 80.0))]))
        bb.emit_func_output(out)
    target = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu"})
    with target:
        mod = fast_math_legalize()(bb.get())
    script = mod.script()
    for scalar in ("T.exp(", "T.erf("):
        assert scalar not in script, f"{scalar} left in the legalized kernels"
    vm = relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())
    sm, er, ex = (o.numpy() for o in vm["main"](tvm.runtime.tensor(x, tvm.cpu())))
    x64 = x.astype(np.float64)
    ref_sm = np.exp(x64 - x64.max(-1, keepdims=True))
    ref_sm /= ref_sm.sum(-1, keepdims=True)
    ref_ex = np.exp(np.clip(x64, -80, 80))
    assert np.max(np.abs(sm - ref_sm)) <= 1e-6
    assert np.max(np.abs(er - sp_erf(x64))) <= 1e-6
    assert np.max(np.abs(ex - ref_ex) / ref_ex) <= 1e-5


def test_tuning_host_says_when_the_host_isa_is_wider_than_the_target(monkeypatch):
    """The provenance names where trials were measured: AVX2 code tuned on an AVX-512 host says so
    (with the extra flags), a host at the target's own level says that."""
    from edgeuq import hostcpu
    from edgeuq.lower.tvm.shipped import tuning_host

    avx2 = frozenset({"sse2", "avx", "avx2", "fma", "bmi2", "f16c"})
    monkeypatch.setattr(hostcpu, "cpu_flags", lambda *a: avx2 | {"avx512f", "avx512bw", "avx512dq", "avx512vl"})
    wide = tuning_host("x86-64-avx2")
    assert "wider ISA than the target" in wide and "avx512f" in wide and "host target x86-64-avx512" in wide
    assert tuning_host("x86-64-avx512").endswith("the target's own ISA level")
    monkeypatch.setattr(hostcpu, "cpu_flags", lambda *a: avx2)
    assert tuning_host("x86-64-avx2").endswith("the target's own ISA level")
    assert "(AVX2, host target x86-64-avx2)" in tuning_host("x86-64-avx2")


def test_tuning_search_knobs_reach_the_evolutionary_search(monkeypatch, tmp_path):
    """``--population`` / ``--genetic-iters`` (a busy tuning host: less search CPU between measured
    trials) become the evolutionary search's population and genetic iterations; without them TVM's
    default strategy runs; values below 1 are refused by name."""
    from types import SimpleNamespace

    from tvm.s_tir import meta_schedule as ms

    from edgeuq.lower.tvm import shipped

    made, passed = [], []
    monkeypatch.setattr(ms.search_strategy, "EvolutionarySearch", lambda **kw: made.append(kw) or ("evo", kw))
    monkeypatch.setattr(ms.relax_integration, "extracted_tasks_to_tune_contexts",
                        lambda **kw: passed.append(kw["strategy"]) or ([], []))
    monkeypatch.setattr(ms.tune, "tune_tasks", lambda **kw: None)
    tasks = [SimpleNamespace(task_name="fused_matmul_add"), SimpleNamespace(task_name="softmax")]
    shipped.tune_demo(tasks, tmp_path / "a", 4, 2, say=lambda m: None, population=64, genetic_iters=1)
    assert made == [{"population_size": 64, "genetic_num_iters": 1}] * 2
    assert passed == [("evo", made[0])] * 2
    passed.clear()
    shipped.tune_demo(tasks, tmp_path / "b", 4, 2, say=lambda m: None)
    assert passed == ["evolutionary"] * 2 and len(made) == 2
    for flag in ("--population", "--genetic-iters"):
        with pytest.raises(SystemExit):
            shipped.main(["--target", "x86-64", flag, "0", "--prune-only", "--work", str(tmp_path / "c")])


def test_prune_exclude_leaves_out_only_the_named_kernels_records(tmp_path):
    """``--exclude softmax``: the shipped copy has no record for a softmax workload (it compiles with
    TVM's default schedule) and every other workload's best record is still there."""
    from edgeuq.lower.tvm.tune import open_database

    src = shipped_dir("x86-64")
    assert src is not None

    def by_kind(folder):
        out = {}
        for rec in open_database(folder).get_all_tuning_records():
            text = rec.workload.mod.script()
            out.setdefault("softmax" in text, []).append(round(float(np.mean([float(t) for t in rec.run_secs])), 12))
        return {k: sorted(v) for k, v in out.items()}

    before = by_kind(src)
    assert before.get(True), "the x86-64 database has softmax records (else this test cannot fail)"
    n = prune_into(src, tmp_path / "out", exclude=["softmax"])
    after = by_kind(tmp_path / "out")
    assert True not in after, "a softmax record was shipped"
    assert after[False] == before[False] and n == len(before[False])
    assert prune_into(src, tmp_path / "all") == len(before[False]) + len(before[True])
