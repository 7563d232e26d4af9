"""Every registered scheme: export -> bundle -> runtime agrees with PyTorch (same noise stream)
and the runtime's results do not depend on ``max_batch``.

Tolerance: float32 graphs vs float32 PyTorch on a 2-block, width-16 model; probabilities differ
by accumulation order only (~1e-7 measured); 1e-5 catches a wrong noise row, site or scale."""
import pytest

from edgeuq.bundle import build_bundle
from edgeuq.schemes import scheme_names
from edgeuq_runtime import UncertaintyRuntime

from chain import export_tiny, max_err, torch_reference, windows

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TOL = 1e-5
S, N, SEED = 4, 5, 3


@pytest.fixture(scope="module", params=scheme_names())
def chain(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    model, art = export_tiny(request.param, root)
    bundle = build_bundle(art, root / "bundle", "conformance", "0.1.0", default_samples=S).root
    return request.param, model, art, bundle


def test_runtime_agrees_with_pytorch(chain):
    name, model, art, bundle = chain
    x = windows(N)
    got = UncertaintyRuntime(bundle).predict(x, samples=S, seed=SEED).samples
    want = torch_reference(model, art, x, S, SEED)
    assert got.shape == want.shape == (S, N, 3), name
    err = max_err(got, want)
    assert err <= TOL, f"{name}: runtime vs PyTorch {err:.3g} > {TOL}"


def test_a_wrong_noise_stream_is_caught(chain):
    """Control: the comparison can fail (another seed's noise moves a stochastic scheme's
    probabilities by far more than the tolerance; a one-pass scheme draws no noise)."""
    name, model, art, bundle = chain
    if not art.noise:
        pytest.skip(f"{name}: one deterministic pass, no noise stream to get wrong")
    x = windows(N)
    other = torch_reference(model, art, x, S, SEED + 1)
    # chain.export_tiny fits a model whose unfitted post-hoc part would leave the noise unused (Laplace)
    assert not max_err(other, torch_reference(model, art, x, S, SEED)) <= TOL, \
        f"{name}: another seed's noise does not move the tiny model's outputs, so this control could not fail"
    got = UncertaintyRuntime(bundle).predict(x, samples=S, seed=SEED).samples
    assert not max_err(got, other) <= TOL, name


@pytest.mark.parametrize("max_batch", [1, 3, 7])
def test_runtime_is_invariant_to_max_batch(chain, max_batch):
    name, _, _, bundle = chain
    x = windows(N)
    ref = UncertaintyRuntime(bundle).predict(x, samples=S, seed=SEED)
    got = UncertaintyRuntime(bundle, max_batch=max_batch).predict(x, samples=S, seed=SEED)
    for field in ("samples", "total", "epistemic"):
        err = max_err(getattr(got, field), getattr(ref, field))
        assert err <= 1e-6, (name, max_batch, field, err)
