"""The compression stage as a data-driven chain (edgeuq/compress/chain.py, ``edgeuq compress``) and
the factorised checkpoint it needs (``ModelConfig.ranks``).

References: a chain's output is compared with the same steps applied by hand in memory (order),
a cache hit with a step that raises if it is called at all, a factorised checkpoint with the
model the low-rank step returned (state and outputs)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgeuq.catalog import get_recipe
from edgeuq.cli import main
from edgeuq.compress.chain import ChainStep, chain_from_table, chain_table, data_key, run_chain
from edgeuq.compress.steps import COMPRESSION_STEPS, StepData, get_step
from edgeuq.models import ModelConfig, build_model
from edgeuq.models.layers import LowRankLinear
from edgeuq.training import load_checkpoint, save_checkpoint
from tiny_recipes import tiny_recipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")
T_LEN = 256
CLASSES = ("a", "b", "c")


def _cfg(**kw):
    return ModelConfig(input_length=T_LEN, num_classes=3, patch=32, embed="conv", stem_channels=8, d_model=16,
                       heads=4, depth=2, ffn=24, stochastic_blocks=(1,), stochastic_head=True, **kw)


def _data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return StepData(x=rng.standard_normal((n, T_LEN)).astype(np.float32), y=np.arange(n) % 3)


@pytest.fixture()
def base_ck(tmp_path):
    torch.manual_seed(0)
    return save_checkpoint(build_model(_cfg()).eval(), tmp_path / "base", CLASSES, 1000.0)


# ------------------------------------------------------------------ ModelConfig.ranks


def test_ranks_default_to_dense_and_leave_the_config_dict_as_before():
    d = _cfg().to_dict()
    assert "ranks" not in d and _cfg().ranks == ()
    assert not any(isinstance(m, LowRankLinear) for m in build_model(_cfg()).modules())


def test_ranks_build_a_factorised_model_and_round_trip_through_the_dict():
    cfg = _cfg(ranks={"blocks.1.fc1": 3, "blocks.0.attn.qkv": 2})
    assert cfg.ranks == (("blocks.0.attn.qkv", 2), ("blocks.1.fc1", 3))      # sorted pairs
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    m = build_model(cfg)
    fc1, qkv = m.get_submodule("blocks.1.fc1"), m.get_submodule("blocks.0.attn.qkv")
    assert isinstance(fc1, LowRankLinear) and tuple(fc1.down.weight.shape) == (3, 16)
    assert tuple(fc1.up.weight.shape) == (24, 3) and fc1.up.bias is not None
    assert isinstance(qkv, LowRankLinear) and qkv.rank == 2
    assert isinstance(m.get_submodule("blocks.0.fc1"), torch.nn.Linear)       # not named: dense


@pytest.mark.parametrize("ranks, match", [
    ({"blocks.0.fc1": 0}, r"ranks\['blocks.0.fc1'\] must be an integer >= 1"),
    ({"blocks.0.fc1": True}, r"must be an integer >= 1"),
    ({"blocks.0.fc1": 2.5}, r"must be an integer >= 1"),
    ({"blocks.0 fc1": 2}, r"not a module path"),
    ({"blocks.5.fc1": 2}, r"names block 5 of a depth-2 model"),
    ("blocks.0.fc1", r"ranks must be a table"),
    ([("blocks.0.fc1",)], r"\(layer path, rank\) pairs"),
])
def test_bad_ranks_are_refused_naming_the_field(ranks, match):
    with pytest.raises(ValueError, match=match):
        _cfg(ranks=ranks)


@pytest.mark.parametrize("ranks, match", [
    ({"blocks.0.norm1": 2}, r"ranks\['blocks.0.norm1'\]: not a linear layer .*its linear layers: \[.*blocks.0.fc1"),
    ({"blocks.0.nope": 2}, r"not a linear layer"),
    ({"blocks.0.fc1": 17}, r"= 17 exceeds min\(in, out\) = 16"),
])
def test_ranks_that_do_not_fit_the_model_fail_when_it_is_built(ranks, match):
    with pytest.raises(ValueError, match=match):
        build_model(_cfg(ranks=ranks))


def test_lowrank_output_is_a_checkpoint_that_loads_as_itself(tmp_path):
    torch.manual_seed(1)
    model = build_model(_cfg()).eval()
    step = get_step("lowrank")
    res = step.apply(model, _data(), step.Options(rank_fraction=0.25))
    out = res.model.eval()
    assert out.cfg.ranks and dict(out.cfg.ranks) == res.info["factorised"] and model.cfg.ranks == ()
    loaded = load_checkpoint(save_checkpoint(out, tmp_path / "lr", CLASSES, 1000.0).directory).load_model()
    x = torch.from_numpy(_data(4, 5).x)
    with torch.no_grad():
        err = float((loaded(x) - out(x)).abs().max())
    assert err <= 1e-6, err
    # a second low-rank step leaves the factorised halves alone (no down.down) and keeps the old ranks
    again = step.apply(out, _data(), step.Options(rank_fraction=0.25)).model
    assert again.cfg.ranks == out.cfg.ranks
    assert not any(".down." in n or ".up." in n for n, _ in again.named_modules() if n.endswith(("down", "up")))


# ------------------------------------------------------------------ the chain's table


def test_a_recipe_chain_is_read_into_steps_with_their_options():
    chain = chain_from_table({"steps": [{"name": "prune", "target_flops": 0.5}, {"name": "lowrank"}]})
    assert [s.name for s in chain] == ["prune", "lowrank"]
    assert chain[0].options == get_step("prune").Options(target_flops=0.5)
    assert chain[1].options == get_step("lowrank").Options()
    assert chain_from_table(None) == () == chain_from_table({})


@pytest.mark.parametrize("table, match", [
    ({"steps": [{"name": "lowrank"}, {"name": "squash"}]},
     r"compress.steps\[1\].name: unknown compression step 'squash'; registered steps: \[.*'lowrank'.*'prune'"),
    ({"steps": [{"name": "lowrank", "rank_fraktion": 0.5}]},
     r"compress.steps\[0\].rank_fraktion: unknown option of step 'lowrank'; its options: \[.*'rank_fraction'"),
    ({"steps": [{"name": "lowrank", "rank_fraction": 1.5}]},
     r"compress.steps\[0\] \(lowrank\): .*rank_fraction must be in \(0, 1\]"),
    ({"steps": [{"name": "prune"}]}, r"compress.steps\[0\] \(prune\): give exactly one of target_flops"),
    ({"steps": [{"rank_fraction": 0.5}]}, r"compress.steps\[0\].name: missing"),
    ({"steps": [{"name": "lowrank"}], "order": "fast"}, r"compress.order: unknown key; allowed: \['steps'\]"),
    ({"steps": {"name": "lowrank"}}, r"compress.steps: expected an array of tables"),
    ({"steps": ["lowrank"]}, r"compress.steps\[0\]: expected a table"),
])
def test_a_bad_chain_is_an_error_naming_the_field(table, match):
    with pytest.raises(ValueError, match=match):
        chain_from_table(table)


def test_command_line_steps_reorder_the_recipe_chain_and_options_override():
    recipe = {"steps": [{"name": "prune", "target_flops": 0.5}, {"name": "lowrank", "rank_fraction": 0.5}]}
    t = chain_table(recipe, ["lowrank", "distill"], [("lowrank", "rank_fraction", 0.25)])
    assert t["steps"] == [{"name": "lowrank", "rank_fraction": 0.25}, {"name": "distill"}]
    assert recipe["steps"][1]["rank_fraction"] == 0.5                     # the recipe's table is not changed
    with pytest.raises(ValueError, match=r"option prune.seed: step 'prune' is not in the chain \['lowrank'\]"):
        chain_table(recipe, ["lowrank"], [("prune", "seed", 1)])


def test_a_recipe_file_declares_its_chain_and_a_typo_in_it_is_refused(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text(tiny_recipe("chain-good") + '[[compress.steps]]\nname = "lowrank"\nrank_fraction = 0.25\n')
    rec = get_recipe(good)
    assert [s.name for s in chain_from_table(rec.compress)] == ["lowrank"]
    assert get_recipe("bearing-demo").compress["steps"]                    # the demo ships a chain
    assert chain_from_table(get_recipe("bearing-demo").compress)          # ... that reads
    bad = tmp_path / "bad.toml"
    bad.write_text(tiny_recipe("chain-bad") + '[[compress.steps]]\nname = "lowrank"\nrank_fractoin = 0.25\n')
    with pytest.raises(ValueError, match=r"compress.steps\[0\].rank_fractoin: unknown option"):
        chain_from_table(get_recipe(bad).compress)


# ------------------------------------------------------------------ running it


def test_the_chain_runs_its_steps_in_order_as_applied_by_hand(base_ck, tmp_path):
    chain = chain_from_table({"steps": [{"name": "prune", "target_flops": 0.5, "tune": False},
                                        {"name": "lowrank", "rank_fraction": 0.5}]})
    data = _data()
    res = run_chain(base_ck, chain, data, tmp_path / "out", data_key(data), progress=False, log=lambda s: None)
    assert [r["step"] for r in res.records] == ["prune", "lowrank"] and not any(r["cached"] for r in res.records)
    assert res.records[1]["checkpoint"] == str(tmp_path / "out" / "01-lowrank")
    # by hand: prune, then factorise the pruned model
    by_hand = base_ck.load_model()
    for st in chain:
        by_hand = get_step(st.name).apply(by_hand, data, st.options).model
    got = res.checkpoint.load_model()
    assert res.checkpoint.config == by_hand.cfg and res.checkpoint.config.ranks and res.checkpoint.config.blocks
    x = torch.from_numpy(_data(4, 7).x)
    got.set_sampling(False)
    by_hand.eval().set_sampling(False)
    with torch.no_grad():
        err = float((got(x) - by_hand(x)).abs().max())
    assert err <= 1e-5, err
    assert res.checkpoint.metrics["compress_step"]["parent_digest"] == load_checkpoint(
        tmp_path / "out" / "00-prune").digest
    assert set(res.timer.seconds) == {"0:prune", "1:lowrank"}


def test_the_other_order_is_refused_by_the_prune_step(base_ck, tmp_path):
    chain = chain_from_table({"steps": [{"name": "lowrank"}, {"name": "prune", "target_flops": 0.5}]})
    with pytest.raises(ValueError, match="prune before a factorising step"):
        run_chain(base_ck, chain, _data(), tmp_path / "out", "k", progress=False, log=lambda s: None)


def test_a_rerun_reuses_each_cached_step_and_recomputes_from_the_first_change(base_ck, tmp_path, monkeypatch):
    data = _data()
    key = data_key(data)
    table = {"steps": [{"name": "lowrank", "rank_fraction": 0.5}, {"name": "lowrank", "rank_fraction": 0.5,
                                                                   "prefixes": ["head."]}]}
    first = run_chain(base_ck, chain_from_table(table), data, tmp_path / "out", key, progress=False,
                      log=lambda s: None)
    step = COMPRESSION_STEPS["lowrank"]
    calls = []
    real = type(step).apply

    def counting(self, model, d, options):
        calls.append(options)
        return real(self, model, d, options)

    monkeypatch.setattr(type(step), "apply", counting)
    again = run_chain(base_ck, chain_from_table(table), data, tmp_path / "out", key, progress=False,
                      log=lambda s: None)
    assert calls == [] and [r["cached"] for r in again.records] == [True, True]
    assert [r["digest"] for r in again.records] == [r["digest"] for r in first.records]
    # another option of step 1: step 0 is reused, step 1 recomputed
    table["steps"][1]["rank_fraction"] = 0.25
    third = run_chain(base_ck, chain_from_table(table), data, tmp_path / "out", key, progress=False,
                      log=lambda s: None)
    assert [r["cached"] for r in third.records] == [True, False] and len(calls) == 1
    # other data: everything recomputed (the data key is in every step's inputs)
    other = _data(seed=1)
    run_chain(base_ck, chain_from_table(table), other, tmp_path / "out", data_key(other), progress=False,
              log=lambda s: None)
    assert len(calls) == 3
    assert data_key(other) != key and data_key(data, "teacher-a") != data_key(data, "teacher-b")


def test_an_empty_chain_returns_its_input(base_ck, tmp_path):
    res = run_chain(base_ck, (), _data(), tmp_path / "out", "k", progress=False, log=lambda s: None)
    assert res.checkpoint is base_ck and res.records == ()
    assert isinstance(ChainStep("lowrank", get_step("lowrank").Options()).options_dict(), dict)


# ------------------------------------------------------------------ the CLI


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("compress-chain-cli")
    rec = root / "tiny-chain.toml"
    rec.write_text(tiny_recipe("tiny-chain", heads=4, depth=2, ffn=32, blocks=(1,))
                   + '[[compress.steps]]\nname = "prune"\ntarget_flops = 0.5\n'
                   + '[[compress.steps]]\nname = "lowrank"\nrank_fraction = 0.5\n')
    ck = root / "teacher"
    assert main(["train", "--recipe", str(rec), "--out", str(ck), "--no-progress"]) == 0
    return rec, ck


def test_cli_compress_runs_the_recipe_chain_then_reuses_it(trained, tmp_path, capsys):
    rec, ck = trained
    out = tmp_path / "c"
    args = ["compress", "--checkpoint", str(ck), "--recipe", str(rec), "--out", str(out), "--calibration", "32",
            "--no-progress"]
    assert main(args) == 0
    doc = json.loads((out / "chain.json").read_text())
    assert [s["step"] for s in doc["steps"]] == ["prune", "lowrank"] and not any(s["cached"] for s in doc["steps"])
    final = load_checkpoint(out / "01-lowrank")
    assert doc["output"] == str(final.directory) and final.config.ranks and final.config.blocks
    assert main(args) == 0
    doc2 = json.loads((out / "chain.json").read_text())
    assert [s["cached"] for s in doc2["steps"]] == [True, True] and doc2["output_digest"] == doc["output_digest"]


def test_cli_compress_steps_and_options_from_the_command_line(trained, tmp_path):
    rec, ck = trained
    out = tmp_path / "d"
    assert main(["compress", "--checkpoint", str(ck), "--recipe", str(rec), "--out", str(out), "--steps",
                 "lowrank,distill", "--option", "lowrank.rank_fraction=0.25", "--option", "distill.epochs=1",
                 "--option", "distill.teacher_samples=2", "--option", "distill.student_samples=2",
                 "--option", "distill.loss=kl", "--calibration", "32", "--no-progress"]) == 0
    doc = json.loads((out / "chain.json").read_text())
    assert [s["step"] for s in doc["steps"]] == ["lowrank", "distill"]
    assert doc["steps"][0]["options"]["rank_fraction"] == 0.25 and doc["steps"][1]["options"]["loss"] == "kl"
    assert load_checkpoint(out / "01-distill").config.ranks       # distillation kept the factorised model


@pytest.mark.parametrize("extra, message", [
    (["--steps", "lowrank,squash"], "unknown compression step 'squash'; registered steps"),
    (["--steps", "lowrank", "--option", "lowrank.rank_fraction=2"], "rank_fraction must be in (0, 1]"),
    (["--steps", "lowrank", "--option", "prune.seed=1"], "step 'prune' is not in the chain"),
])
def test_cli_compress_refuses_a_bad_chain_with_the_field(trained, tmp_path, capsys, extra, message):
    rec, ck = trained
    assert main(["compress", "--checkpoint", str(ck), "--recipe", str(rec), "--out", str(tmp_path / "e"),
                 "--no-progress", *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "e").exists()
