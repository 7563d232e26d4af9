"""The scheme plug-ins build and train what the pre-plug-in code built and trained.

``tests/data/scheme_build_golden.json`` and ``scheme_train_golden.json`` hold, per tiny model of
every scheme (configs with ``scheme_options``; the stored configs were converted from the old flat
fields when that mapping was removed, and parse to the same ``ModelConfig``):

* structure, compared exactly: parameter names and shapes, module names, noise specs,
  feature shape;
* numbers, compared with tolerances: per tensor its float64 sum, sum of squares and
  leading values, after ``torch.manual_seed(0)`` (build) and after two epochs of
  training plus post-hoc fitting (train); the logits of a deterministic pass, a pass with
  runtime-sampled noise and one with torch's own draws; the training metrics.

The numbers come from the pre-restructuring code (see ``tests/data/make_scheme_golden.py``).
Float results are not bit-identical across CPUs (PyTorch, oneDNN and numpy pick kernels
by ISA), so nothing here compares hashes of floats. Tolerances:

* freshly built models: random initialisation is integer arithmetic on the generator's
  state plus one scaling, identical on every ISA up to a few ulp -> rtol 1e-5;
* logits of one forward pass: float32 accumulation order differs between kernels,
  |error| ~ depth * sqrt(width) * eps * |activations| ~ 1e-5 -> atol 1e-4 + rtol 1e-4;
* two epochs of training: the per-step kernel differences compound through ~10 Adam
  steps; measured across AVX-512 / AVX2 / SSE (``ATEN_CPU_CAPABILITY``) they stay below
  4e-4 relative in every tensor statistic -> rtol 2e-3 on sums of squares, atol 2e-3 * norm
  on sums and leading values. A real change (other initialisation, a missing or extra
  layer, another loss, another seed) moves these statistics by far more than 1 %.
"""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeuq.models import ModelConfig, build_model
from edgeuq_runtime.noise import sample_noise

DATA = Path(__file__).parent / "data"
BUILD = {k: v for k, v in json.loads((DATA / "scheme_build_golden.json").read_text()).items() if not k.startswith("_")}
TRAIN = {k: v for k, v in json.loads((DATA / "scheme_train_golden.json").read_text()).items() if not k.startswith("_")}
LEADING = 6

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def isa_note() -> dict:
    from edgeuq.lower.tvm.targets import cpu_flags

    flags = cpu_flags()
    return {"avx512f": "avx512f" in flags, "avx2": "avx2" in flags,
            "ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY"), "torch": torch.__version__}


def _stats(t: torch.Tensor) -> dict:
    a = t.detach().double().numpy().ravel()
    return {"sum": float(a.sum()), "sumsq": float((a * a).sum()), "lead": [float(v) for v in a[:LEADING]]}


def tensor_stats(model) -> list:
    return [[k, list(v.shape), _stats(v)] for k, v in model.state_dict().items()]


def measure(model) -> dict:
    """The golden generator's measurement (the same inputs and seeds as the first goldens)."""
    model.eval()
    g = torch.Generator().manual_seed(1)
    if model.cfg.embed == "token":
        x = torch.randint(0, model.cfg.vocab_size, (3, model.cfg.input_length), generator=g)
        x[:, -2:] = 0
    else:
        x = torch.randn(3, model.cfg.input_length, generator=g)
    specs = model.noise_specs()
    with torch.no_grad():
        det = model(x)
        feats = model.trunk(x)
        noise = {k: torch.from_numpy(v) for k, v in sample_noise(specs, 3, np.random.default_rng(2)).items()}
        sampled = model.head_forward(feats, noise)
        model.set_sampling(True)
        torch.manual_seed(3)
        drawn = model(x)
        model.set_sampling(False)
    return {
        "params": tensor_stats(model),
        "modules": [n for n, _ in model.named_modules()],
        "noise": [[s.name, s.kind, list(s.shape), dict(s.params)] for s in specs],
        "feature_shape": list(model.feature_shape()),
        "det": det.double().tolist(), "sampled": sampled.double().tolist(), "drawn": drawn.double().tolist(),
    }


def _close(got, want, rtol, atol) -> bool:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return False
    err = np.abs(got - want)
    return bool(np.all(err <= atol + rtol * np.abs(want)))   # NaN anywhere -> False


def _check_params(case, got, want, rtol_sq, atol_rel):
    assert [[k, s] for k, s, _ in got] == [[k, s] for k, s, _ in want], f"{case}: parameter names/shapes differ"
    for (name, _, g), (_, _, w) in zip(got, want):
        norm = float(np.sqrt(w["sumsq"]))
        assert _close(g["sumsq"], w["sumsq"], rtol_sq, 1e-12), f"{case}: {name} sum of squares {g['sumsq']} vs {w['sumsq']}"
        tol = atol_rel * max(norm, 1e-6)
        assert _close(g["sum"], w["sum"], 0.0, tol), f"{case}: {name} sum {g['sum']} vs {w['sum']}"
        assert _close(g["lead"], w["lead"], 0.0, tol), f"{case}: {name} leading values {g['lead']} vs {w['lead']}"


@pytest.mark.parametrize("case", sorted(BUILD))
def test_every_scheme_builds_the_same_model_as_before(case):
    golden = BUILD[case]
    cfg = ModelConfig.from_dict(golden["config"])
    torch.manual_seed(0)
    got = measure(build_model(cfg))
    for key in ("modules", "noise", "feature_shape"):
        assert got[key] == golden[key], f"{case}: {key} differs from the pre-plug-in model"
    _check_params(case, got["params"], golden["params"], rtol_sq=1e-5, atol_rel=1e-5)
    for key in ("det", "sampled", "drawn"):
        assert _close(got[key], golden[key], 1e-4, 1e-4), f"{case}: {key} logits {got[key]} vs {golden[key]}"


def _toy(n, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(128) / 128
    y = rng.integers(0, 3, n)
    x = np.sin(2 * np.pi * (4 + 8 * y)[:, None] * t + rng.uniform(0, 6, (n, 1))) + 0.3 * rng.standard_normal((n, 128))
    return x.astype(np.float32), y


def make_splits():
    from edgeuq.data import Splits, WindowDataset

    names = ("a", "b", "c")
    (xt, yt), (xv, yv) = _toy(160, 0), _toy(64, 1)
    return Splits(WindowDataset(xt, yt, names, 1000.0), WindowDataset(xv, yv, names, 1000.0),
                  WindowDataset(xv, yv, names, 1000.0))


@pytest.fixture(scope="module")
def splits():
    return make_splits()


UQ = {"kl_weight": 1.0, "val_samples": 4, "temperature_scaling": True, "samples": 8, "laplace_samples": 16}
FAST = dict(epochs=2, batch_size=32, lr=3e-3, patience=3, threads=1)


def train_case(case, config, splits, workdir):
    from edgeuq.pipeline import train_stage
    from edgeuq.training import TrainConfig

    cfg = ModelConfig.from_dict(config)
    # the old demo stage validated the deterministic pass (val_samples 0, no [uq] table)
    uq = None if case == "demo_train_stage" else UQ
    ck = train_stage(splits, cfg, TrainConfig(**FAST), Path(workdir) / case, uq=uq, progress=False)
    return ck.load_model(), json.loads(json.dumps(dict(ck.metrics), default=float))


@pytest.mark.parametrize("case", sorted(TRAIN))
def test_every_scheme_trains_to_the_same_weights_as_before(case, splits, tmp_path):
    golden = TRAIN[case]
    model, metrics = train_case(case, golden["config"], splits, tmp_path)
    _check_params(case, tensor_stats(model), golden["params"], rtol_sq=2e-3, atol_rel=2e-3)
    if "temperature" in golden:
        assert _close(model.cfg.temperature, golden["temperature"], 2e-3, 1e-6), f"{case}: temperature"
    _check_metrics(f"{case}: metric", metrics, golden["metrics"])


def _check_metrics(where, got, want):
    """Strings, booleans and integers (epochs, counts) exactly; floats within the training tolerance."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), f"{where}: keys {sorted(got)} vs {sorted(want)}"
        for key in want:
            _check_metrics(f"{where} {key}", got[key], want[key])
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), f"{where}: length"
        for i, (g, w) in enumerate(zip(got, want)):
            _check_metrics(f"{where}[{i}]", g, w)
    elif isinstance(want, float):
        assert _close(got, want, 2e-3, 2e-3), f"{where}: {got} vs {want}"
    else:
        assert got == want and type(got) is type(want), f"{where}: {got!r} vs {want!r}"
