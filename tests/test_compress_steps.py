"""The compression-step registry (edgeuq.compress.steps): built-ins found by package scan, a new
step is one decorated class, options read strictly, and each built-in does what it says against
an independent reference (the low-rank step against numpy's SVD, prune against prune() itself
run directly, distill moving the student towards its teacher)."""
import dataclasses

import numpy as np
import pytest
import torch

from edgeuq.compress.prune import PruneConfig, prune
from edgeuq.compress.chain import chain_from_table, data_key, run_chain
from edgeuq.compress.steps import COMPRESSION_STEPS, CompressionStep, StepData, StepResult, get_step
from edgeuq.compress.steps.lowrank import LowRankLinear, factorise
from edgeuq.compress.transfer import label_with_model
from edgeuq.models import ModelConfig, build_model
from edgeuq.training import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")
T_LEN = 256


def _model(seed=0):
    cfg = ModelConfig(input_length=T_LEN, num_classes=3, patch=32, embed="conv", stem_channels=8, d_model=16,
                      heads=4, depth=2, ffn=24, stochastic_blocks=(1,), stochastic_head=True)
    torch.manual_seed(seed)
    return build_model(cfg).eval()


def _x(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, T_LEN)).astype(np.float32)


def test_builtins_are_found_by_the_package_scan():
    assert {"distill", "prune", "lowrank"} <= set(COMPRESSION_STEPS)
    assert all(isinstance(COMPRESSION_STEPS[n], CompressionStep) for n in COMPRESSION_STEPS)


def test_a_new_step_is_one_decorated_class_and_runs_in_a_declared_chain(tmp_path):
    @COMPRESSION_STEPS.register("toy_scale")
    class ToyScale(CompressionStep):
        @dataclasses.dataclass(frozen=True)
        class Options:
            factor: float = 1.0

        def apply(self, model, data, options):
            import copy
            new = copy.deepcopy(model)
            with torch.no_grad():
                for p in new.parameters():
                    p.mul_(options.factor)
            return StepResult(new, {"factor": options.factor})

    try:
        m = _model()
        ck = save_checkpoint(m, tmp_path / "base", ("a", "b", "c"), 1000.0)
        data = StepData(x=_x(4))
        chain = chain_from_table({"steps": [{"name": "toy_scale", "factor": 2.0}, {"name": "toy_scale"}]})
        res = run_chain(ck, chain, data, tmp_path / "out", data_key(data), progress=False, log=lambda s: None)
        w0, w1 = next(m.parameters()).detach(), next(res.checkpoint.load_model().parameters()).detach()
        err = float((w1 - 2.0 * w0).abs().max())
        assert err <= 1e-6, err
        assert [r["step"] for r in res.records] == ["toy_scale", "toy_scale"]
        assert res.records[0]["options"] == {"factor": 2.0} and res.records[0]["seconds"] >= 0.0
        assert res.records[0]["info"] == {"factor": 2.0}
        with pytest.raises(ValueError, match=r"compress\.steps\[0\]\.factr: unknown option of step 'toy_scale'"):
            chain_from_table({"steps": [{"name": "toy_scale", "factr": 2.0}]})
        with pytest.raises(ValueError, match=r"unknown option\(s\) \['factr'\]"):
            from edgeuq.compress.steps import step_options
            step_options(get_step("toy_scale"), {"factr": 2.0})
    finally:
        COMPRESSION_STEPS.remove("toy_scale")
    with pytest.raises(LookupError, match="toy_scale"):
        get_step("toy_scale")


def test_a_step_without_frozen_options_is_refused():
    with pytest.raises(TypeError, match="frozen dataclass Options"):
        @COMPRESSION_STEPS.register("toy_mutable")
        class ToyMutable(CompressionStep):
            @dataclasses.dataclass
            class Options:
                factor: float = 1.0
    assert "toy_mutable" not in COMPRESSION_STEPS


@pytest.mark.parametrize("rank", [1, 3, 8])
def test_factorise_is_the_best_rank_r_approximation(rank):
    torch.manual_seed(rank)
    layer = torch.nn.Linear(8, 12)
    lr = factorise(layer, rank)
    w = layer.weight.detach().double().numpy()
    w_r = (lr.up.weight.detach().double() @ lr.down.weight.detach().double()).numpy()
    s = np.linalg.svd(w, compute_uv=False)
    want = float(np.sqrt(np.sum(s[rank:] ** 2)))              # Eckart-Young: the tail's energy
    got = float(np.linalg.norm(w - w_r))
    assert abs(got - want) <= 1e-5 * max(1.0, want), (got, want)
    x = torch.randn(5, 8)
    ref = x.double() @ torch.from_numpy(w_r).T + layer.bias.detach().double()
    with torch.no_grad():
        err = float((lr(x).double() - ref).abs().max())
    assert err <= 1e-5, err


def test_lowrank_step_factorises_block_layers_and_leaves_the_input_model_alone():
    m = _model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    res = get_step("lowrank").apply(m, StepData(x=_x(2)), get_step("lowrank").Options(rank_fraction=0.25))
    assert res.info["factorised"] and res.info["params_after"] < res.info["params_before"]
    assert all(n.startswith("blocks.") for n in res.info["factorised"])
    assert any(isinstance(mod, LowRankLinear) for mod in res.model.modules())
    assert not any(isinstance(mod, LowRankLinear) for mod in m.modules())
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    with torch.no_grad():
        y = res.model(torch.from_numpy(_x(3)))
    assert torch.isfinite(y).all()
    with pytest.raises(ValueError, match="rank_fraction"):
        get_step("lowrank").Options(rank_fraction=0.0)


def test_prune_step_equals_prune_run_directly():
    m, x = _model(), _x(16)
    y = np.arange(16) % 3
    res = get_step("prune").apply(m, StepData(x=x, y=y), get_step("prune").Options(target_flops=0.5))
    ref = prune(m, x, y, PruneConfig(target_flops=0.5))
    assert res.info["heads_kept"] == ref.info["heads_kept"] and res.info["neurons_kept"] == ref.info["neurons_kept"]
    with torch.no_grad():
        a, b = res.model(torch.from_numpy(x)), ref.model(torch.from_numpy(x))
    err = float((a - b).abs().max())
    assert err <= 1e-5, err
    with pytest.raises(ValueError, match="exactly one"):
        get_step("prune").Options()


def test_distill_step_moves_the_student_towards_its_teacher():
    teacher, student = _model(seed=1), _model(seed=2)
    x, xv = _x(48, 0), _x(16, 1)

    def label(x, s, seed):
        return label_with_model(teacher, x, s, seed)

    def kl_to_teacher(model):
        p_t = label_with_model(teacher, xv, 8, 5).mean(0)
        p_s = label_with_model(model, xv, 8, 5).mean(0)
        return float(np.mean(np.sum(p_t * (np.log(p_t + 1e-9) - np.log(p_s + 1e-9)), axis=1)))

    opts = get_step("distill").Options(epochs=8, batch_size=16, student_samples=2, teacher_samples=4, patience=8,
                                       lr=5e-3)
    res = get_step("distill").apply(student, StepData(x=x, x_val=xv, teacher=label), opts)
    assert res.model is not student and res.info["best_epoch"] >= 0
    assert kl_to_teacher(res.model) < kl_to_teacher(student)
    with pytest.raises(ValueError, match="needs a teacher"):
        get_step("distill").apply(student, StepData(x=x), opts)
