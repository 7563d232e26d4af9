"""The scheme plug-ins build and train exactly what the pre-plug-in code built and trained.

``tests/data/scheme_build_golden.json`` and ``scheme_train_golden.json`` were produced by
the code before the restructuring (``ModelConfig`` with flat ``vi_``/``hsa_``/
``ensemble_``/``laplace_`` fields, ``scheme ==`` switches): per tiny model of every
scheme, built after ``torch.manual_seed(0)``, the parameter names, shapes and a hash of
each tensor's bytes, the module names, the noise specs, and hashes of the logits of a
deterministic pass, a pass with runtime-sampled noise and a pass with torch's own draws;
per scheme, a hash of the weights after two epochs of training (+ post-hoc fitting) and
the recorded metrics. Both goldens store the old configs, which also exercises the
mapping of old flat fields onto ``scheme_options``.
"""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeuq.models import ModelConfig, build_model
from edgeuq_runtime.noise import sample_noise

DATA = Path(__file__).parent / "data"
BUILD = json.loads((DATA / "scheme_build_golden.json").read_text())
TRAIN = json.loads((DATA / "scheme_train_golden.json").read_text())


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sha(t):
    return hashlib.sha256(np.ascontiguousarray(t.detach().numpy()).tobytes()).hexdigest()[:16]


def _measure(model):
    """Exactly the measurement the golden generator made on the old code."""
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
        "params": [[k, list(v.shape), _sha(v)] for k, v in model.state_dict().items()],
        "modules": [n for n, _ in model.named_modules()],
        "noise": [[s.name, s.kind, list(s.shape), dict(s.params)] for s in specs],
        "feature_shape": list(model.feature_shape()),
        "det": _sha(det), "sampled": _sha(sampled), "drawn": _sha(drawn),
    }


@pytest.mark.parametrize("case", sorted(BUILD))
def test_every_scheme_builds_the_same_model_as_before(case):
    golden = BUILD[case]
    cfg = ModelConfig.from_dict(golden["config"])
    torch.manual_seed(0)
    got = _measure(build_model(cfg))
    for key in ("params", "modules", "noise", "feature_shape", "det", "sampled", "drawn"):
        assert got[key] == golden[key], f"{case}: {key} differs from the pre-plug-in model"


def _toy(n, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(128) / 128
    y = rng.integers(0, 3, n)
    x = np.sin(2 * np.pi * (4 + 8 * y)[:, None] * t + rng.uniform(0, 6, (n, 1))) + 0.3 * rng.standard_normal((n, 128))
    return x.astype(np.float32), y


def _digest(model):
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(np.ascontiguousarray(v.detach().numpy()).tobytes())
    return h.hexdigest()[:20]


@pytest.fixture(scope="module")
def splits():
    from edgeuq.data import Splits, WindowDataset

    names = ("a", "b", "c")
    (xt, yt), (xv, yv) = _toy(160, 0), _toy(64, 1)
    return Splits(WindowDataset(xt, yt, names, 1000.0), WindowDataset(xv, yv, names, 1000.0),
                  WindowDataset(xv, yv, names, 1000.0))


UQ = {"kl_weight": 1.0, "val_samples": 4, "temperature_scaling": True, "samples": 8, "laplace_samples": 16}
FAST = dict(epochs=2, batch_size=32, lr=3e-3, patience=3, threads=1)


@pytest.mark.parametrize("case", sorted(TRAIN))
def test_every_scheme_trains_to_the_same_weights_as_before(case, splits, tmp_path):
    from edgeuq.pipeline import train_stage
    from edgeuq.training import TrainConfig

    golden = TRAIN[case]
    cfg = ModelConfig.from_dict(golden["config"])
    # the old demo stage validated the deterministic pass (val_samples 0, no [uq] table)
    uq = None if case == "demo_train_stage" else UQ
    ck = train_stage(splits, cfg, TrainConfig(**FAST), tmp_path / case, uq=uq, progress=False)
    model = ck.load_model()
    assert _digest(model) == golden["digest"]
    if "temperature" in golden:
        assert model.cfg.temperature == golden["temperature"]
    metrics = json.loads(json.dumps(dict(ck.metrics), default=float))
    for key, value in golden["metrics"].items():
        assert metrics[key] == value, f"{case}: metric {key}"
