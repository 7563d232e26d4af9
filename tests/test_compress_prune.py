"""Structured pruning: exact removal, masked == pruned outputs, Kwon's steps against brute force."""
import itertools

import numpy as np
import pytest
import torch

from edgeuq.compress.kwon import (
    TeacherCaptures, block_costs, mask_gradients, pruning_objective, rearrange_layer, search_masks, tune_masks,
)
from edgeuq.compress.masks import LayerMasks, apply_masks, as_tensors
from edgeuq.compress.prune import PruneConfig, PrunePlan, prune, save_prune_plan
from edgeuq.compress.slicing import count_params, prune_physically, slice_noise
from edgeuq.models import ModelConfig, build_model
from edgeuq_runtime.noise import sample_noise

T_LEN = 256


def _model(stochastic_blocks=(1,), positions=("attn_probs", "attn_out", "ffn_hidden", "ffn_out"), head=True,
           seed=0):
    cfg = ModelConfig(input_length=T_LEN, num_classes=3, patch=32, embed="conv", stem_channels=8, d_model=16,
                      heads=4, depth=2, ffn=24, stochastic_blocks=stochastic_blocks, stochastic_head=head,
                      block_dropout_positions=positions)
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    with torch.no_grad():  # non-trivial biases everywhere
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _masks(seed=0, scaled=True):
    rng = np.random.default_rng(seed)
    heads = [np.array([1.0, 0.0, 1.0, 0.0]), np.array([0.0, 0.0, 0.0, 1.0])]
    neurons = [(rng.random(24) < 0.5).astype(float), (rng.random(24) < 0.3).astype(float)]
    for n in neurons:
        n[3] = 1.0
    if scaled:
        heads = [h * rng.uniform(0.5, 1.5, h.shape) for h in heads]
        neurons = [n * rng.uniform(0.5, 1.5, n.shape) for n in neurons]
    return LayerMasks(tuple(heads), tuple(neurons))


def _x(n=8, seed=1):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, T_LEN)).astype(np.float32))


def test_pruning_removes_exactly_the_chosen_heads_and_neurons():
    model, masks = _model(), _masks(scaled=False)
    pruned = prune_physically(model, masks)
    shapes = pruned.cfg.blocks
    assert [(b.heads, b.head_dim, b.ffn) for b in shapes] == [(2, 4, int(masks.neurons[0].sum())),
                                                              (1, 4, int(masks.neurons[1].sum()))]
    dh, inner = 4, 16
    for i in range(2):
        old, new = model.blocks[i], pruned.blocks[i]
        kept_h = np.flatnonzero(masks.heads[i])
        for a, h in enumerate(kept_h):  # q, k and v rows of each kept head, in order
            for part in range(3):
                n_inner = len(kept_h) * dh
                assert torch.equal(new.attn.qkv.weight[part * n_inner + a * dh : part * n_inner + (a + 1) * dh],
                                   old.attn.qkv.weight[part * inner + h * dh : part * inner + (h + 1) * dh])
            assert torch.equal(new.attn.proj.weight[:, a * dh : (a + 1) * dh], old.attn.proj.weight[:, h * dh : (h + 1) * dh])
        kept_n = np.flatnonzero(masks.neurons[i])
        assert torch.equal(new.fc1.weight, old.fc1.weight[kept_n]) and torch.equal(new.fc1.bias, old.fc1.bias[kept_n])
        assert torch.equal(new.fc2.weight, old.fc2.weight[:, kept_n])
    # parameter count: exactly the removed rows / columns are gone
    removed = 0
    for i in range(2):
        ph, pn = int(4 - masks.heads[i].sum()), int(24 - masks.neurons[i].sum())
        removed += ph * dh * (3 * 16 + 3) + ph * dh * 16 + pn * (16 + 1) + pn * 16
    assert count_params(model) - count_params(pruned) == removed


def test_pruned_model_equals_masked_model_deterministic_and_with_noise():
    model, masks = _model(), _masks(scaled=True)
    pruned = prune_physically(model, masks)
    x = _x()
    with torch.no_grad():
        with apply_masks(model, *as_tensors(masks)):
            want = model(x)
        got = pruned(x)
        assert float((got - want).abs().max()) <= 1e-5
        # stochastic block: the same dropout masks on the kept units (noise shapes follow the widths)
        noise = sample_noise(model.noise_specs(), len(x), np.random.default_rng(0))
        small = slice_noise(noise, model, masks)
        assert {s.name: s.shape for s in pruned.noise_specs()} == {k: v.shape[1:] for k, v in small.items()}
        t = lambda d: {k: torch.from_numpy(np.asarray(v)) for k, v in d.items()}  # noqa: E731
        with apply_masks(model, *as_tensors(masks)):
            want_s = model.head_forward(model.trunk(x), t(noise))
        got_s = pruned.head_forward(pruned.trunk(x), t(small))
        assert float((got_s - want_s).abs().max()) <= 1e-5
        assert float((got_s - got).abs().max()) > 1e-3  # the noise did something


def test_mask_fisher_matches_the_fisher_package_structure_scores():
    from edgeuq.fisher.config import FisherConfig
    from edgeuq.fisher.structure import structure_scores

    model = _model(stochastic_blocks=(), head=False)
    x = _x(24).numpy()
    y = np.random.default_rng(2).integers(0, 3, 24)
    g = mask_gradients(model, x, y, batch_size=7)
    ref = structure_scores(model, x, y, FisherConfig(labels="empirical", batch_size=5, progress=False))
    for i in range(2):
        a, b = g.head_fisher()[i], ref[f"blocks.{i}.attn.heads"]
        assert np.allclose(a, b, rtol=1e-4, atol=1e-12), (a, b)
        a, b = g.neuron_fisher()[i], ref[f"blocks.{i}.ffn.neurons"]
        assert np.allclose(a, b, rtol=1e-4, atol=1e-12)


def test_search_is_optimal_by_brute_force_with_uniform_costs_and_respects_budget():
    rng = np.random.default_rng(0)
    hs = [rng.random(3), rng.random(3)]
    ns = [rng.random(4), rng.random(4)]
    hc, nc = [5.0, 5.0], [2.0, 2.0]
    items = [("h", i, j) for i in range(2) for j in range(3)] + [("n", i, j) for i in range(2) for j in range(4)]
    for budget in (14.0, 20.0, 27.0, 40.0):
        got = search_masks(hs, ns, hc, nc, budget)
        cost = sum(got.heads[i].sum() * hc[i] + got.neurons[i].sum() * nc[i] for i in range(2))
        assert cost <= budget
        score = sum((got.heads[i] * hs[i]).sum() + (got.neurons[i] * ns[i]).sum() for i in range(2))
        best = -1.0
        for keep in itertools.product([0, 1], repeat=len(items)):
            kh = [[k for k, it in zip(keep, items) if it[0] == "h" and it[1] == i] for i in range(2)]
            kn = [[k for k, it in zip(keep, items) if it[0] == "n" and it[1] == i] for i in range(2)]
            if any(sum(k) == 0 for k in kh + kn):
                continue
            c = sum(sum(kh[i]) * hc[i] + sum(kn[i]) * nc[i] for i in range(2))
            if c <= budget:
                s = sum(np.dot(kh[i], hs[i]) + np.dot(kn[i], ns[i]) for i in range(2))
                best = max(best, s)
        assert abs(score - best) <= 1e-12, (budget, score, best)
    with pytest.raises(ValueError, match="below the minimum"):
        search_masks(hs, ns, hc, nc, 10.0)


def test_rearrangement_never_increases_the_objective_and_keeps_the_count():
    rng = np.random.default_rng(3)
    for trial in range(20):
        base = rng.standard_normal((50, 1))
        grads = rng.standard_normal((50, 6)) + base * rng.standard_normal(6)  # correlated groups
        keep = np.zeros(6)
        keep[rng.choice(6, size=3, replace=False)] = 1
        new = rearrange_layer(grads, keep)
        assert new.sum() == keep.sum()
        assert pruning_objective(grads, new == 0) <= pruning_objective(grads, keep == 0) + 1e-12
    # interacting groups: pruning the two smallest-diagonal groups (2 and 3, same-sign gradients) costs
    # 1.0; the rearrangement accounts for the off-diagonal terms and finds {1, 2} (0.01). Greedy, so not
    # always the brute-force optimum ({0, 1} cancel exactly: 0) -- Kwon's method is greedy too.
    g = np.array([[0.6, -0.6, 0.5, 0.5]] * 8)
    diag_choice = np.array([1.0, 1.0, 0.0, 0.0])
    assert sorted(np.argsort((g ** 2).mean(0))[:2].tolist()) == [2, 3]
    assert pruning_objective(g, diag_choice == 0) == pytest.approx(1.0)
    new = rearrange_layer(g, diag_choice)
    assert np.flatnonzero(new == 0).tolist() == [1, 2]
    assert pruning_objective(g, new == 0) == pytest.approx(0.01)


def test_teacher_captures_are_computed_once_and_tune_like_fresh_passes():
    """A search passes one TeacherCaptures to every trial's mask tuning: the tuned scales equal
    those of tune_masks computing the unpruned passes itself, for two different trials' masks, and
    the reference passes run once per block and chunk for both trials together."""
    model, x = _model(stochastic_blocks=()), _x(12, seed=7).numpy()
    ref = TeacherCaptures(model, x, batch_size=5)
    for seed in (0, 3):
        masks = _masks(seed=seed, scaled=False)
        fresh, cached = tune_masks(model, masks, x, batch_size=5), tune_masks(model, masks, x, batch_size=5,
                                                                              reference=ref)
        for a, b in zip(fresh.heads + fresh.neurons, cached.heads + cached.neurons):
            assert np.allclose(a, b, rtol=1e-9, atol=1e-12), (a, b)
        assert any(not np.allclose(m, t) for m, t in zip(masks.heads + masks.neurons, cached.heads + cached.neurons))
    assert ref.computed == 2 * 3  # 2 blocks x 3 chunks of 5, 5, 2 windows: not once per trial
    with pytest.raises(ValueError, match="another model, calibration set"):
        tune_masks(model, _masks(), x[:10], batch_size=5, reference=ref)


def test_mask_tuning_solves_the_layer_least_squares_problem():
    """Block 0's head scales equal an explicit lstsq fit of the kept heads' contributions to the
    unpruned attention output (block 0's input is the same in both models), and tuning lowers the
    pruned model's output error."""
    model = _model(stochastic_blocks=(), head=False)
    x = _x(16, seed=4)
    masks = _masks(scaled=False)
    tuned = tune_masks(model, masks, x.numpy(), batch_size=5)
    captured = {}
    h = model.blocks[0].attn.proj.register_forward_pre_hook(lambda m, a: captured.__setitem__("a", a[0].detach()))
    with torch.no_grad():
        model(x)
    h.remove()
    a = captured["a"].double().numpy().reshape(-1, 4, 4)  # rows, heads, head_dim
    w = model.blocks[0].attn.proj.weight.detach().double().numpy().reshape(16, 4, 4)
    contrib = np.einsum("rhd,ohd->hro", a, w).reshape(4, -1)  # head -> flattened contribution
    kept = np.flatnonzero(masks.heads[0])
    want = np.linalg.lstsq(contrib[kept].T, contrib.sum(0), rcond=None)[0]
    assert np.allclose(tuned.heads[0][kept], want, rtol=1e-5, atol=1e-7), (tuned.heads[0][kept], want)
    assert [np.flatnonzero(v).tolist() for v in tuned.heads] == [np.flatnonzero(v).tolist() for v in masks.heads]
    with torch.no_grad():
        ref = model(x)
        err_plain = float((prune_physically(model, masks)(x) - ref).pow(2).mean())
        err_tuned = float((prune_physically(model, tuned)(x) - ref).pow(2).mean())
    assert err_tuned < err_plain, (err_plain, err_tuned)


def test_prune_end_to_end_meets_the_flops_budget_and_writes_a_hashed_plan(tmp_path):
    model = _model()
    x = _x(48, seed=5).numpy()
    y = np.random.default_rng(0).integers(0, 3, 48)
    res = prune(model, x, y, PruneConfig(target_flops=0.5))
    assert res.info["block_macs_after"] <= 0.5 * res.info["block_macs_before"]
    assert res.info["model_macs_after"] < res.info["model_macs_before"]
    # count_macs agrees with the analytic per-head / per-neuron costs
    t, d = model.cfg.tokens, model.cfg.d_model
    h, n = block_costs(t, d, 4)
    removed = sum((4 - k) * h for k in res.info["heads_kept"]) + sum((24 - k) * n for k in res.info["neurons_kept"])
    assert res.info["model_macs_before"] - res.info["model_macs_after"] == removed
    plan = save_prune_plan(res, tmp_path / "plan")
    back = PrunePlan.load(tmp_path / "plan")
    assert back.digest == plan.digest and len(plan.digest) == 64
    lm = back.layer_masks()
    assert all(np.allclose(a, b) for a, b in zip(lm.heads, res.masks.heads))
    with pytest.raises(ValueError, match="exactly one"):
        PruneConfig()


def test_pruned_checkpoint_exports_a_smaller_bundle_that_the_runtime_runs_like_pytorch(tmp_path):
    from edgeuq.bundle import build_bundle
    from edgeuq.export import export_onnx
    from edgeuq.training import load_checkpoint, save_checkpoint
    from edgeuq_runtime import UncertaintyRuntime

    model, masks = _model(), _masks(scaled=True)
    pruned = prune_physically(model, masks)
    sizes = {}
    from edgeuq_runtime.preprocess import zscore_windows

    x = zscore_windows(_x(4, seed=9).numpy())  # the runtime z-scores its input; feed PyTorch the same
    for name, m in (("full", model), ("pruned", pruned)):
        ck = save_checkpoint(m, tmp_path / name / "ck", ("a", "b", "c"), 12000.0)
        back = load_checkpoint(ck.directory).load_model()
        assert back.cfg == m.cfg
        art = export_onnx(ck, tmp_path / name / "onnx")  # verifies ONNX Runtime == PyTorch given the same noise
        bundle = build_bundle(art, tmp_path / name / "bundle", name, "0", default_samples=4)
        sizes[name] = sum(p.stat().st_size for p in (art.trunk_path, art.head_path))
        rt = UncertaintyRuntime(bundle.root, threads=1)
        with torch.no_grad():
            want = torch.softmax(m(torch.from_numpy(x)), -1).numpy()
        got = rt.deterministic(x).probs
        assert np.abs(got - want).max() <= 1e-5
    assert sizes["pruned"] < 0.8 * sizes["full"], sizes
