"""Every registered lowerer (edgeuq.lower.base.LOWERERS: the built-ins found by scanning
edgeuq/lower/ for ``@register_lowerer``, plus ``edgeuq.lowerer`` entry points) lowers a tiny
exported model for a cheap host-checkable target, and its Evidence record is honest:

* the kind is one of EVIDENCE_KINDS and survives its JSON round trip;
* a measured error names its reference and its tolerance, is finite and within it;
* nothing measured means an explicit reason (``not measured`` is never ``met``);
* simulation / emulation / compile-only never carry a latency;
* independently of the lowerer's own check, every compiled graph that this host can load is run
  by the device runtime's executor and compared with onnxruntime on the exported ONNX graph (same
  inputs); a graph this host cannot load (the FPGA head: pynq lives in .venv-pynq, where
  runtime/tests/test_rt_pynq_sim.py runs it) is named on the console and must then not claim
  ``native`` evidence; at least one graph of every artifact is re-run.

A new lowerer fails ``test_every_lowerer_has_a_case`` until it is given a case here (a target and
cheap options). hls4ml's C simulation of the tiny head takes ~5 s, so it is in; the whole suite
runs in well under a minute (TVM without tuning, 4 samples)."""
from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeuq.export import export_onnx
from edgeuq.lower.base import EVIDENCE_KINDS, LOWERERS, Evidence, get_lowerer, lower
from edgeuq.models import ModelConfig, build_model
from edgeuq.training import save_checkpoint
from edgeuq_runtime.errors import BackendError
from edgeuq_runtime.executors import EXECUTORS, load_graph
from edgeuq_runtime.noise import sample_noise_rows

from chain import CLASSES, FS, TINY, windows
from require_extras import require_extra

pytestmark = pytest.mark.usefixtures("one_torch_thread")
LOWER_PKG = Path(__file__).resolve().parents[2] / "edgeuq" / "lower"
ROWS, SEED = 4, 3


def _scanned_lowerers():
    """``name`` of every ``@register_lowerer("name")`` in edgeuq/lower/ (source scan: no import)."""
    names = set()
    for path in LOWER_PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "register_lowerer"
                    and node.args and isinstance(node.args[0], ast.Constant)):
                names.add(node.args[0].value)
    return names


def _cpu_target():
    from edgeuq.catalog import get_target

    return get_target("x86-64")


def _fpga_target():
    from edgeuq.catalog import ComputeTarget

    return ComputeTarget(name="fpga-conformance", kind="fpga", description="conformance FPGA target", arch="fpga",
                         fpga_part="xc7z020clg400-1", clock_mhz=100.0)


def _tvm_case():
    require_extra("tvm", "tvm")
    return _cpu_target(), dict(samples=4)


def _hls4ml_case():
    require_extra("hls4ml", "fpga")
    return _fpga_target(), dict(probe_rows=64)


#: lowerer -> () -> (target, keyword options). Each a target this host checks cheaply.
CASES = {"onnxruntime": lambda: (_cpu_target(), {}), "tvm": _tvm_case, "hls4ml": _hls4ml_case}
#: graphs lowered for a stochastic head only (hls4ml builds the head as an FPGA IP)
HEAD_ONLY = dict(stochastic_blocks=(), stochastic_head=True)


def test_scan_sees_the_builtin_lowerers():
    assert {"onnxruntime", "tvm", "hls4ml"} <= _scanned_lowerers()


def test_every_lowerer_has_a_case():
    names = _scanned_lowerers() | set(LOWERERS.load_entry_points()) | set(LOWERERS.names())
    missing = sorted(names - set(CASES))
    assert not missing, f"lowerers without a conformance case in {__file__}: {missing}"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("lowerers")
    torch.manual_seed(0)
    model = build_model(ModelConfig(**TINY, scheme="mc_dropout", **HEAD_ONLY)).eval()
    with torch.no_grad():  # logits spread over several units, as a trained head's are
        model.head.fc2.weight.mul_(12.0)
    ck = save_checkpoint(model, root / "ck", CLASSES, FS)
    return export_onnx(ck, root / "onnx"), root


def _feeds(art, role: str, rows: int, rng: np.random.Generator):
    import onnxruntime as ort

    x = windows(rows, seed=SEED)
    trunk = ort.InferenceSession(str(art.trunk_path), providers=["CPUExecutionProvider"])
    trunk_feeds = {trunk.get_inputs()[0].name: x.reshape(rows, *trunk.get_inputs()[0].shape[1:])}
    if role == "trunk":
        return trunk_feeds
    features = trunk.run(None, trunk_feeds)[0]
    return {art.feature_name: features, **sample_noise_rows(art.noise, rows, rng)}


def _onnx_reference(path: Path, feeds):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feeds.items() if k in names})[0]


def _check_evidence_record(ev: Evidence) -> None:
    assert ev.how in EVIDENCE_KINDS
    assert Evidence.from_json(ev.to_json()) == ev, "the evidence does not survive its JSON round trip"
    if ev.max_error is not None:
        assert ev.reference.strip(), "a measured error must name what it was measured against"
        assert ev.tolerance is not None, "a measured error must say which tolerance it passed"
        assert math.isfinite(ev.max_error) and math.isfinite(ev.tolerance)
        assert ev.max_error <= ev.tolerance, (ev.max_error, ev.tolerance)   # NaN already refused above
    else:
        assert ev.reason.strip(), f"{ev.how} evidence with no measured error must say why (not measured != met)"
    if ev.latency_ms is not None:
        assert ev.how in ("native", "remote"), f"{ev.how} evidence claims a latency: only a real run measures one"
        assert math.isfinite(ev.latency_ms) and ev.latency_ms > 0


@pytest.mark.parametrize("name", sorted(CASES))
def test_lowerer_lowers_and_its_evidence_is_honest(name, exported, tmp_path, capsys):
    art, _ = exported
    target, options = CASES[name]()
    assert name in LOWERERS.names() or get_lowerer(name)   # importable through the registry
    compiled = lower(name, art, target, tmp_path / name, **options)
    ev = compiled.evidence
    _check_evidence_record(ev)
    stored = compiled.save(tmp_path / f"{name}-stored")
    assert stored.evidence == ev

    rng = np.random.default_rng(SEED)
    ran = []
    for role in ("trunk", "head"):
        graph = getattr(compiled, role)
        onnx_path = Path(art.trunk_path if role == "trunk" else art.head_path)
        if graph.executor not in EXECUTORS:
            with capsys.disabled():
                print(f"\n[conformance] {name}: {role} graph runs on executor {graph.executor!r}, which this "
                      f"environment does not load: not re-run here (evidence: {ev.how}, {ev.summary()})")
            assert ev.how != "native", "a graph this host cannot run cannot have native evidence"
            continue
        try:
            runner = load_graph(graph.executor, graph.file, options=dict(graph.options))
        except (ImportError, BackendError) as exc:  # e.g. pynq is not installed in this environment
            with capsys.disabled():
                print(f"\n[conformance] {name}: {role} graph not loadable here by executor {graph.executor!r} "
                      f"({str(exc)[:160]}): not re-run (evidence: {ev.how}, {ev.summary()})")
            assert ev.how != "native", "a graph this host cannot load cannot have native evidence"
            continue
        feeds = _feeds(art, role, ROWS, rng)
        want = _onnx_reference(onnx_path, feeds)
        got = runner.run({k: v for k, v in feeds.items() if k in set(runner.input_names)})
        got = got[runner.output_names[0]]
        err = float(np.max(np.abs(np.asarray(got, np.float64) - want)))
        tol = 1e-4 if ev.tolerance is None else max(ev.tolerance, 1e-4)
        assert not err > tol and not math.isnan(err), f"{name} {role}: |lowered - onnx| {err:.3g} > {tol:g}"
        ran.append(role)
    assert ran, f"{name}: no graph of its artifact could be re-run on this host"
