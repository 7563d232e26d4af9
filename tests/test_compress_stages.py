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
