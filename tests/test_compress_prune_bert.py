"""Kwon et al.'s pruning over the BERT trunk's post-norm layers (``edgeuq.compress.kwon`` through the
trunk's maskable blocks), and the layer choice by layer-mask Fisher (``PruneConfig.keep_layers``).

Every reference here is written independently of the hooks the compression stage uses: a plain
loop over ``BertLayer`` pieces with explicit masks, ``numpy.linalg.lstsq`` on tensors captured by
that loop, central finite differences, and MAC counts from the weight shapes."""
import math

import numpy as np
import pytest
import torch

from edgeuq.compress.kwon import choose_layers, mask_gradients, tune_masks
from edgeuq.compress.masks import LayerMasks, apply_masks, as_tensors
from edgeuq.compress.prune import PruneConfig, prune
from edgeuq.compress.slicing import count_macs, drop_layers, prune_physically
from edgeuq.models import build_model
from edgeuq.models.bert import BertConfig, key_bias_from_mask, masked_mean_pool
from edgeuq.models.config import bert_model_config

from text_teacher_support import padded_ids

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BERT = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48,
                  max_position_embeddings=16)
LENGTH, H, DH, F, L = 12, 4, 8, 48, 3


def _ids(n: int, seed: int) -> np.ndarray:
    return padded_ids(n, BERT.vocab_size, LENGTH, seed)


def _model(seed: int = 0):
    torch.manual_seed(seed)
    m = build_model(bert_model_config(BERT, 3, LENGTH, scheme="mc_dropout", head_hidden=16)).eval()
    with torch.no_grad():  # non-trivial LayerNorms and biases
        for name, p in m.named_parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


def _masks(seed: int = 0, scaled: bool = True) -> LayerMasks:
    rng = np.random.default_rng(seed)
    heads = [np.array([1.0, 0.0, 1.0, 1.0]), np.array([0.0, 1.0, 0.0, 0.0]), np.array([1.0, 1.0, 0.0, 1.0])]
    neurons = [(rng.random(F) < p).astype(float) for p in (0.5, 0.3, 0.6)]
    for n in neurons:
        n[5] = 1.0
    if scaled:
        heads = [h * rng.uniform(0.5, 1.5, h.shape) for h in heads]
        neurons = [n * rng.uniform(0.5, 1.5, n.shape) for n in neurons]
    return LayerMasks(tuple(heads), tuple(neurons))


# ------------------------------------------------------------------ independent reference forward
def _ref_layer(layer, x, bias, head_scale, ffn_scale):
    """BertLayer written out with explicit masks; returns (output, LN1 input, ctx, x1, hidden, LN2 input)."""
    b, t, d = x.shape
    a = layer.attention.self
    q, k, v = (lin(x).reshape(b, t, H, DH).transpose(1, 2) for lin in (a.query, a.key, a.value))
    p = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(DH) + bias, -1)
    ctx = (p @ v).transpose(1, 2).reshape(b, t, H * DH)
    o = layer.attention.output
    s1 = x + (ctx * head_scale.repeat_interleave(DH)) @ o.dense.weight.T + o.dense.bias
    x1 = o.LayerNorm(s1)
    hid = torch.nn.functional.gelu(layer.intermediate.dense(x1))
    s2 = x1 + (hid * ffn_scale) @ layer.output.dense.weight.T + layer.output.dense.bias
    return layer.output.LayerNorm(s2), s1, ctx, x1, hid, s2


def _ref_forward(model, ids, layer_masks=None, masks=None, upto=None):
    """Logits (and per-layer captures) of the model with layer masks h + m (layer(h) - h) and head /
    neuron scales, by the plain loop above."""
    enc = model.encoder
    mask = enc.mask(ids)
    bias = key_bias_from_mask(mask)
    h = enc.embeddings(ids)
    caps = []
    for i, layer in enumerate(enc.layers):
        hs = torch.ones(H) if masks is None else torch.as_tensor(masks.heads[i], dtype=torch.float32)
        ns = torch.ones(F) if masks is None else torch.as_tensor(masks.neurons[i], dtype=torch.float32)
        out, *cap = _ref_layer(layer, h, bias, hs, ns)
        caps.append([h] + cap)
        m = 1.0 if layer_masks is None else layer_masks[i]
        h = h + m * (out - h)
    return model.head_forward(masked_mean_pool(h, mask)), caps


def test_reference_forward_is_the_model():
    model, x = _model(), torch.from_numpy(_ids(6, 0))
    with torch.no_grad():
        err = float((_ref_forward(model, x)[0] - model(x)).abs().max())
    assert err <= 1e-5, err


def test_masked_bert_equals_the_physically_sliced_model_and_the_reference():
    model, masks = _model(), _masks()
    x = torch.from_numpy(_ids(8, 1))
    with torch.no_grad():
        with apply_masks(model, *as_tensors(masks)):
            masked = model(x)
        ref = _ref_forward(model, x, masks=masks)[0]
        pruned = prune_physically(model, masks)
        sliced = pruned(x)
    assert [(b.heads, b.head_dim, b.ffn) for b in pruned.cfg.blocks] == [
        (int(np.count_nonzero(h)), DH, int(np.count_nonzero(n))) for h, n in zip(masks.heads, masks.neurons)]
    layer = pruned.encoder.layers[1]
    assert tuple(layer.attention.self.query.weight.shape) == (DH, 32)
    assert tuple(layer.attention.output.dense.weight.shape) == (32, DH)
    for a, b in ((masked, ref), (sliced, masked)):
        err = float((a - b).abs().max())
        assert err <= 1e-5, err
    # the masks did something (else the equality says nothing)
    with torch.no_grad():
        assert not float((masked - model(x)).abs().max()) <= 1e-3
    # stochastic head: the same noise on the same head gives the same samples
    noise = {s.name: torch.from_numpy((np.random.default_rng(0).random((len(x),) + tuple(s.shape)) > 0.5)
                                      .astype(np.float32) / 0.5) for s in model.noise_specs()}
    with torch.no_grad():
        with apply_masks(model, *as_tensors(masks)):
            want = model.head_forward(model.trunk(x), noise)
        got = pruned.head_forward(pruned.trunk(x), noise)
    err = float((got - want).abs().max())
    assert err <= 1e-5, err


def test_mask_tuning_is_the_least_squares_fit_of_the_pre_layernorm_outputs_and_lowers_the_error():
    """Layer 0's head scales and (given them) its neuron scales equal numpy lstsq fits on captures of
    the reference loop; every layer's pre-LayerNorm output error is lower than untuned."""
    model, masks = _model(1), _masks(scaled=False)
    ids = _ids(20, 2)
    x = torch.from_numpy(ids)
    tuned = tune_masks(model, masks, ids, batch_size=7)
    assert [np.flatnonzero(v).tolist() for v in tuned.heads] == [np.flatnonzero(v).tolist() for v in masks.heads]
    with torch.no_grad():
        _, full = _ref_forward(model, x)
        valid = model.encoder.mask(x).bool().numpy().reshape(-1)
        # heads of layer 0: the layer input is the same in both models
        x0, s1, ctx = (t.double().numpy() for t in full[0][:3])
        dense = model.encoder.layers[0].attention.output.dense
        w, bo = dense.weight.detach().double().numpy(), dense.bias.detach().double().numpy()
        contrib = np.einsum("btkd,okd->kbto", ctx.reshape(*ctx.shape[:2], H, DH), w.reshape(32, H, DH))
        kept = np.flatnonzero(masks.heads[0])
        a = contrib.reshape(H, -1, 32)[kept][:, valid]  # the real tokens (padding never reaches the output)
        target = (s1 - x0 - bo).reshape(-1, 32)[valid]
        want = np.linalg.lstsq(a.reshape(len(kept), -1).T, target.reshape(-1), rcond=None)[0]
        assert np.allclose(tuned.heads[0][kept], want, rtol=1e-4, atol=1e-6), (tuned.heads[0][kept], want)
        # neurons of layer 0, given the tuned heads (the pruned model's own x1)
        heads_only = LayerMasks(tuple(tuned.heads), tuple(np.ones(F) for _ in range(L)))
        _, cur = _ref_forward(model, x, masks=heads_only)
        x1, hid = cur[0][3].double().numpy(), cur[0][4].double().numpy()
        out = model.encoder.layers[0].output.dense
        w2, b2 = out.weight.detach().double().numpy(), out.bias.detach().double().numpy()
        kn = np.flatnonzero(masks.neurons[0])
        cols = hid.reshape(-1, F)[valid][:, kn, None] * w2.T[None, kn, :]  # rows, kept, out
        target = (full[0][5].double().numpy() - x1 - b2).reshape(-1, 32)[valid]
        want = np.linalg.lstsq(cols.transpose(1, 0, 2).reshape(len(kn), -1).T, target.reshape(-1), rcond=None)[0]
        assert np.allclose(tuned.neurons[0][kn], want, rtol=1e-4, atol=1e-6)

        def errors(m):
            _, c = _ref_forward(model, x, masks=m)
            return [float(((c[i][5] - full[i][5]) ** 2).sum(-1).reshape(-1)[valid].sum()) for i in range(L)]

        plain, fit = errors(masks), errors(tuned)
    assert all(f < p for f, p in zip(fit, plain)), (plain, fit)


def _layer_loss(model, x, target, layer_masks):
    with torch.no_grad():
        z = _ref_forward(model, x, layer_masks=layer_masks)[0].double()
        return torch.nn.functional.cross_entropy(z, target, reduction="none").numpy()


def test_layer_mask_gradients_match_finite_differences():
    model, ids = _model(2), _ids(6, 3)
    x = torch.from_numpy(ids)
    y = np.arange(6) % 3
    g = mask_gradients(model, ids, y, batch_size=4)
    assert g.layers.shape == (6, L)
    eps = 1e-3
    for i in range(L):
        up, dn = [1.0] * L, [1.0] * L
        up[i] += eps
        dn[i] -= eps
        fd = (_layer_loss(model, x, torch.from_numpy(y), up) - _layer_loss(model, x, torch.from_numpy(y), dn)) / (2 * eps)
        assert np.allclose(g.layers[:, i], fd, rtol=2e-2, atol=2e-4), (i, g.layers[:, i], fd)


def test_head_and_neuron_mask_gradients_match_finite_differences():
    """Per-sample head / FFN-neuron mask gradients on the bert trunk (the hooks) against central
    differences of the plain-loop reference with explicit scales."""
    model, ids = _model(4), _ids(6, 5)
    x, y = torch.from_numpy(ids), np.arange(6) % 3
    g = mask_gradients(model, ids, y, batch_size=4)
    assert [h.shape for h in g.heads] == [(6, H)] * L and [n.shape for n in g.neurons] == [(6, F)] * L
    eps = 1e-3

    def loss(which, i, j, delta):
        ones = LayerMasks(tuple(np.ones(H) for _ in range(L)), tuple(np.ones(F) for _ in range(L)))
        groups = [list(ones.heads), list(ones.neurons)]
        groups[which][i] = groups[which][i].copy()
        groups[which][i][j] += delta
        with torch.no_grad():
            z = _ref_forward(model, x, masks=LayerMasks(tuple(groups[0]), tuple(groups[1])))[0].double()
        return torch.nn.functional.cross_entropy(z, torch.from_numpy(y), reduction="none").numpy()

    for which, i, j in ((0, 0, 1), (0, 2, 3), (1, 1, 5), (1, 2, 17)):
        fd = (loss(which, i, j, eps) - loss(which, i, j, -eps)) / (2 * eps)
        got = (g.heads if which == 0 else g.neurons)[i][:, j]
        assert np.allclose(got, fd, rtol=2e-2, atol=2e-4), (which, i, j, got, fd)


def _lower_layer_matters_model():
    """Layers 1 and 2 barely change their input: unit LayerNorms everywhere after layer 0's
    attention, and their sublayer outputs scaled by 1e-3; layer 0 is a full layer."""
    model = _model(3)
    with torch.no_grad():
        layers = model.encoder.layers
        for ln in (layers[0].output.LayerNorm, *(m for l in layers[1:] for m in (l.attention.output.LayerNorm,
                                                                                 l.output.LayerNorm))):
            ln.weight.fill_(1.0)
            ln.bias.zero_()
        for l in layers[1:]:
            for lin in (l.attention.output.dense, l.output.dense):
                lin.weight.mul_(1e-3)
                lin.bias.mul_(1e-3)
    return model


def test_keep_layers_keeps_the_layers_of_largest_fisher_not_the_top_ones():
    model = _lower_layer_matters_model()
    ids, y = _ids(24, 4), np.arange(24) % 3
    fisher = mask_gradients(model, ids, y).layer_fisher()
    assert int(np.argmax(fisher)) == 0 and fisher[0] > 100 * max(fisher[1:]), fisher
    res = prune(model, ids, y, PruneConfig(target_flops=1.0, keep_layers=1))
    assert res.info["kept_layers"] == [0] != [L - 1]  # the top-1 choice would be the last layer
    assert np.allclose(res.info["layer_fisher"], fisher, rtol=1e-6)
    assert res.model.cfg.depth == 1 and len(res.model.encoder.layers) == 1
    # dropping = the reference loop with the other layers' masks at 0; embeddings and head unchanged
    x = torch.from_numpy(_ids(5, 5))
    with torch.no_grad():
        want = _ref_forward(model, x, layer_masks=[1.0, 0.0, 0.0])[0]
        err = float((res.model(x) - want).abs().max())
    assert err <= 1e-5, err
    assert choose_layers(np.array([3.0, 0.5, 2.0]), 2) == (0, 2)
    with pytest.raises(ValueError, match="keep_layers"):
        choose_layers(np.array([3.0, 0.5, 2.0]), 4)


def test_drop_layers_keeps_embeddings_and_head_and_matches_masked_layers():
    model = _model(4)
    x = torch.from_numpy(_ids(5, 6))
    small = drop_layers(model, (0, 2))
    sd, sm = model.state_dict(), small.state_dict()
    for k in sm:
        if k.startswith("encoder.embeddings.") or k.startswith("head."):
            assert torch.equal(sm[k], sd[k]), k
    for k in (k for k in sd if k.startswith("encoder.encoder.layer.2.")):
        assert torch.equal(sm[k.replace("layer.2.", "layer.1.")], sd[k]), k
    with torch.no_grad():
        err = float((small(x) - _ref_forward(model, x, layer_masks=[1.0, 0.0, 1.0])[0]).abs().max())
    assert err <= 1e-5, err
    with pytest.raises(ValueError, match="distinct block indices"):
        drop_layers(model, (2, 0))


def _brute_macs(model, t: int) -> int:
    """MACs of one pass on ``t`` tokens from the weight shapes: every Linear (rows x cols per
    token for the encoder, once for the pooled head) + the two attention matmuls per head."""
    total = 0
    for layer in model.encoder.layers:
        for lin in (layer.attention.self.query, layer.attention.self.key, layer.attention.self.value,
                    layer.attention.output.dense, layer.intermediate.dense, layer.output.dense):
            total += t * lin.weight.shape[0] * lin.weight.shape[1]
        total += 2 * t * t * layer.attention.self.query.weight.shape[0]
    for lin in (model.head.fc1, model.head.fc2):
        total += lin.weight.shape[0] * lin.weight.shape[1]
    return total


@pytest.mark.parametrize("keep", [None, 2])
def test_prune_respects_the_macs_budget_by_a_brute_force_count(keep):
    model = _model(5)
    ids, y = _ids(32, 7), np.arange(32) % 3
    res = prune(model, ids, y, PruneConfig(target_flops=0.5, keep_layers=keep))
    assert res.info["model_macs_before"] == count_macs(model) == _brute_macs(model, LENGTH)
    assert res.info["model_macs_after"] == count_macs(res.model) == _brute_macs(res.model, LENGTH)
    head = model.head.fc1.weight.numel() + model.head.fc2.weight.numel()
    kept_before = _brute_macs(drop_layers(model, res.info["kept_layers"]), LENGTH) - head
    assert _brute_macs(res.model, LENGTH) - head <= 0.5 * kept_before
    assert res.info["block_macs_before"] == kept_before and res.info["block_macs_after"] == \
        _brute_macs(res.model, LENGTH) - head
    assert len(res.info["kept_layers"]) == (keep or L)
    assert res.info["heads_kept"] == [b.heads for b in res.model.cfg.blocks]


def test_prune_refuses_a_bert_trunk_with_pretrained_density_layers():
    torch.manual_seed(0)
    cfg = bert_model_config(BERT, 3, LENGTH, scheme="mc_dropout", head_hidden=16,
                            trunk_options={"density_features": "frozen_avg", "frozen_layers": 1})
    model = build_model(cfg).eval()
    with pytest.raises(ValueError, match="density_features 'frozen_avg'"):
        prune(model, _ids(8, 0), np.arange(8) % 3, PruneConfig(target_flops=0.5))
