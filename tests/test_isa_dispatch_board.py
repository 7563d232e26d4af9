"""Run-time ISA dispatch reaches users through the data: a board placement declares ``isa_variants``
(the x86-host board ships generic x86-64 + AVX2 + AVX-512 libraries), ``edgeuq compile --board``
builds them, ``--isa-variants`` replaces them, and every misuse is refused with the field named --
before anything is compiled."""
from __future__ import annotations

import pytest

from edgeuq import catalog
from edgeuq.catalog import DescriptorError, get_board, read_descriptor
from edgeuq.lower.cli import _isa_variants_arg
from edgeuq.lower.compile import compile_board

BOARD = """name = "{name}"
description = "user x86 box"
targets = {targets}
memory_mb = 512
executor = "tvm"
[graphs.trunk]
target = "{trunk}"
{trunk_extra}
[graphs.head]
target = "x86-64"
{head_extra}
[budgets]
latency_ms = 100.0
weight_bytes = 1000000000
mc_samples = 4
"""
ALL = '["x86-64", "x86-64-avx2", "x86-64-avx512"]'


def _board(tmp_path, name="isa-box", targets=ALL, trunk="x86-64", trunk_extra="", head_extra=""):
    path = tmp_path / "desc" / "boards" / f"{name}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(BOARD.format(name=name, targets=targets, trunk=trunk, trunk_extra=trunk_extra,
                                 head_extra=head_extra))
    return path


def test_x86_host_ships_generic_avx2_and_avx512_libraries():
    b = get_board("x86-host")
    for role, p in b.graphs.items():
        assert (p.lowering, p.target) == ("tvm", "x86-64"), role
        assert set(p.isa_variants) == {"x86-64-avx2", "x86-64-avx512"}, role
        # the other candidates (ONNX Runtime) take no per-ISA libraries
        assert all(not c.isa_variants for c in p.candidates)
    assert "x86-64:tvm(+x86-64-avx2,x86-64-avx512)" in catalog.format_boards_table()


@pytest.mark.parametrize("kw, field, match", [
    (dict(trunk_extra='isa_variants = ["x86-64-v9"]'), "graphs.trunk.isa_variants", "not one of the board's targets"),
    (dict(targets='["x86-64", "x86-64-avx2"]', trunk_extra='isa_variants = ["x86-64-avx512"]'),
     "graphs.trunk.isa_variants", "not one of the board's targets"),
    (dict(trunk_extra='isa_variants = ["x86-64"]'), "graphs.trunk.isa_variants", "placement's own target"),
    (dict(trunk_extra='isa_variants = "x86-64-avx2"'), "graphs.trunk.isa_variants", "a list of non-empty strings"),
    (dict(trunk_extra='isa_variants = ["x86-64-avx2", "x86-64-avx2"]'), "graphs.trunk.isa_variants", "duplicate"),
    (dict(trunk_extra='candidates = [{ executor = "tvm", target = "x86-64-avx2", isa_variants = ["nope"] }]'),
     "graphs.trunk.candidates[0].isa_variants", "not one of the board's targets"),
    # trunk and head share one (tvm, x86-64) lowering: two different lists cannot both hold
    (dict(trunk_extra='isa_variants = ["x86-64-avx2"]', head_extra='isa_variants = ["x86-64-avx512"]'),
     "graphs.head.isa_variants", "lowered once for the whole board"),
])
def test_bad_board_isa_variants_name_the_field(tmp_path, kw, field, match):
    path = _board(tmp_path, **kw)
    with pytest.raises(DescriptorError, match=match) as e:
        read_descriptor("boards", path)
    assert e.value.field == field and str(path) in str(e.value)


@pytest.mark.parametrize("kw, field, match", [
    # AVX2 is no higher ISA level than an AVX-512 placement: checked by the TVM lowering
    (dict(trunk="x86-64-avx512", trunk_extra='isa_variants = ["x86-64-avx2"]'), "graphs.trunk.isa_variants",
     "needs no CPU flags beyond"),
    # ONNX Runtime ships no per-ISA libraries (it dispatches by itself): the capability is missing
    (dict(head_extra='executor = "onnxruntime"\nisa_variants = ["x86-64-avx2"]'), "graphs.head.isa_variants",
     "does not ship per-ISA libraries"),
])
def test_compile_refuses_variants_the_lowering_cannot_ship_before_compiling(tmp_path, monkeypatch, kw, field,
                                                                             match):
    monkeypatch.setenv(catalog.ENV_VAR, str(tmp_path / "desc"))
    _board(tmp_path, **kw)
    with pytest.raises(DescriptorError, match=match) as e:
        compile_board("isa-box", None, tmp_path / "out")      # no model: refused before any lowering
    assert e.value.field == field and "isa-box.toml" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_isa_variants_override_is_checked_and_named():
    with pytest.raises(ValueError, match=r"--isa-variants .*not a CPU target of the same machine"):
        compile_board("x86-host", None, "unused", isa_variants=("cortex-a72",))
    with pytest.raises(ValueError, match=r"--isa-variants .*no CPU flags beyond"):
        compile_board("x86-host", None, "unused", isa_variants=("x86-64",))
    with pytest.raises(ValueError, match=r"--isa-variants .*'x86-64-v5': not found"):
        compile_board("x86-host", None, "unused", isa_variants=("x86-64-v5",))


@pytest.mark.parametrize("text, want", [
    (None, None), ("none", ()), ("", ()), ("x86-64-avx2", ("x86-64-avx2",)),
    ("x86-64-avx2, x86-64-avx512", ("x86-64-avx2", "x86-64-avx512")),
])
def test_isa_variants_argument(text, want):
    assert _isa_variants_arg(text) == want


@pytest.mark.parametrize("text", ["x86-64-avx2,x86-64-avx2", "none,x86-64-avx2"])
def test_bad_isa_variants_argument(text):
    with pytest.raises(ValueError, match="--isa-variants"):
        _isa_variants_arg(text)


def test_remote_placement_times_the_library_the_board_would_run(tmp_path, monkeypatch):
    """Over RPC the board's executor would pick a per-ISA library by the board's flags: the remote
    measurer uploads that library and calls its bucket functions (an AVX2 board: the AVX2 variant's
    ``main_b4``), the generic library on a board that names no flags -- never the host's choice."""
    import numpy as np

    from edgeuq.lower.base import CompiledGraph
    from edgeuq.lower.placement import BoardCpu, Option, RemoteMeasurer
    from edgeuq.lower.tvm.targets import X86_ISA_FLAGS
    from edgeuq.profile import tvm_rpc

    calls = []

    def fake_time(session, library, arrays, *, entry, calls=1, **kw):     # what the board would be asked to run
        seen.append((library.name, entry, arrays[0].shape[0], calls))
        return "timed"

    seen = calls
    monkeypatch.setattr(tvm_rpc, "time_remote_library", fake_time)
    opts = {"inputs": ["x"], "outputs": ["y"], "batch": None, "variants": [
        {"file": "head.x86-64-avx512.so", "target": "x86-64-avx512", "requires": sorted(X86_ISA_FLAGS["x86-64-v4"]),
         "batch": 32, "buckets": [1, 4, 16, 32]},
        {"file": "head.x86-64-avx2.so", "target": "x86-64-avx2", "requires": sorted(X86_ISA_FLAGS["x86-64-v3"]),
         "batch": 16, "buckets": [1, 4, 16]}]}
    option = Option("tvm", "x86-64", "tvm", True, graph=CompiledGraph(tmp_path / "head.so", "tvm", opts),
                    check="native", native=True)
    feeds = {"x": np.zeros((3, 2), np.float32)}
    for flags, want in ((X86_ISA_FLAGS["x86-64-v3"] | {"sse2"}, ("head.x86-64-avx2.so", "main_b4", 4, 1)),
                        (X86_ISA_FLAGS["x86-64-v4"], ("head.x86-64-avx512.so", "main_b4", 4, 1)),
                        (frozenset({"sse2"}), ("head.so", "main", 3, 1)),
                        (None, ("head.so", "main", 3, 1))):
        m = RemoteMeasurer(session=None, where="test")
        m._board = BoardCpu("x86_64", flags, "test")
        calls.clear()
        assert m.measure("head", [option], feeds) == {option.key: "timed"}
        assert calls == [want], (flags, calls)
