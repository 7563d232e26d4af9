"""The text-teacher stage now builds its model from a ModelConfig (trunk ``bert``) with
``build_model``, one model per scheme from the scheme registry, and bundles through the common
``export_onnx`` / ``build_bundle``. The reference is the stage as it was before (its
``TextClassifier`` with switchable heads and the hand-written manifest), read from git at
:data:`PRE_CHANGE` and run beside it on the same tiny data: the same fine-tuned weights, Laplace
prior, runtime metrics, and the two bundles give the same probabilities on the device runtime.
Without that commit in the clone's history the test skips and says so."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from require_extras import require_extra

require_extra("safetensors", "text")

from pre_change import module_at  # noqa: E402
from text_teacher_support import questions, sentiment_rows, write_tiny_model, write_tsv  # noqa: E402

from edgeuq.text.pipeline import TeacherOptions, train_text_teacher  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: the last commit before the text teacher was built from a ModelConfig trunk
PRE_CHANGE = "dd81b8946a8e7271b7d1d3d2aab68e8b43ab7b44"
OPTS = TeacherOptions(train_layers=1, epochs=6, lr=3e-3, lr_head=3e-2, batch=8, max_length=12, samples=6,
                      ood_features="avgavg")


def test_teacher_stage_equals_the_pre_change_stage(tmp_path):
    from edgeuq_runtime import UncertaintyRuntime

    old = module_at(PRE_CHANGE, "edgeuq/text/pipeline.py", "edgeuq.text")
    d = tmp_path
    files = {"model": write_tiny_model(d / "model"),
             "train": write_tsv(d / "train.tsv", ["sentence", "label"], sentiment_rows(48, 0)),
             "val": write_tsv(d / "val.tsv", ["sentence", "label"], sentiment_rows(16, 1)),
             "test": write_tsv(d / "test.tsv", ["sentence", "label"], sentiment_rows(16, 2)),
             "ood": write_tsv(d / "q.tsv", ["text"], [(q,) for q in questions(16, 3)])}
    args = dict(val=files["val"], test=files["test"], ood=[files["ood"]], model=files["model"], log=lambda m: None)
    new = train_text_teacher(files["train"], d / "new", OPTS, **args)
    ref = old.train_text_teacher(files["train"], d / "old", old.TeacherOptions(**OPTS.to_dict()), **args)

    assert new.history["train_loss"] == pytest.approx(ref.history["train_loss"], rel=1e-5, abs=1e-6)
    assert new.laplace["prior_precision"] == ref.laplace["prior_precision"]
    # fine-tuned weights: the new state dict names the head head.fc1 / head.fc2
    ws = torch.load(new.file_path("teacher.pt"), weights_only=True)
    wo = torch.load(ref.file_path("teacher.pt"), weights_only=True)
    renamed = {("head." + k if k.startswith(("fc1.", "fc2.")) else k): v for k, v in wo.items()}
    assert set(ws) == set(renamed)
    err = max(float((ws[k].double() - renamed[k].double()).abs().max()) for k in ws)
    assert err <= 1e-5, err
    texts = ["the film is very good !", "what city is the capital ?", "a dull boring plot"]
    for scheme in OPTS.schemes:
        for key in ("accuracy", "ece", "nll"):
            assert new.metrics[scheme][key] == pytest.approx(ref.metrics[scheme][key], abs=1e-5), (scheme, key)
        a = UncertaintyRuntime(new.bundle_path(scheme), threads=1).predict_text(texts, samples=6, seed=4)
        b = UncertaintyRuntime(ref.bundle_path(scheme), threads=1).predict_text(texts, samples=6, seed=4)
        assert float(np.max(np.abs(a.probs - b.probs))) <= 1e-5, scheme
        assert float(np.max(np.abs(a.epistemic - b.epistemic))) <= 1e-5, scheme
        rn = UncertaintyRuntime(new.bundle_path(scheme), threads=1)
        ro = UncertaintyRuntime(ref.bundle_path(scheme), threads=1)
        fa, fb = rn.trunk_features(rn.tokenize(texts)), ro.trunk_features(ro.tokenize(texts))
        assert fa.shape == fb.shape == (3, 64) and float(np.max(np.abs(fa - fb))) <= 1e-5  # density columns too
        mn, mo = rn.manifest, ro.manifest
        assert mn.input == mo.input and [s.to_json() for s in mn.noise] == [s.to_json() for s in mo.noise]
        assert mn.metadata["density_columns"] == mo.metadata["density_columns"] == [32, 64]
    # the laplace head's noise really moves the predictive (else the comparison above could not fail on it)
    r = UncertaintyRuntime(new.bundle_path("laplace"), threads=1).predict_text(texts, samples=6, seed=4)
    assert float(np.max(r.epistemic)) > 0
