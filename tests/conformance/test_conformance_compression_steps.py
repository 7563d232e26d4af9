"""Every registered compression step (edgeuq.compress.steps: package scan + entry points) takes a
tiny model of a scheme and returns a new model that still samples like one (S, B, C finite
probabilities through the one MC sampler, the same noise inputs), leaving its input unchanged.

A new step fails ``test_every_step_has_conformance_options`` until it is given options here."""
import numpy as np
import pytest
import torch

from edgeuq.compress.steps import COMPRESSION_STEPS, StepData, get_step, step_options
from edgeuq.compress.transfer import label_with_model
from edgeuq.models import build_model, mc_sample_probs

from chain import TINY, tiny_config, windows

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SCHEME = "mc_dropout"

#: step -> options small enough for a tiny model and a few seconds
OPTIONS = {
    "distill": {"epochs": 1, "batch_size": 16, "student_samples": 2, "teacher_samples": 2, "patience": 1},
    "prune": {"target_flops": 0.5},
    "lowrank": {"rank_fraction": 0.25},
}


def test_every_step_has_conformance_options():
    missing = sorted(set(COMPRESSION_STEPS) - set(OPTIONS))
    assert not missing, f"compression steps without conformance options in {__file__}: {missing}"


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_step_output_samples_like_its_input_and_leaves_it_alone(name):
    torch.manual_seed(0)
    model = build_model(tiny_config(SCHEME)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, xv = windows(32, 0), windows(16, 1)
    y = np.arange(32) % TINY["num_classes"]
    data = StepData(x=x, y=y, x_val=xv, y_val=np.arange(16) % TINY["num_classes"],
                    teacher=lambda a, s, seed: label_with_model(model, a, s, seed))
    step = get_step(name)
    out = step.apply(model, data, step_options(step, OPTIONS[name])).model
    assert out is not model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), f"{name} changed its input"
    assert [s.name for s in out.noise_specs()] == [s.name for s in model.noise_specs()]
    p = mc_sample_probs(out, torch.from_numpy(xv), 3, rng=np.random.default_rng(0)).numpy()
    assert p.shape == (3, 16, TINY["num_classes"]) and np.isfinite(p).all()
    err = float(np.max(np.abs(p.sum(-1) - 1.0)))
    assert err <= 1e-5, (name, err)
