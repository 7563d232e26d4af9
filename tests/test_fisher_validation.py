"""Fisher estimators against brute force on tiny models.

Brute force: for every input (and noise draw) the full per-sample Jacobian of
the logits with respect to all parameters, J (C x P), and the exact Fisher of
a categorical output,

    true:       F_n = Jᵀ (diag p − p pᵀ) J          (exact expectation over y ~ p)
    empirical:  F_n = Jᵀ (p − e_y)(p − e_y)ᵀ J

averaged over inputs and noise draws. The estimators use torch.func per-sample
gradients or forward hooks; none of that machinery is used here.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from edgeuq.fisher import (
    FisherConfig, activation_fisher, diagonal_fisher, hutchinson_trace, kfac_factors, structure_scores,
)
from edgeuq.fisher.structure import default_structures
from edgeuq.models import ModelConfig, SignalTransformer
from edgeuq_runtime.noise import sample_noise

TINY = ModelConfig(input_length=128, num_classes=3, patch=16, d_model=16, heads=2, depth=2, ffn=16,
                   stochastic_blocks=(1,))
RTOL = 1e-4  # float32 forward/backward against float32 brute force


def rel_err(est: np.ndarray, ref: np.ndarray) -> float:
    """max |est − ref| / max |ref| (elements near 0 are not divided by themselves)."""
    return float(np.max(np.abs(np.asarray(est) - np.asarray(ref))) / max(np.max(np.abs(ref)), 1e-30))


def make_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).eval()


def make_tiny(seed: int = 0) -> SignalTransformer:
    torch.manual_seed(seed)
    return SignalTransformer(TINY).eval()


def data(n: int, d: int, seed: int = 0, classes: int = 3):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(np.float32), rng.integers(0, classes, n)


def noise_draws(model, n: int, passes: int, seed: int):
    """The noise the estimators draw (one batch of ``n``): ``passes`` draws from default_rng(seed)."""
    if not hasattr(model, "noise_specs"):
        return [None]
    rng = np.random.default_rng(seed)
    return [{k: torch.from_numpy(v) for k, v in sample_noise(model.noise_specs(), n, rng).items()}
            for _ in range(passes)]


def jacobian(model, x1: torch.Tensor, noise1):
    """Full Jacobian of the logits of one input w.r.t. every parameter: (C, P), names, shapes."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()])
    sizes = [int(np.prod(s)) for s in shapes]

    def f(theta):
        parts = torch.split(theta, sizes)
        params = {n: t.reshape(s) for n, t, s in zip(names, parts, shapes)}
        args = (x1,) if noise1 is None else (x1, noise1)
        return functional_call(model, params, args)[0]

    J = torch.autograd.functional.jacobian(f, flat)
    return J.double(), names, sizes, shapes


def brute_force(model, x: np.ndarray, y, labels: str, noises, full: bool = False):
    """Per-parameter diagonal (dict) and, with ``full``, the dense Fisher (P x P)."""
    xs = torch.from_numpy(x)
    diag_total, dense = None, None
    terms = 0
    for noise in noises:
        for n in range(len(x)):
            nz = None if noise is None else {k: v[n : n + 1] for k, v in noise.items()}
            J, names, sizes, shapes = jacobian(model, xs[n : n + 1], nz)
            with torch.no_grad():
                args = (xs[n : n + 1],) if nz is None else (xs[n : n + 1], nz)
                p = torch.softmax(model(*args)[0].double(), -1)
            if labels == "true":
                M = torch.diag(p) - torch.outer(p, p)
            else:
                r = p - torch.nn.functional.one_hot(torch.tensor(int(y[n])), len(p)).double()
                M = torch.outer(r, r)
            d = torch.einsum("ci,cd,di->i", J, M, J)
            diag_total = d if diag_total is None else diag_total + d
            if full:
                F = J.T @ M @ J
                dense = F if dense is None else dense + F
            terms += 1
    diag_total = diag_total / terms
    parts = torch.split(diag_total, sizes)
    diag = {nm: t.reshape(s).numpy() for nm, t, s in zip(names, parts, shapes)}
    return diag, (dense / terms).numpy() if full else None


# ------------------------------------------------------------------ diagonal / trace


@pytest.mark.parametrize("labels", ["true", "empirical"])
def test_mlp_diagonal_and_trace_match_brute_force(labels):
    model = make_mlp()
    x, y = data(24, 6)
    cfg = FisherConfig(labels=labels, exact_expectation=True, batch_size=10, progress=False)
    est = diagonal_fisher(model, x, y, cfg)
    ref, _ = brute_force(model, x, y, labels, [None])
    for k in ref:
        assert rel_err(est.diag[k], ref[k]) < RTOL, k
        assert abs(est.trace(k) - ref[k].sum()) / ref[k].sum() < RTOL, k


@pytest.mark.parametrize("labels", ["true", "empirical"])
def test_tiny_transformer_diagonal_averages_noise_like_brute_force(labels):
    model = make_tiny()
    x, y = data(6, 128, seed=1)
    cfg = FisherConfig(labels=labels, exact_expectation=True, noise_samples=2, batch_size=6, progress=False)
    est = diagonal_fisher(model, x, y, cfg)
    ref, _ = brute_force(model, x, y, labels, noise_draws(model, 6, 2, cfg.seed))
    errs = {k: rel_err(est.diag[k], ref[k]) for k in ref}
    assert max(errs.values()) < RTOL, errs
    layer_traces = est.layer_traces(model)
    for name, tr in layer_traces.items():
        assert abs(tr - ref[f"{name}.weight"].sum()) / ref[f"{name}.weight"].sum() < RTOL, name
    # the noise matters: the deterministic Fisher is a different number
    ones = {k: torch.ones_like(v) for k, v in noise_draws(model, 6, 1, 0)[0].items()}
    det, _ = brute_force(model, x, y, labels, [ones])
    assert rel_err(det["head.fc1.weight"], ref["head.fc1.weight"]) > 10 * RTOL


def test_vmap_and_loop_per_sample_estimators_agree():
    model = make_tiny()
    x, y = data(5, 128, seed=2)
    a = diagonal_fisher(model, x, y, FisherConfig(per_sample="vmap", noise_samples=2, progress=False))
    b = diagonal_fisher(model, x, y, FisherConfig(per_sample="loop", noise_samples=2, progress=False))
    for k in a.diag:
        assert rel_err(a.diag[k], b.diag[k]) < 1e-4, k


def test_sampled_true_fisher_converges_to_exact_expectation():
    model = make_mlp()
    x, y = data(40, 6)
    exact = diagonal_fisher(model, x, cfg=FisherConfig(exact_expectation=True, progress=False))
    sampled = diagonal_fisher(model, x, cfg=FisherConfig(label_samples=400, exact_expectation=False, progress=False))
    for k in exact.diag:
        assert abs(sampled.trace(k) / exact.trace(k) - 1) < 0.1, k
    default = diagonal_fisher(model, x, cfg=FisherConfig(progress=False))  # 3 classes: exact by default
    for k in exact.diag:
        np.testing.assert_allclose(default.diag[k], exact.diag[k], rtol=1e-6)


def test_confident_model_true_fisher_is_far_from_the_empirical_one():
    # p(ŷ|x) = 1 − ε: the empirical Fisher at the (correct) labels is O(ε²) per input, the true Fisher O(ε).
    # One sampled label per input almost never leaves ŷ, so the *sampled* estimate falls onto the empirical
    # Fisher -- the reason the default sums over classes.
    model = make_mlp()
    nn.init.normal_(model[2].weight, std=8.0)
    x, _ = data(60, 6, seed=11)
    with torch.no_grad():
        p = torch.softmax(model(torch.from_numpy(x)), -1)
    keep = (p.max(-1).values > 0.999).numpy()
    x = x[keep]
    y = p.argmax(-1).numpy()[keep]
    assert len(x) >= 10
    true = diagonal_fisher(model, x, cfg=FisherConfig(progress=False))
    emp = diagonal_fisher(model, x, y, FisherConfig(labels="empirical", progress=False))
    assert true.trace("2.weight") > 20 * emp.trace("2.weight")
    sampled = diagonal_fisher(model, x, cfg=FisherConfig(exact_expectation=False, progress=False))  # seeded
    assert sampled.trace("2.weight") < 2 * emp.trace("2.weight")


def test_true_and_empirical_fisher_agree_when_labels_come_from_the_model():
    # E_y~p[empirical] = true: with labels drawn from the model itself they agree up to sampling noise.
    model = make_mlp()
    x, _ = data(3000, 6, seed=3)
    with torch.no_grad():
        p = torch.softmax(model(torch.from_numpy(x)), -1)
    y = torch.multinomial(p, 1, generator=torch.Generator().manual_seed(0)).squeeze(1).numpy()
    true = diagonal_fisher(model, x, cfg=FisherConfig(exact_expectation=True, batch_size=500, progress=False))
    emp = diagonal_fisher(model, x, y, FisherConfig(labels="empirical", batch_size=500, progress=False))
    for k in true.diag:
        assert abs(emp.trace(k) / true.trace(k) - 1) < 0.1, k


def test_true_and_empirical_fisher_differ_when_the_model_fits_badly():
    # Labels the model finds least likely: (p − e_y) is large, the empirical Fisher blows up while
    # the true Fisher (which never looks at y) is unchanged.
    model = make_mlp()
    nn.init.normal_(model[2].weight, std=3.0)  # confident predictions
    x, _ = data(200, 6, seed=4)
    with torch.no_grad():
        y_bad = model(torch.from_numpy(x)).argmin(-1).numpy()
        y_good = model(torch.from_numpy(x)).argmax(-1).numpy()
    cfg_t = FisherConfig(exact_expectation=True, progress=False)
    true = diagonal_fisher(model, x, y_bad, cfg_t)
    assert diagonal_fisher(model, x, y_good, cfg_t).trace("2.weight") == pytest.approx(true.trace("2.weight"))
    bad = diagonal_fisher(model, x, y_bad, FisherConfig(labels="empirical", progress=False))
    good = diagonal_fisher(model, x, y_good, FisherConfig(labels="empirical", progress=False))
    for k in true.diag:
        assert bad.trace(k) > 3 * true.trace(k), k
        assert good.trace(k) < true.trace(k), k  # fits its own argmax labels: smaller than the Fisher


def test_empirical_fisher_needs_labels():
    with pytest.raises(ValueError, match="empirical"):
        diagonal_fisher(make_mlp(), data(4, 6)[0], None, FisherConfig(labels="empirical", progress=False))


# ------------------------------------------------------------------ activations


def _brute_activation_trace(model, x, noises, rest):
    """Σ_c p_c ‖∂ℓ_c/∂a‖² with ∂logits/∂a from ``rest(n, noise)`` -> (C, numel) Jacobian."""
    total, terms = 0.0, 0
    xs = torch.from_numpy(x)
    for noise in noises:
        for n in range(len(x)):
            nz = None if noise is None else {k: v[n : n + 1] for k, v in noise.items()}
            with torch.no_grad():
                p = torch.softmax((model(xs[n : n + 1]) if nz is None else model(xs[n : n + 1], nz))[0].double(), -1)
            Ja = rest(n, nz).double().reshape(len(p), -1)
            g = p @ Ja - Ja  # row c: ∂(−log p_c)/∂a up to sign
            total += float((p[:, None] * g.pow(2)).sum())
            terms += 1
    return total / terms


def test_activation_traces_match_brute_force_mlp():
    model = make_mlp()
    x, _ = data(12, 6)
    est = activation_fisher(model, x, cfg=FisherConfig(exact_expectation=True, progress=False))
    xs = torch.from_numpy(x)
    ref0 = _brute_activation_trace(model, x, [None], lambda n, nz: torch.autograd.functional.jacobian(
        lambda v: model(v)[0], xs[n : n + 1]))
    ref2 = _brute_activation_trace(model, x, [None], lambda n, nz: model[2].weight.detach())
    assert est["0"].trace == pytest.approx(ref0, rel=RTOL)
    assert est["2"].trace == pytest.approx(ref2, rel=RTOL)
    h = torch.tanh(model[0](xs)).detach()
    assert est["2"].min == pytest.approx(float(h.min())) and est["2"].max == pytest.approx(float(h.max()))
    assert est["2"].mean_square == pytest.approx(float(h.pow(2).mean()), rel=1e-5)
    assert est["2"].out_absmax == pytest.approx(float(model(xs).detach().abs().max()), rel=1e-5)


def test_activation_traces_match_brute_force_tiny_transformer():
    model = make_tiny()
    x, _ = data(4, 128, seed=5)
    cfg = FisherConfig(exact_expectation=True, noise_samples=2, progress=False)
    est = activation_fisher(model, x, cfg=cfg, layers=["embed.c1", "head.fc2"])
    noises = noise_draws(model, 4, 2, cfg.seed + 1)  # the hooked pass draws from default_rng(seed + 1)
    xs = torch.from_numpy(x)
    ref_c1 = _brute_activation_trace(model, x, noises, lambda n, nz: torch.autograd.functional.jacobian(
        lambda v: model(v, nz)[0], xs[n : n + 1]))
    ref_fc2 = _brute_activation_trace(model, x, noises, lambda n, nz: model.head.fc2.weight.detach())
    assert est["embed.c1"].trace == pytest.approx(ref_c1, rel=RTOL)
    assert est["head.fc2"].trace == pytest.approx(ref_fc2, rel=RTOL)


# ------------------------------------------------------------------ structures


def _per_sample_param_grads(model, x, noises, label_weights):
    """Plain autograd, one sample and one class at a time: yields (weight, {param: grad})."""
    xs = torch.from_numpy(x)
    for noise in noises:
        for n in range(len(x)):
            nz = None if noise is None else {k: v[n : n + 1] for k, v in noise.items()}
            logits = model(xs[n : n + 1]) if nz is None else model(xs[n : n + 1], nz)
            p = torch.softmax(logits[0].detach().double(), -1)
            for c in range(len(p)):
                model.zero_grad()
                nn.functional.cross_entropy(logits, torch.tensor([c])).backward(retain_graph=True)
                yield float(p[c]), {k: v.grad.detach().clone().double() for k, v in model.named_parameters()}


def test_structure_scores_match_weight_gradient_identity():
    """A mask on the input columns of a Linear layer W satisfies ∂ℓ/∂m_j = Σ_o W_oj ∂ℓ/∂W_oj, and a mask
    on the output channels of a layer ∂ℓ/∂m_j = Σ W_j· ∂ℓ/∂W_j· + b_j ∂ℓ/∂b_j: checked for heads
    (proj input, grouped), FFN neurons, conv channels and head neurons."""
    model = make_tiny()
    x, _ = data(3, 128, seed=6)
    cfg = FisherConfig(exact_expectation=True, noise_samples=2, progress=False)
    est = structure_scores(model, x, cfg=cfg)
    assert set(est) == {s.name for s in default_structures(model)}
    params = dict(model.named_parameters())
    dh = TINY.d_model // TINY.heads
    ref = {k: np.zeros_like(v, dtype=np.float64) for k, v in est.items()}
    terms = 0
    for w, g in _per_sample_param_grads(model, x, noise_draws(model, 3, 2, cfg.seed + 1), None):
        def cols(name):  # per input column j: Σ_o W_oj g_oj
            return (params[f"{name}.weight"].detach().double() * g[f"{name}.weight"]).sum(0)

        def rows(name):  # per output channel j
            W = params[f"{name}.weight"].detach().double()
            b = params[f"{name}.bias"].detach().double()
            return (W * g[f"{name}.weight"]).flatten(1).sum(1) + b * g[f"{name}.bias"]

        for i in range(TINY.depth):
            per_head = cols(f"blocks.{i}.attn.proj").reshape(TINY.heads, dh).sum(1)
            ref[f"blocks.{i}.attn.heads"] += w * per_head.pow(2).numpy()
            ref[f"blocks.{i}.ffn.neurons"] += w * cols(f"blocks.{i}.fc2").pow(2).numpy()
        for c in ("embed.c1", "embed.c2", "embed.c3"):
            ref[f"{c}.channels"] += w * rows(c).pow(2).numpy()
        ref["head.fc1.neurons"] += w * cols("head.fc2").pow(2).numpy()
    terms = len(x) * 2
    for k in ref:
        assert rel_err(est[k], ref[k] / terms) < 1e-3, k


def test_mlp_structures_are_hidden_neurons():
    model = make_mlp()
    specs = default_structures(model)
    assert [(s.name, s.groups) for s in specs] == [("0.neurons", 8)]
    scores = structure_scores(model, data(8, 6)[0], cfg=FisherConfig(progress=False))
    assert scores["0.neurons"].shape == (8,) and np.all(scores["0.neurons"] >= 0)


# ------------------------------------------------------------------ K-FAC


def test_kfac_is_exact_for_one_input_and_factors_match_definitions():
    model = make_mlp()
    x, _ = data(1, 6, seed=7)
    cfg = FisherConfig(exact_expectation=True, progress=False)
    f = kfac_factors(model, x, cfg=cfg)
    _, dense = brute_force(model, x, None, "true", [None], full=True)
    # parameter order: 0.weight (8x6), 0.bias, 2.weight (3x8), 2.bias
    off = 8 * 6 + 8
    block2 = dense[off : off + 24, off : off + 24]
    assert rel_err(f["2"].dense(), block2) < RTOL
    block0 = dense[:48, :48]
    assert rel_err(f["0"].dense(), block0) < RTOL
    # many inputs: A = mean a aᵀ; last layer G = E[diag p − p pᵀ] (closed form for the logits)
    x, _ = data(50, 6, seed=8)
    f = kfac_factors(model, x, cfg=cfg, include_bias=True)
    xs = torch.from_numpy(x)
    h = torch.tanh(model[0](xs)).double().detach()
    ha = torch.cat([h, torch.ones(50, 1, dtype=h.dtype)], 1)
    assert rel_err(f["2"].A, (ha.T @ ha / 50).numpy()) < 1e-5
    p = torch.softmax(model(xs).double(), -1).detach()
    G = (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]).mean(0)
    assert rel_err(f["2"].G, G.numpy()) < 1e-5
    assert f["2"].diagonal().shape == (3, 9)


def test_kfac_rejects_non_linear_layers():
    with pytest.raises(TypeError, match="nn.Linear"):
        kfac_factors(make_tiny(), data(2, 128)[0], cfg=FisherConfig(progress=False), layers=["embed.c1"])


# ------------------------------------------------------------------ Hessian (HAWQ baseline)


def test_hutchinson_matches_exact_hessian_trace():
    model = make_mlp()
    x, y = data(30, 6, seed=9)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    est = hutchinson_trace(model, x, y, FisherConfig(progress=False), probes=300)
    for name, mod in (("0", model[0]), ("2", model[2])):
        W = mod.weight.detach()

        def loss(w):
            params = {f"{name}.weight": w}
            return nn.functional.cross_entropy(functional_call(model, params, (xs,)), ys)

        H = torch.autograd.functional.hessian(loss, W).reshape(W.numel(), W.numel())
        exact = float(torch.diagonal(H).sum())
        assert est[f"{name}.weight"] == pytest.approx(exact, rel=0.1), name
