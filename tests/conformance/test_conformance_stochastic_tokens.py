"""``ModelConfig.stochastic_tokens`` with every scheme that has stochastic blocks: the blocks that run
S times see the pooled tokens (their noise inputs say so), and the exported graphs still agree with
PyTorch given the same noise."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from edgeuq.export import export_onnx, max_abs_difference
from edgeuq.models import build_model
from edgeuq.schemes.registry import registered_schemes
from edgeuq.training import save_checkpoint

from chain import CLASSES, FS, tiny_config

BLOCK_SCHEMES = [s.name for s in registered_schemes() if tiny_config(s.name).stochastic_blocks]


def test_the_block_schemes_are_found():
    assert {"mc_dropout", "variational", "hsa"} <= set(BLOCK_SCHEMES)


@pytest.mark.parametrize("scheme", BLOCK_SCHEMES)
def test_pooled_stochastic_blocks_export_and_agree_with_torch(scheme, tmp_path):
    cfg = tiny_config(scheme)
    pooled = cfg.tokens // 2
    cfg = dataclasses.replace(cfg, stochastic_tokens=pooled)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    assert model.feature_shape() == (pooled, cfg.d_model)
    block_specs = [s for s in model.noise_specs() if s.name.startswith(f"block{cfg.split_index}_")]
    assert block_specs and all(pooled in s.shape and cfg.tokens not in s.shape for s in block_specs), block_specs
    art = export_onnx(save_checkpoint(model, tmp_path / "ck", CLASSES, FS), tmp_path / "onnx")
    err = max_abs_difference(model, art, batch=2, samples=4, seed=1)
    assert err <= 1e-4, err
