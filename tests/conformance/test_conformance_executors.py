"""Every registered executor (edgeuq_runtime.executors: package scan + entry points) runs a bundle
made for it by the host's own stages and agrees with PyTorch (same noise stream), invariant to the
runtime's ``max_batch``. One representative scheme per executor keeps this fast (every scheme
goes through ONNX Runtime in test_schemes.py).

A new executor fails ``test_every_executor_has_a_bundle_maker`` until it is given a maker here."""
from pathlib import Path

import pytest

from edgeuq.bundle import build_bundle
from edgeuq_runtime import UncertaintyRuntime
from edgeuq_runtime.executors import known_executors

from chain import export_tiny, max_err, torch_reference, windows
from require_extras import require_extra

pytestmark = pytest.mark.usefixtures("one_torch_thread")
S, N, SEED = 4, 6, 5
SCHEME = "mc_dropout"      # the representative: block and head noise, both graphs stochastic-fed


def _onnxruntime(art, root: Path) -> Path:
    return build_bundle(art, root / "bundle", "conformance", "0.1.0", default_samples=S).root


def _tvm(art, root: Path) -> Path:
    require_extra("tvm", "tvm")
    from edgeuq.lower.compile import compile_board

    res = compile_board("x86-host", art, root / "tvm", samples=S, tuning_root=root / "db", placement="default",
                        isa_variants=())
    return res.bundle.root


def _pynq(art, root: Path) -> Path:
    pytest.skip("the pynq executor needs pynq (numpy<2), which lives in .venv-pynq: its conformance run is "
                "runtime/tests/test_rt_pynq_sim.py on a simulated board, driven by tests/test_pynq_env.py")


#: executor -> (bundle maker, tolerance vs PyTorch). TVM compiles its own kernels (fused, other
#: accumulation order): 1e-4 on probabilities, as tests/test_lower_tvm.py measures against ORT.
MAKERS = {"onnxruntime": (_onnxruntime, 1e-5), "tvm": (_tvm, 1e-4), "pynq": (_pynq, 0.0)}


def test_every_executor_has_a_bundle_maker():
    missing = sorted(set(known_executors()) - set(MAKERS))
    assert not missing, f"executors without a conformance bundle maker in {__file__}: {missing}"


@pytest.fixture(scope="module", params=sorted(MAKERS))
def chain(request, tmp_path_factory):
    name = request.param
    root = tmp_path_factory.mktemp(name)
    model, art = export_tiny(SCHEME, root)
    make, tol = MAKERS[name]
    bundle = make(art, root)
    return name, model, art, bundle, tol


def test_executor_bundle_agrees_with_pytorch_and_says_its_executor(chain):
    name, model, art, bundle, tol = chain
    rt = UncertaintyRuntime(bundle)
    m = rt.manifest
    used = {g.backend or m.backend for g in (m.trunk, m.head)}      # a graph's own executor, else the bundle's
    assert name in used, (name, used)
    x = windows(N)
    err = max_err(rt.predict(x, samples=S, seed=SEED).samples, torch_reference(model, art, x, S, SEED))
    assert err <= tol, f"{name}: runtime vs PyTorch {err:.3g} > {tol}"


@pytest.mark.parametrize("max_batch", [1, 4])
def test_executor_bundle_is_invariant_to_max_batch(chain, max_batch):
    name, _, _, bundle, tol = chain
    x = windows(N)
    ref = UncertaintyRuntime(bundle).predict(x, samples=S, seed=SEED).samples
    got = UncertaintyRuntime(bundle, max_batch=max_batch).predict(x, samples=S, seed=SEED).samples
    err = max_err(got, ref)
    assert err <= tol, (name, max_batch, err)
