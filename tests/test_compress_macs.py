"""``count_macs`` against torch's own FLOP counter (an independent count of every matmul and
convolution, attention included), for a plain model and one whose stochastic blocks see pooled
tokens (``stochastic_tokens``): the pooled blocks' attention must be counted at their own token
count, not the trunk's."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from edgeuq.compress.slicing import count_macs
from edgeuq.models import ModelConfig, SignalTransformer

TINY = dict(input_length=256, num_classes=3, patch=16, d_model=16, heads=2, depth=3, ffn=32,
            stochastic_blocks=(2,), stochastic_head=True)


def _torch_macs(model) -> int:
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(torch.zeros(1, model.cfg.input_length))
    return fc.get_total_flops() // 2          # one multiply-accumulate = 2 FLOPs


@pytest.mark.parametrize("pooled", [0, 4])
def test_count_macs_equals_torch_flop_counter(pooled):
    model = SignalTransformer(ModelConfig(**{**TINY, "stochastic_tokens": pooled}))
    ours, ref = count_macs(model), _torch_macs(model)
    assert abs(ours - ref) <= 0.01 * ref, (ours, ref)

