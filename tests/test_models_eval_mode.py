"""edgeuq.models.eval_mode: the one eval-mode/no-grad wrapper the training stages share."""
import pytest
import torch
from torch import nn

from edgeuq.models.eval_mode import evaluating, frozen_call


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2))


@pytest.mark.parametrize("start_training", [True, False])
def test_evaluating_turns_dropout_off_and_restores_the_mode(start_training):
    net = _net().train(start_training)
    x = torch.randn(64, 4)
    with evaluating(net) as m:
        assert m is net and not net.training and not any(c.training for c in net.modules())
        y = net(x)
    # the reference: dropout off is the same as running the two linears alone
    ref = net[2](net[0](x))
    assert torch.equal(y, ref.detach())
    assert net.training is start_training
    assert all(c.training is start_training for c in net.modules())


def test_evaluating_builds_no_graph_unless_asked():
    net = _net().train()
    x = torch.randn(3, 4)
    with evaluating(net):
        assert net(x).grad_fn is None
    with evaluating(net, grad=True):
        out = net(x)
        assert out.grad_fn is not None
    assert torch.is_grad_enabled()


def test_evaluating_restores_the_mode_when_the_block_raises():
    net = _net().train()
    with pytest.raises(RuntimeError, match="boom"):
        with evaluating(net):
            raise RuntimeError("boom")
    assert net.training and torch.is_grad_enabled()


def test_frozen_call_runs_each_call_in_eval_mode_without_gradient():
    net = _net().train()
    seen = []

    def probe(x):
        seen.append((net.training, torch.is_grad_enabled()))
        return net(x)

    call = frozen_call(net, probe)
    x = torch.randn(5, 4)
    a, b = call(x), call(x)
    assert seen == [(False, False), (False, False)]
    assert torch.equal(a, b) and a.grad_fn is None  # no dropout: the same output twice
    assert net.training


class _Sampler(nn.Module):
    """A sampling site (``sampling`` flag, as the stochastic layers have) inside a dropout net."""

    def __init__(self) -> None:
        super().__init__()
        self.sampling = True
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(self.drop(x))


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("grad", [True, False])
def test_fisher_target_evaluating_turns_sampling_off_keeps_the_callers_grad_and_restores_both(train, grad):
    from edgeuq.fisher._target import FisherTarget

    net = _Sampler().train(train)
    target = FisherTarget(net)
    with torch.set_grad_enabled(grad):
        with target.evaluating():
            assert not net.training and not net.drop.training and net.sampling is False
            assert torch.is_grad_enabled() is grad
            x = torch.ones(4, 3)
            assert torch.equal(net(x), net.fc(x))          # dropout off: the linear alone
        assert net.training is train and net.drop.training is train and net.sampling is True
    with pytest.raises(RuntimeError):
        with target.evaluating():
            raise RuntimeError("boom")
    assert net.training is train and net.sampling is True
