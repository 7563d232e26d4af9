"""Compression stages on artifacts: teachers from a checkpoint or a bundle, hashed outputs."""
import numpy as np
import pytest
import torch

from edgeuq.compress.distill import DistillConfig
from edgeuq.training import TrainConfig
from edgeuq.compress.stages import Teacher, distill_stage, load_teacher
from edgeuq.compress.transfer import TransferConfig, TransferSetArtifact
from edgeuq.data import Splits, WindowDataset
from edgeuq.models import ModelConfig, build_model, mc_sample_probs
from edgeuq_runtime.preprocess import zscore_windows

L = 64


def _cfg(**kw):
    base = dict(input_length=L, num_classes=2, patch=8, embed="linear", d_model=16, heads=2, depth=1, ffn=16,
                stochastic_blocks=(), stochastic_head=True)
    return ModelConfig(**{**base, **kw})


def _ds(n, seed):
    rng = np.random.default_rng(seed)
    return WindowDataset(zscore_windows(rng.standard_normal((n, L)).astype(np.float32)), rng.integers(0, 2, n),
                         ("a", "b"), 1000.0)


@pytest.fixture
def teacher_checkpoint(tmp_path):
    from edgeuq.training import save_checkpoint

    torch.manual_seed(0)
    model = build_model(_cfg(stochastic_blocks=(0,), dropout=0.3)).eval()
    return save_checkpoint(model, tmp_path / "teacher", ("a", "b"), 1000.0), model


def test_checkpoint_teacher_labels_like_mc_sample_probs(teacher_checkpoint):
    ck, model = teacher_checkpoint
    x = _ds(5, 1).x
    t = load_teacher(ck.directory)
    got = t.label(x, 6, 3)
    want = mc_sample_probs(model, torch.from_numpy(x), 6, rng=np.random.default_rng(3)).numpy()
    assert got.shape == (6, 5, 2) and np.allclose(got, want, atol=1e-6)
    assert t.digest == ck.sha256 and t.num_classes == 2


def test_bundle_teacher_is_the_device_runtime(teacher_checkpoint, tmp_path):
    from edgeuq.bundle import build_bundle
    from edgeuq.evaluate import run_runtime
    from edgeuq.export import export_onnx
    from edgeuq_runtime import UncertaintyRuntime

    ck, _ = teacher_checkpoint
    bundle = build_bundle(export_onnx(ck, tmp_path / "onnx"), tmp_path / "bundle", "t", "0", default_samples=4)
    x = _ds(7, 2).x
    t = load_teacher(bundle.root)
    got = t.label(x, 5, 11)
    want = run_runtime(UncertaintyRuntime(bundle.root, seed=11), x, 5, 11).samples
    assert got.shape == (5, 7, 2) and np.allclose(got, want, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="neither a checkpoint"):
        load_teacher(tmp_path)


def test_distill_stage_writes_hashed_checkpoint_and_transfer_set(tmp_path):
    splits = Splits(_ds(40, 0), _ds(12, 1), _ds(12, 2))
    flat = np.tile(np.array([0.5, 0.5], np.float32), (1, 1, 1))
    teacher = Teacher("constant", "0" * 64, lambda x, s, seed: np.broadcast_to(flat, (s, len(x), 2)).copy(), 2)
    ck = distill_stage(teacher, _cfg(), splits, tmp_path / "out",
                       TransferConfig(copies=1, teacher_samples=4, synthetic_fraction=0.0),
                       DistillConfig(train=TrainConfig(epochs=2, batch_size=16, lr=2e-3, patience=5)), progress=False, log=lambda s: None)
    art = TransferSetArtifact.load(tmp_path / "out" / "transfer")
    assert art.windows == 80 and art.teacher_samples == 4
    assert ck.metrics["distill"]["transfer_digest"] == art.digest
    assert ck.metrics["distill"]["teacher_digest"] == "0" * 64
    from edgeuq.training import load_checkpoint

    back = load_checkpoint(ck.directory)
    assert back.sha256 == ck.sha256 and back.config == _cfg()
    model = back.load_model()
    assert model.cfg.stochastic_head and not model.cfg.stochastic_blocks
    with pytest.raises(ValueError, match="classes"):
        distill_stage(Teacher("3-class", "", teacher.label, 3), _cfg(), splits, tmp_path / "bad", log=lambda s: None)


def test_the_distill_step_with_a_transfer_set_is_distill_stage(teacher_checkpoint, tmp_path):
    """`edgeuq distill` runs the chain's `distill` step with the transfer options; on the same
    splits, teacher, init weights and settings it trains the very model `distill_stage` (the code
    the command ran before) trains, and keeps the same transfer set."""
    import copy

    from edgeuq.compress.steps import StepData, get_step
    from edgeuq.compress.transfer import load_transfer_set

    ck, _ = teacher_checkpoint
    teacher = load_teacher(ck.directory)
    splits = Splits(_ds(40, 0), _ds(12, 1), _ds(12, 2))
    torch.manual_seed(5)
    init = build_model(_cfg())
    tcfg = TransferConfig(copies=1, teacher_samples=3, synthetic_fraction=0.1, seed=4)
    dcfg = DistillConfig(train=TrainConfig(epochs=2, batch_size=16, lr=2e-3, patience=5, seed=4))
    ref = distill_stage(teacher, _cfg(), splits, tmp_path / "stage", tcfg, dcfg, progress=False,
                        log=lambda s: None, init=copy.deepcopy(init)).load_model()
    step = get_step("distill")
    opts = step.Options(epochs=2, batch_size=16, lr=2e-3, patience=5, seed=4, copies=1, teacher_samples=3,
                        synthetic_fraction=0.1, keep_transfer=True)
    data = StepData(x=splits.train.x, y=splits.train.y, x_val=splits.val.x, y_val=splits.val.y, teacher=teacher.label,
                    teacher_info={"teacher": teacher.source, "teacher_digest": teacher.digest})
    res = step.apply(init, data, opts)
    got = res.model
    err = max(float((a - b).abs().max()) for a, b in zip(ref.state_dict().values(), got.state_dict().values()))
    assert err <= 1e-6, err
    kept = load_transfer_set(res.companions["transfer"](tmp_path / "kept", ck).directory)
    want = load_transfer_set(tmp_path / "stage" / "transfer")
    assert np.array_equal(kept.x, want.x) and np.allclose(kept.probs, want.probs, atol=1e-7)
