"""The tiny synthetic-bearing recipe the pipeline, compression and frontier tests train
(seconds on one thread), rendered as TOML: one template, the few knobs the tests vary.

Test modules import it as ``from tiny_recipes import tiny_recipe``."""
from __future__ import annotations

from typing import Optional, Sequence


def tiny_recipe(name: str, description: str = "tiny test recipe", *, window: int = 1024, hop: int = 512,
                seed: int = 3, patch: int = 64, heads: int = 2, depth: int = 2, ffn: int = 32,
                blocks: Sequence[int] = (1,), epochs: int = 1, dropout: Optional[str] = "0.1",
                weight_decay: Optional[str] = "1e-2",
                model_extra: str = "", uq_extra: str = "") -> str:
    """The recipe TOML. ``dropout=None`` / ``weight_decay=None`` leave the line out (the defaults);
    ``model_extra`` / ``uq_extra``: lines appended to ``[model]`` / ``[uq]`` (each ending in a newline)."""
    drop = "" if dropout is None else f"dropout = {dropout}\n"
    wd = "" if weight_decay is None else f"weight_decay = {weight_decay}\n"
    return f"""
name = "{name}"
description = "{description}"
task = "bearing"
boards = ["x86-host"]
[data]
source = "synthetic"
window = {window}
hop = {hop}
fs_hz = 12000
classes = ["normal", "inner_race", "outer_race", "ball"]
ood_kind = "compound"
shift_snr_db = 0.0
[data.synthetic]
duration_s = 1.0
loads = [0, 2]
seed = {seed}
[model]
patch = {patch}
d_model = 16
heads = {heads}
depth = {depth}
ffn = {ffn}
{drop}stochastic_blocks = [{", ".join(str(b) for b in blocks)}]
stochastic_head = true
{model_extra}[train]
epochs = {epochs}
batch_size = 32
lr = 3e-3
{wd}patience = 2
seed = 0
[uq]
samples = 4
{uq_extra}[bundle]
model_name = "{name}"
model_version = "0.0.1"
"""
