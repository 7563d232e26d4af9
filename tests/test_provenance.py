"""Results JSON carry a provenance record written by the benchmark itself (edgeuq.provenance), and
`make bench` / `make bench-quick` (scripts/bench_all.py) rerun exactly the command each JSON names."""
import importlib.util
import json
import re
import shlex
import sys
from pathlib import Path

import pytest

from edgeuq import provenance as pv
from edgeuq.lower.tvm import targets as tt

ROOT = Path(__file__).resolve().parents[1]


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod          # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_record_says_mode_commit_cpu_isa_threads_and_load(tmp_path):
    rec = pv.start("quick", threads=1)
    out = pv.write_results(tmp_path / "r.json", {"headers": ["a"], "rows": [[1]]}, "python bench/x.py --quick", rec)
    doc = json.loads(out.read_text())
    prov = doc["provenance"]
    assert doc["command"] == "python bench/x.py --quick" and doc["rows"] == [[1]]
    assert pv.is_script_provenance(prov) is None
    assert prov["mode"] == "quick" and prov["threads"] == 1 and prov["cores"] >= 1
    assert re.fullmatch(r"[0-9a-f]{12}|unknown \(not a git checkout\)", prov["commit"])
    assert prov["isa"] in ("AVX-512", "AVX2", "SSE (no AVX2)") or "x86" not in prov["isa"]
    assert len(prov["load_before"]) == 3 and len(prov["load_after"]) == 3
    assert "quick run" in pv.describe(prov) and prov["cpu"] in pv.describe(prov)
    assert not list(tmp_path.glob(".*.tmp"))                       # written atomically, nothing left over


@pytest.mark.parametrize("prov, why", [
    ("measured 2026-11-29 on a machine", "hand-written"),
    ("transcribed from the README", "hand-written"),
    ({"kind": "measured", "mode": "quick"}, "lacks"),
    ({**{k: 1 for k in ("date_utc", "commit", "cpu", "isa", "cores", "threads", "load_before", "load_after")},
      "kind": "transcribed", "mode": "full"}, "not measured"),
])
def test_hand_written_or_incomplete_provenance_is_recognised(prov, why):
    assert why in pv.is_script_provenance(prov)


def test_mode_must_be_quick_or_full():
    with pytest.raises(ValueError, match="quick"):
        pv.start("fast")


def test_command_line_quotes_arguments():
    assert pv.command_line("bench/x.py", ["--a", "two words"]) == "python bench/x.py --a 'two words'"


def test_host_isa_override_hides_the_flags_above_the_level(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("flags\t\t: fpu sse2 ssse3 sse4_2 popcnt avx avx2 fma bmi2 f16c avx512f avx512bw avx512dq "
                    "avx512vl avx512_vnni\n")
    monkeypatch.delenv(tt.HOST_ISA_ENV, raising=False)
    assert tt.detect_host_target(tt.cpu_flags(info)) == "x86-64-avx512"
    for level, want in (("avx2", "x86-64-avx2"), ("x86-64-v3", "x86-64-avx2"), ("sse", "x86-64"),
                        ("x86-64-v2", "x86-64"), ("avx512", "x86-64-avx512")):
        monkeypatch.setenv(tt.HOST_ISA_ENV, level)
        flags = tt.cpu_flags(info)
        assert tt.detect_host_target(flags) == want, level
        if want != "x86-64-avx512":
            assert not any(f.startswith("avx512") for f in flags), (level, flags)
    monkeypatch.setenv(tt.HOST_ISA_ENV, "avx2")
    assert {"avx2", "fma", "sse4_2"} <= tt.cpu_flags(info)          # lowers the level, keeps what is below
    monkeypatch.setenv(tt.HOST_ISA_ENV, "avx1024")
    with pytest.raises(ValueError, match="unknown ISA level"):
        tt.cpu_flags(info)


def test_isa_env_forces_the_level_below_the_host(monkeypatch):
    ie = _script("isa_env")
    env = ie.other_env("avx512")
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert env[tt.HOST_ISA_ENV] == "avx2" and "X86_V4" in env["NPY_DISABLE_CPU_FEATURES"].split()
    assert "X86_V3" not in env["NPY_DISABLE_CPU_FEATURES"].split()
    env = ie.other_env("avx2")
    assert env["ATEN_CPU_CAPABILITY"] == "default" and env[tt.HOST_ISA_ENV] == "x86-64"
    assert "X86_V3" in env["NPY_DISABLE_CPU_FEATURES"].split()
    assert ie.other_env("sse") == {}


def test_bench_all_runs_each_benchmark_with_flags_it_accepts():
    ba = _script("bench_all")
    written = [w for b in ba.BENCHES for w in b.writes]
    assert len(written) == len(set(written))
    for b in ba.BENCHES:
        assert set(b.needs) <= {x.name for x in ba.BENCHES[:ba.BENCHES.index(b)]}, f"{b.name} runs before its needs"
        for mode in ("quick", "full"):
            for part in ba.command_for(b, mode).split("&&"):
                words = shlex.split(part)
                if words[0] != "python":
                    continue
                source = (ROOT / words[1]).read_text()
                for flag in (w for w in words[2:] if w.startswith("--")):
                    assert f'"{flag}"' in source, f"{b.name} ({mode}): {words[1]} has no option {flag}"


def test_every_results_json_is_rewritten_by_some_benchmark():
    ba = _script("bench_all")
    written = {w for b in ba.BENCHES for w in b.writes}
    present = {p.stem for p in (ROOT / "results").glob("*.json")}
    assert present <= written, f"results without a benchmark in scripts/bench_all.py: {sorted(present - written)}"
