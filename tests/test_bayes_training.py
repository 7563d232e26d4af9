"""Training the schemes on a toy problem: ELBO, ensembles, Laplace fitting, temperature."""
import numpy as np
import pytest
import torch

from edgeuq.bayes import calibrate_temperature, fit_model, predictive_probs, sample_logits, uses_sampling, with_temperature
from edgeuq.models import ModelConfig, SignalTransformer
from edgeuq.schemes import get_scheme
from edgeuq.schemes.base import FitContext
from edgeuq.schemes.laplace import fit_laplace, head_features
from edgeuq.schemes.variational import kl_divergence
from edgeuq.training import TrainConfig
from edgeuq.uq import nll


pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = dict(input_length=128, num_classes=3, patch=16, d_model=16, heads=2, depth=2, ffn=16, dropout=0.1)
FAST = TrainConfig(epochs=6, batch_size=32, lr=3e-3, patience=3)


def _toy(n, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(128) / 128
    y = rng.integers(0, 3, n)
    x = np.sin(2 * np.pi * (4 + 8 * y)[:, None] * t + rng.uniform(0, 6, (n, 1))) + 0.3 * rng.standard_normal((n, 128))
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def data():
    return (*_toy(384, 0), *_toy(96, 1))


def _acc(model, x, y, samples=8):
    return float(np.mean(predictive_probs(sample_logits(model, x, samples)).argmax(1) == y))


def test_variational_training_minimises_the_elbo(data):
    xt, yt, xv, yv = data
    torch.manual_seed(0)
    m = SignalTransformer(ModelConfig(**TINY, scheme="variational", stochastic_blocks=(1,)))
    kl0 = float(kl_divergence(m).detach())
    res = fit_model(m, xt, yt, xv, yv, FAST, kl_weight=1.0, progress=False)
    assert _acc(m, xv, yv) > 0.9
    assert float(kl_divergence(m).detach()) < kl0        # the KL term is being minimised
    assert res.best_val_nll == pytest.approx(min(h.val_nll for h in res.history))
    sigmas = torch.cat([torch.nn.functional.softplus(p.detach()).ravel() for n, p in m.named_parameters()
                        if n.endswith("_rho")])
    assert float(sigmas.mean()) > 1e-3                   # posteriors widened from their 1e-3 init


def test_hsa_and_mc_dropout_train(data):
    xt, yt, xv, yv = data
    for kw in (dict(scheme="hsa", stochastic_blocks=(1,), stochastic_head=False), dict(stochastic_blocks=(1,))):
        torch.manual_seed(0)
        m = SignalTransformer(ModelConfig(**TINY, **kw))
        fit_model(m, xt, yt, xv, yv, FAST, progress=False)
        assert uses_sampling(m)
        assert _acc(m, xv, yv) > 0.9, kw


def test_ensemble_members_differ_and_laplace_and_temperature_fit(data):
    xt, yt, xv, yv = data
    cfg = ModelConfig(**TINY, scheme="ensemble", stochastic_blocks=(), scheme_options={"members": 2})
    out = get_scheme("ensemble").train(cfg, FitContext(xt, yt, xv, yv, TrainConfig(epochs=4, batch_size=32, lr=3e-3),
                                                       progress=False))
    ens, results = out.model, out.runs
    assert len(results) == 2 and _acc(ens, xv, yv) > 0.9
    w0, w1 = (m.head.fc2.weight for m in ens.members)
    assert not torch.allclose(w0, w1)                    # different seeds -> different members
    assert sample_logits(ens, xv[:5], 4).shape == (4, 5, 3)

    lap = SignalTransformer(ModelConfig(**TINY, scheme="laplace", stochastic_blocks=()))
    missing, unexpected = lap.load_state_dict(ens.members[0].state_dict(), strict=False)
    assert not unexpected and all(k.startswith("head.fc2.") for k in missing)
    assert not uses_sampling(lap)
    map_nll = nll(predictive_probs(sample_logits(lap, xv, None)), yv)
    grid = (1e-2, 1.0, 1e2, 1e4)
    fit = fit_laplace(lap, xt, xv, yv, prior_grid=grid, samples=32)
    assert fit.prior_precision in grid and fit.n_train == len(xt)
    assert min(fit.val_nll) == fit.val_nll[grid.index(fit.prior_precision)]
    assert uses_sampling(lap) and lap.head.fc2.fitted
    assert head_features(lap, xv[:4]).shape == (4, 16)
    assert nll(predictive_probs(sample_logits(lap, xv, 32)), yv) < map_nll + 0.05

    before = nll(predictive_probs(sample_logits(lap, xv, 16, seed=1)), yv)
    t = calibrate_temperature(lap, xv, yv, samples=16, seed=1)
    assert lap.cfg.temperature == pytest.approx(t.temperature)
    assert t.temperature == 1.0 or not t.degenerate
    assert nll(predictive_probs(sample_logits(lap, xv, 16, seed=1)), yv) <= before + 1e-9
    with_temperature(lap, 2.0)
    with pytest.raises(ValueError, match="already has temperature"):
        calibrate_temperature(lap, xv, yv)


def test_fit_model_rejects_bad_inputs(data):
    xt, yt, xv, yv = data
    m = SignalTransformer(ModelConfig(**TINY, stochastic_blocks=(1,)))
    with pytest.raises(ValueError, match="kl_weight"):
        fit_model(m, xt, yt, xv, yv, FAST, kl_weight=-1.0, progress=False)
    with pytest.raises(ValueError, match="expects"):
        fit_model(m, xt[:, :64], yt, xv, yv, FAST, progress=False)
    with pytest.raises(ValueError, match="no last-layer Laplace"):
        fit_laplace(m, xt, xv, yv)


@pytest.mark.parametrize("scheme_kw", [dict(scheme="laplace", stochastic_blocks=()),
                                       dict(scheme="ensemble", stochastic_blocks=(), scheme_options={"members": 2})])
def test_train_stage_saves_a_loadable_checkpoint_of_any_scheme(data, tmp_path, scheme_kw):
    from edgeuq.data import Splits, WindowDataset
    from edgeuq.pipeline import train_stage
    from edgeuq.training import load_checkpoint

    xt, yt, xv, yv = data
    names = ("a", "b", "c")
    ds = lambda x, y: WindowDataset(x, y, names, 1000.0)  # noqa: E731
    splits = Splits(ds(xt, yt), ds(xv, yv), ds(xv, yv))
    cfg = ModelConfig(**TINY, **scheme_kw)
    ck = train_stage(splits, cfg, TrainConfig(epochs=2, batch_size=32, lr=3e-3), tmp_path / "ck",
                            uq={"temperature_scaling": True, "samples": 8, "laplace_samples": 16})
    assert ck.metrics["scheme"] == cfg.scheme and "temperature" in ck.metrics
    assert ("laplace" in ck.metrics) == (cfg.scheme == "laplace")
    model = load_checkpoint(tmp_path / "ck").load_model()
    assert model.cfg.temperature == pytest.approx(ck.metrics["temperature"]["temperature"])
    assert sample_logits(model, xv[:3], 4).shape == (4, 3, 3)


def test_uq_recipes_build_valid_configs():
    from edgeuq.catalog import load_recipes

    recipes = load_recipes()
    expected = {"cwru-mc-dropout": "mc_dropout", "cwru-variational": "variational", "cwru-hsa": "hsa",
                "cwru-ensemble": "ensemble", "cwru-laplace": "laplace"}
    assert set(expected) <= set(recipes)
    for name, scheme in expected.items():
        r = recipes[name]
        cfg = ModelConfig.from_dict(r.model, input_length=int(r.data["window"]), num_classes=len(r.data["classes"]))
        assert cfg.scheme == scheme and isinstance(cfg.scheme_options, get_scheme(scheme).options_type)
        assert "scheme_options" in r.model or scheme == "mc_dropout"     # options as a nested table
        assert set(r.uq) <= {"samples", "kl_weight", "val_samples", "temperature_scaling", "laplace_samples"}
