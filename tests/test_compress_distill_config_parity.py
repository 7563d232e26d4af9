"""``DistillConfig`` now holds its optimiser options as the project's one ``TrainConfig``
(``cfg.train``) instead of repeating them. The reference is the pre-change implementation itself,
read from git at the commit before the change (:data:`PRE_CHANGE`) and run beside the new code: the
distilled student's weights, loss history and best epoch agree on a tiny seeded model (with and
without feature distillation, and through the ``distill`` compression step), and the step's
strict option keys and defaults (``compress.steps[i].epochs``, ``--option distill.epochs=3``) are
the pre-change ones. Without that commit in the clone's history (a shallow clone) the parity
tests skip and say so."""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from edgeuq.compress.chain import chain_from_table, chain_table
from edgeuq.compress.cli import _option
from edgeuq.compress.distill import DISTILL_TRAIN, DistillConfig, distill_model
from edgeuq.compress.steps import StepData, get_step
from edgeuq.compress.transfer import TransferSet
from edgeuq.models import ModelConfig, build_model
from edgeuq.training import TrainConfig
from pre_change import module_at

pytestmark = pytest.mark.usefixtures("one_torch_thread")
#: The last commit before DistillConfig's optimiser options moved into ``train: TrainConfig``.
PRE_CHANGE = "d51eb9686af17699546ba5812d9f757c82d52c94"
T_LEN, C = 128, 3


def old_module(path: str, package: str):
    """The module ``path`` as it was at :data:`PRE_CHANGE` (:func:`pre_change.module_at`)."""
    return module_at(PRE_CHANGE, path, package)


def _old():
    return old_module("edgeuq/compress/distill.py", "edgeuq.compress")


def _student(seed=0):
    cfg = ModelConfig(input_length=T_LEN, num_classes=C, patch=32, embed="conv", stem_channels=8, d_model=16,
                      heads=4, depth=1, ffn=24, stochastic_blocks=(0,), stochastic_head=True)
    torch.manual_seed(seed)
    return build_model(cfg)


def _probs(n, s, seed):
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.ones(C), size=(s, n)).astype(np.float32)


def _transfer(n, seed, features=False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, T_LEN)).astype(np.float32)
    f = rng.standard_normal((n, 6)).astype(np.float32) if features else None
    y = np.where(np.arange(n) % 4 == 3, -1, np.arange(n) % C).astype(np.int64)  # some windows unlabelled
    return TransferSet(x, _probs(n, 4, seed + 100), f), y


def _max_weight_err(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    return max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa if sa[k].is_floating_point())


CASES = {
    "kl+uq": dict(loss="kl+uq", temperature=1.5, uq_weight=1.0, ce_weight=0.3, student_samples=3),
    "kl+features": dict(loss="kl", student_samples=2, feature_weight=0.5, feature_loss="cosine"),
}
OPT = dict(epochs=3, batch_size=16, lr=3e-3, weight_decay=5e-3, patience=2, seed=5)


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_distilled_student_equals_the_pre_change_result(case):
    old = _old()
    loss_opts = CASES[case]
    feats = loss_opts.get("feature_weight", 0) > 0
    (tr, ytr), (va, yva) = _transfer(40, 0, feats), _transfer(24, 1, feats)
    s_old, s_new = _student(), _student()
    r_old = old.distill_model(s_old, tr, ytr, va, yva, old.DistillConfig(**loss_opts, **OPT), progress=False)
    r_new = distill_model(s_new, tr, ytr, va, yva, DistillConfig(**loss_opts, train=TrainConfig(**OPT)),
                          progress=False)
    err = _max_weight_err(s_old, s_new)
    assert err <= 1e-6, err
    assert r_new.best_epoch == r_old.best_epoch and len(r_new.history) == len(r_old.history)
    h = float(np.max(np.abs(np.asarray(r_new.history) - np.asarray(r_old.history))))
    assert h <= 1e-6, h
    assert (r_new.projection is None) == (r_old.projection is None)
    if feats:
        perr = _max_weight_err(r_old.projection, r_new.projection)
        assert perr <= 1e-6, perr


def test_defaults_and_the_flat_form_are_the_pre_change_ones():
    old = _old()
    flat_old = old.DistillConfig().to_dict()
    flat_new = DistillConfig().to_dict()
    assert flat_new.pop("threads") == 0  # a new key: TrainConfig's, 0 = torch's default threads
    assert flat_new.pop("hidden_weight") == 0.0  # a new key: hidden-state matching, off by default
    assert flat_new.pop("length_buckets") == 0  # a new key: length-bucketed batches, off by default
    assert flat_new.pop("density_weight") == 0.0  # a new key: density-feature matching, off by default
    assert flat_new == flat_old
    assert DistillConfig.from_flat(flat_old) == DistillConfig()
    assert DistillConfig.from_flat({"epochs": 3, "loss": "kl"}) == DistillConfig(
        loss="kl", train=dataclasses.replace(DISTILL_TRAIN, epochs=3))
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['epoch'\]"):
        DistillConfig.from_flat({"epoch": 3})
    with pytest.raises(ValueError, match="train must be a TrainConfig"):
        DistillConfig(train={"epochs": 3})
    with pytest.raises(ValueError, match="lr must be positive"):
        DistillConfig.from_flat({"lr": 0.0})


def test_the_step_keeps_its_strict_option_keys_and_defaults():
    old = _old()
    want = {f.name: f.default for f in dataclasses.fields(old.DistillConfig)}
    want["teacher_samples"] = 8
    want["hidden_weight"] = 0.0   # hidden-state matching (bert-trunk students of a bert teacher): off by default
    want["length_buckets"] = 0    # length-bucketed batches (token students): off by default
    want["density_weight"] = 0.0  # density-feature matching (token students of a teacher with one): off
    # the transfer-set options (added when `edgeuq distill` became a one-step chain): off by default,
    # so the step distils on its windows as before
    from edgeuq.compress.transfer import AUGMENTATIONS
    want.update(copies=0, kinds=AUGMENTATIONS, snr_db=(-6.0, 20.0), clip_level=(0.5, 2.0), synthetic_fraction=0.0,
                keep_transfer=False)
    got = {f.name: f.default for f in dataclasses.fields(get_step("distill").Options)}
    assert got == want
    # a recipe's [[compress.steps]] and `edgeuq compress --option distill.epochs=3`, same keys as before
    (st,) = chain_from_table({"steps": [{"name": "distill", "epochs": 4, "lr": 1e-3, "loss": "kl"}]})
    assert st.options.to_config() == DistillConfig(loss="kl", train=dataclasses.replace(DISTILL_TRAIN, epochs=4,
                                                                                          lr=1e-3))
    table = chain_table(None, steps=["distill"], overrides=[_option("distill.epochs=3"),
                                                             _option("distill.teacher_samples=2")])
    (st,) = chain_from_table(table)
    assert st.options.epochs == 3 and st.options.teacher_samples == 2 and st.options.to_config().train.epochs == 3
    assert st.options_dict() == {**{k: v for k, v in want.items()}, "epochs": 3, "teacher_samples": 2}
    with pytest.raises(ValueError, match=r"compress\.steps\[0\]\.threads: unknown option of step 'distill'"):
        chain_from_table({"steps": [{"name": "distill", "threads": 2}]})
    with pytest.raises(ValueError, match=r"compress\.steps\[0\] \(distill\): .*epochs"):
        chain_from_table({"steps": [{"name": "distill", "epochs": 0}]})
    with pytest.raises(ValueError, match="teacher_samples"):
        chain_from_table({"steps": [{"name": "distill", "teacher_samples": 0}]})


def test_the_distill_step_equals_the_pre_change_step():
    """The step labels train/val with the teacher at seeds (seed, seed + 1), seeds torch and
    distils a copy: the pre-change DistillConfig + distill_model on the same sets agrees."""
    old = _old()
    rng = np.random.default_rng(3)
    x, xv = (rng.standard_normal((n, T_LEN)).astype(np.float32) for n in (32, 16))
    y, yv = np.arange(32) % C, np.arange(16) % C
    data = StepData(x=x, y=y, x_val=xv, y_val=yv, teacher=lambda w, s, seed: _probs(len(w), s, seed))
    (st,) = chain_from_table({"steps": [{"name": "distill", "epochs": 2, "batch_size": 8, "seed": 7,
                                         "teacher_samples": 3, "student_samples": 2}]})
    model = _student(1)
    got = get_step("distill").apply(model, data, st.options).model
    ref = copy.deepcopy(model)
    ocfg = old.DistillConfig(epochs=2, batch_size=8, seed=7, student_samples=2)
    torch.manual_seed(7)
    old.distill_model(ref, TransferSet(x, _probs(32, 3, 7)), y, TransferSet(xv, _probs(16, 3, 8)), yv, ocfg,
                      progress=False)
    err = _max_weight_err(ref, got)
    assert err <= 1e-6, err
    assert _max_weight_err(model, _student(1)) == 0.0  # the input model is left unchanged


def test_training_time_augmentation_is_not_a_distillation_option():
    """TrainConfig's augment_* fields would be silently ignored by distill_model's own loop: refused."""
    with pytest.raises(ValueError, match="train.augment_noise: distillation does not augment"):
        DistillConfig(train=dataclasses.replace(DISTILL_TRAIN, augment_noise="pink"))
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['augment_noise'\]"):
        DistillConfig.from_flat({"augment_noise": "pink"})
    assert not any(k.startswith("augment_") for k in DistillConfig().to_dict())
    with pytest.raises(ValueError, match=r"compress\.steps\[0\]\.augment_noise: unknown option of step 'distill'"):
        chain_from_table({"steps": [{"name": "distill", "augment_noise": "pink"}]})
