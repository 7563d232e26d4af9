"""Every registered compression step (edgeuq.compress.steps: package scan + entry points) takes a
tiny model of a scheme and returns a new model that still samples like one (S, B, C finite
probabilities through the one MC sampler, the same noise inputs), leaving its input unchanged;
and its output goes the whole chain: step -> save_checkpoint -> load_checkpoint (the config alone
rebuilds the architecture: pruned widths, factorised ranks) -> ONNX export -> bundle -> device
runtime, which agrees with the step's own PyTorch model on the runtime's noise stream.

A new step fails ``test_every_step_has_conformance_options`` until it is given options here.
Tolerance as in test_conformance_schemes.py (float32 graphs vs float32 PyTorch, ~1e-7 measured)."""
import numpy as np
import pytest
import torch

from edgeuq.bundle import build_bundle
from edgeuq.compress.steps import COMPRESSION_STEPS, StepData, get_step, step_options
from edgeuq.compress.transfer import label_with_model
from edgeuq.export import export_onnx
from edgeuq.models import build_model, mc_sample_probs
from edgeuq.training import load_checkpoint, save_checkpoint
from edgeuq_runtime import UncertaintyRuntime

from chain import CLASSES, FS, TINY, max_err, tiny_config, torch_reference, windows

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SCHEME = "mc_dropout"

#: step -> options small enough for a tiny model and a few seconds
OPTIONS = {
    "distill": {"epochs": 1, "batch_size": 16, "student_samples": 2, "teacher_samples": 2, "patience": 1},
    "prune": {"target_flops": 0.5},
    "lowrank": {"rank_fraction": 0.25},
}


def test_every_step_has_conformance_options():
    missing = sorted(set(COMPRESSION_STEPS) - set(OPTIONS))
    assert not missing, f"compression steps without conformance options in {__file__}: {missing}"


TOL = 1e-5
S, N, SEED = 4, 5, 3


@pytest.fixture(scope="module", params=sorted(OPTIONS))
def stepped(request):
    """(name, input model, its state before, the step's output model) for each step."""
    name = request.param
    torch.manual_seed(0)
    model = build_model(tiny_config(SCHEME)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, xv = windows(32, 0), windows(16, 1)
    y = np.arange(32) % TINY["num_classes"]
    data = StepData(x=x, y=y, x_val=xv, y_val=np.arange(16) % TINY["num_classes"],
                    teacher=lambda a, s, seed: label_with_model(model, a, s, seed))
    step = get_step(name)
    out = step.apply(model, data, step_options(step, OPTIONS[name])).model
    return name, model, before, out.eval()


def test_step_output_samples_like_its_input_and_leaves_it_alone(stepped):
    name, model, before, out = stepped
    xv = windows(16, 1)
    assert out is not model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), f"{name} changed its input"
    assert [s.name for s in out.noise_specs()] == [s.name for s in model.noise_specs()]
    p = mc_sample_probs(out, torch.from_numpy(xv), 3, rng=np.random.default_rng(0)).numpy()
    assert p.shape == (3, 16, TINY["num_classes"]) and np.isfinite(p).all()
    err = float(np.max(np.abs(p.sum(-1) - 1.0)))
    assert err <= 1e-5, (name, err)


@pytest.fixture(scope="module")
def round_trip(stepped, tmp_path_factory):
    name, _, _, out = stepped
    root = tmp_path_factory.mktemp(f"step-{name}")
    ck = save_checkpoint(out, root / "ck", CLASSES, FS)
    loaded = load_checkpoint(root / "ck")
    art = export_onnx(loaded, root / "onnx")
    bundle = build_bundle(art, root / "bundle", "conformance", "0.1.0", default_samples=S).root
    return name, out, loaded, art, bundle


def test_step_output_saves_and_loads_as_the_same_model(round_trip):
    """The checkpoint's config alone rebuilds the step's architecture: same parameters, same
    deterministic pass (a config that forgot a pruned width or a factorised rank fails to load or
    differs here)."""
    name, out, loaded, _, _ = round_trip
    assert loaded.config == out.cfg, name
    model = loaded.load_model()
    want, got = out.state_dict(), model.state_dict()
    assert sorted(got) == sorted(want), (name, sorted(set(got) ^ set(want)))
    assert all(torch.equal(got[k], want[k]) for k in want), name
    x = torch.from_numpy(windows(N, 2))
    out.set_sampling(False)
    model.set_sampling(False)
    with torch.no_grad():
        err = max_err(model(x).numpy(), out(x).numpy())
    assert err <= 1e-6, (name, err)


def test_step_output_runs_on_the_runtime_and_agrees_with_pytorch(round_trip):
    name, out, _, art, bundle = round_trip
    x = windows(N)
    got = UncertaintyRuntime(bundle).predict(x, samples=S, seed=SEED).samples
    want = torch_reference(out, art, x, S, SEED)
    assert got.shape == want.shape == (S, N, TINY["num_classes"]), name
    err = max_err(got, want)
    assert err <= TOL, f"{name}: runtime vs the step's PyTorch model {err:.3g} > {TOL}"
    other = torch_reference(out, art, x, S, SEED + 1)   # control: another noise stream is told apart
    assert not max_err(got, other) <= TOL, name
