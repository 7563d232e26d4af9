"""Tuning databases retuned on one CPU vendor's machines (``tuning/<target>@<vendor>/``): the CPU
vendor read from /proc/cpuinfo, which folder a lowering consults (``TvmOptions.tuning_vendor``),
and the overlay that builds such a copy (records measured here win per workload, the target's
shipped records fill the rest, excluded words are dropped everywhere)."""
from __future__ import annotations

import json

import pytest
from require_extras import require_extra

from edgeuq_runtime.cpuinfo import cpu_vendor


@pytest.mark.parametrize("line, expect", [
    ("vendor_id\t: GenuineIntel", "intel"),
    ("vendor_id\t: AuthenticAMD", "amd"),
    ("vendor_id\t: HygonGenuine", "hygon"),
    ("vendor_id\t: CentaurHauls", "centaurhauls"),
    ("vendor_id\t: ", None),
    ("model name\t: ARMv8", None),
])
def test_cpu_vendor_is_read_from_the_vendor_id_line(tmp_path, line, expect):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\n{line}\nflags\t\t: fpu sse2\n\nprocessor\t: 1\n{line}\n")
    assert cpu_vendor(info) == expect
    info.write_text(f"processor\t: 0\n{line}\n\nprocessor\t: 1\nvendor_id\t: AuthenticAMD\n")
    assert cpu_vendor(info) == (expect if line.startswith("vendor_id") else "amd")   # the first vendor_id line


def test_cpu_vendor_of_an_unreadable_file_is_none(tmp_path):
    assert cpu_vendor(tmp_path / "missing") is None


def _fake_db(folder, records=1):
    folder.mkdir(parents=True)
    (folder / "database_workload.json").write_text('["0", "w"]\n')
    (folder / "database_tuning_record.json").write_text("".join('[0, "r"]\n' for _ in range(records)))


def test_shipped_dir_prefers_the_vendor_copy_and_falls_back_to_the_target(tmp_path, monkeypatch):
    from edgeuq.lower.tvm import tune

    monkeypatch.setattr(tune, "SHIPPED_ROOT", tmp_path)
    _fake_db(tmp_path / "x86-64-avx512")
    _fake_db(tmp_path / "x86-64-avx512@intel")
    _fake_db(tmp_path / "x86-64-avx2@amd", records=0)          # an empty copy is no database
    assert tune.shipped_dir("x86-64-avx512", "intel") == tmp_path / "x86-64-avx512@intel"
    assert tune.shipped_dir("x86-64-avx512", "amd") == tmp_path / "x86-64-avx512"
    assert tune.shipped_dir("x86-64-avx512") == tmp_path / "x86-64-avx512"
    assert tune.shipped_dir("x86-64-avx2", "amd") is None
    assert tune.shipped_dir("cortex-a72", "intel") is None
    for bad in ("Intel", "", "../x", "in tel"):
        with pytest.raises(ValueError, match="vendor"):
            tune.vendor_folder("x86-64-avx512", bad)


def test_tuning_vendor_auto_is_the_hosts_vendor_only_where_the_code_runs_here(monkeypatch):
    require_extra("tvm", "tvm")
    from edgeuq.catalog import get_target
    from edgeuq.lower.tvm import lowerer
    from edgeuq.lower.tvm.lowerer import TvmOptions, database_vendor

    monkeypatch.setattr(lowerer, "cpu_vendor", lambda: "intel")
    x86, arm = get_target("x86-64"), get_target("cortex-a72")
    assert database_vendor(x86, TvmOptions()) == "intel"             # generic x86-64 runs on any x86 host
    assert database_vendor(arm, TvmOptions()) is None                # cross target: not this CPU
    assert database_vendor(x86, TvmOptions(tune_rpc=("127.0.0.1:9190", "board"))) is None   # tuned on boards
    assert database_vendor(x86, TvmOptions(tuning_vendor="")) is None
    assert database_vendor(arm, TvmOptions(tuning_vendor="amd")) == "amd"
    with pytest.raises(ValueError, match="vendor"):
        TvmOptions(tuning_vendor="Genuine Intel")
    with pytest.raises(ValueError, match="tuning_vendor"):
        TvmOptions(tuning_vendor=None)


def test_shipped_record_refuses_a_copy_retuned_for_another_vendor(tmp_path):
    require_extra("tvm", "tvm")
    from edgeuq.lower.tvm.lowerer import _shipped_record

    d = tmp_path / "x86-64-avx512@intel"
    d.mkdir()
    (d / "provenance.json").write_text(json.dumps({"target": "x86-64-avx512", "vendor": "intel", "tuned": "t"}))
    rec = _shipped_record("x86-64-avx512", d, True, "intel")
    assert rec["used"] and rec["folder"] == "x86-64-avx512@intel" and rec["vendor"] == "intel"
    with pytest.raises(ValueError, match="retuned for 'intel'"):
        _shipped_record("x86-64-avx512", d, True, "amd")


def _records(db_dir):
    """{workload TIR script: mean run time} of a database folder (one record per workload there)."""
    from edgeuq.lower.tvm.tune import open_database

    out = {}
    for rec in open_database(db_dir).get_all_tuning_records():
        script = rec.workload.mod.script()
        assert script not in out, "one record per workload"
        out[script] = sum(float(v) for v in rec.run_secs) / len(rec.run_secs)
    return out


def test_overlay_takes_records_measured_here_and_the_base_for_the_rest(tmp_path):
    """Brute force over the real shipped AVX-512 database: a work database holding two of its
    workloads with other run times (and one of them twice: the faster wins) becomes the overlay's
    record for those two; every other workload keeps the base's record; ``exclude`` drops the
    softmax workloads from the result, also one measured here."""
    require_extra("tvm", "tvm")
    from tvm.s_tir import meta_schedule as ms

    from edgeuq.lower.tvm.shipped import overlay_into
    from edgeuq.lower.tvm.tune import _ReadOnlyCopy, open_database, shipped_dir

    base = shipped_dir("x86-64-avx512")
    base_times = _records(base)
    copy = _ReadOnlyCopy(base)
    try:
        recs = copy.db.get_all_tuning_records()
        soft = next(r for r in recs if "softmax" in r.workload.mod.script())
        plain = next(r for r in recs if "softmax" not in r.workload.mod.script() and "matmul" in
                     r.workload.mod.script())
        work = tmp_path / "work"
        db = open_database(work)
        for rec, secs in ((plain, 0.5), (plain, 0.25), (soft, 0.125)):
            db.commit_tuning_record(ms.database.TuningRecord(rec.trace, db.commit_workload(rec.workload.mod),
                                                             [secs], rec.target, rec.args_info))
        plain_key, soft_key = plain.workload.mod.script(), soft.workload.mod.script()
    finally:
        copy.close()
    counts = overlay_into(base, work, tmp_path / "out")
    got = _records(tmp_path / "out")
    assert counts == {"measured_here": 2, "default_here": 0, "hand_written_here": 0, "from_base": len(base_times) - 2,
                      "default_schedules_timed": 0, "hand_written_timed": 0}
    assert set(got) == set(base_times)
    assert got[plain_key] == pytest.approx(0.25) and got[soft_key] == pytest.approx(0.125)
    assert all(got[k] == pytest.approx(v) for k, v in base_times.items() if k not in (plain_key, soft_key))
    assert _records(base) == base_times                         # the base is left as it was
    counts = overlay_into(base, work, tmp_path / "out-nosoftmax", exclude=["softmax"])
    kept = _records(tmp_path / "out-nosoftmax")
    assert counts == {"measured_here": 1, "default_here": 0, "hand_written_here": 0, "from_base": len(kept) - 1,
                      "default_schedules_timed": 0, "hand_written_timed": 0}
    assert set(kept) == {k for k in base_times if "softmax" not in k} and soft_key not in kept
    assert kept[plain_key] == pytest.approx(0.25)


def test_retimed_base_records_default_and_hand_written_schedules_compete_and_the_fastest_measured_here_wins(
        tmp_path):
    """``remeasure_into`` times the base's record, TVM's default schedule (empty trace) and the
    hand-written row schedule (softmax) of each chosen workload on this host into the work
    database, plus the default and hand-written schedules of a workload the base has no record of;
    the overlay then keeps, per workload, the record with the smallest time among those measured
    here (brute force over the work database), and the base's record for the workloads nobody
    re-timed."""
    require_extra("tvm", "tvm")
    import tvm
    from tvm import te, topi

    from edgeuq.catalog import get_target
    from edgeuq.lower.tvm.shipped import is_hand_written, overlay_into, remeasure_into
    from edgeuq.lower.tvm.softmax_schedule import schedule_softmax_rows
    from edgeuq.lower.tvm.targets import tvm_target
    from edgeuq.lower.tvm.tune import open_database, shipped_dir

    base = shipped_dir("x86-64-avx512")
    base_times = _records(base)
    chosen = {k for k in base_times if "softmax" in k}
    assert chosen, "the shipped database has softmax records"
    x = te.placeholder((2, 4, 16, 32), name="x")
    extra = tvm.IRModule({"main": te.create_prim_func([x, topi.nn.fast_softmax(x, -1)])})
    other = te.placeholder((2, 8), name="y")       # not mentioning softmax: left out by only=
    unwanted = tvm.IRModule({"main": te.create_prim_func([other, topi.exp(other)])})
    counts = remeasure_into(base, tmp_path / "work", tvm_target(get_target("x86-64-avx512"), num_cores=1),
                            only=["softmax"], say=lambda msg: None, workloads=[extra, unwanted])
    fits = {k for k in chosen if k in {r.workload.mod.script() for r in _base_records(base)
                                       if schedule_softmax_rows(r.workload.mod, 16) is not None}}
    assert fits, "the row schedule fits the shipped softmax workloads"
    assert counts == {"timed": 2 * len(chosen) + len(fits) + 2, "failed": 0, "hand_written_timed": len(fits) + 1}
    from tvm.s_tir import Schedule

    per = {}
    for rec in open_database(tmp_path / "work").get_all_tuning_records():
        t = sum(float(v) for v in rec.run_secs) / len(rec.run_secs)
        assert 0 < t < 1, t
        kind = ("default" if [i.kind.name for i in rec.trace.insts] == ["GetSBlock"] else
                "hand" if is_hand_written(rec.trace, rec.workload.mod, 16) else "base")
        if kind == "default":           # applied, the default's trace leaves the TIR as it was
            sch = Schedule(rec.workload.mod)
            rec.trace.apply_to_schedule(sch, remove_postproc=False)
            assert sch.mod.script() == rec.workload.mod.script()
        per.setdefault(rec.workload.mod.script(), []).append((t, kind))
    assert set(per) == chosen | {extra.script()}
    for key, timed in per.items():
        want = (["base"] if key in chosen else []) + ["default"] + (["hand"] if key in fits | {extra.script()} else [])
        assert sorted(k for _, k in timed) == sorted(want), key
    counts = overlay_into(base, tmp_path / "work", tmp_path / "out", lanes=16)
    got = _records(tmp_path / "out")
    assert set(got) == set(base_times) | {extra.script()}
    assert counts == {"measured_here": len(per), "from_base": len(base_times) - len(chosen),
                      "default_here": sum(min(v)[1] == "default" for v in per.values()),
                      "hand_written_here": sum(min(v)[1] == "hand" for v in per.values()),
                      "default_schedules_timed": len(per), "hand_written_timed": len(fits) + 1}
    for key in per:
        assert got[key] == pytest.approx(min(per[key])[0])
    assert all(got[k] == pytest.approx(v) for k, v in base_times.items() if k not in chosen)


def _base_records(db_dir):
    from edgeuq.lower.tvm.tune import _ReadOnlyCopy

    copy = _ReadOnlyCopy(db_dir)
    try:
        return list(copy.db.get_all_tuning_records())
    finally:
        copy.close()


def test_a_vendor_copy_is_written_only_on_that_vendors_cpu_and_retiming_needs_a_vendor(monkeypatch, capsys):
    """Records measured on one vendor's CPU must not land in another vendor's copy: ``--vendor``
    other than this host's is refused before anything is tuned or written, as are a malformed
    vendor name, ``--retime-base`` without ``--vendor`` and seeding a copy from the shipped one."""
    require_extra("tvm", "tvm")
    from edgeuq import hostcpu
    from edgeuq.lower.tvm import shipped

    monkeypatch.setattr(hostcpu, "cpu_vendor", lambda: "intel")
    wrote = []
    monkeypatch.setattr(shipped, "overlay_into", lambda *a, **k: wrote.append(a))
    monkeypatch.setattr(shipped, "prune_into", lambda *a, **k: wrote.append(a))
    for argv, why in ((["--vendor", "amd"], "this host's CPU is intel"),
                      (["--vendor", "In tel"], "lower-case name"),
                      (["--retime-base"], "--retime-base compares"),
                      (["--vendor", "intel", "--seed-from-shipped"], "--seed-from-shipped would mix")):
        with pytest.raises(SystemExit) as exc:
            shipped.main(["--target", "x86-64-avx512", "--prune-only", *argv])
        assert exc.value.code == 2 and why in capsys.readouterr().err, argv
    assert wrote == []


def test_cpu_vendor_option_reaches_the_tvm_lowering_from_the_command_line(tmp_path, monkeypatch):
    """``edgeuq compile --cpu-vendor``: auto (or absent) keeps the lowering's own choice, none means
    the targets' own databases, a name selects that vendor's copies; bad names are refused before
    anything compiles; compile_board hands the value to every lowering's options."""
    from edgeuq.lower import compile as compile_mod
    from edgeuq.lower.base import CompileSettings
    from edgeuq.lower.cli import _cpu_vendor_arg
    from edgeuq.lower.tvm.lowerer import TvmLowerer

    assert [_cpu_vendor_arg(v) for v in (None, "auto", "none", "amd", "hygon")] == [None, None, "", "amd", "hygon"]
    for bad in ("Intel", "genuine intel", "", "amd/../x"):
        with pytest.raises(ValueError, match="--cpu-vendor"):
            _cpu_vendor_arg(bad)
    lw = TvmLowerer()
    assert lw.options_for(CompileSettings(), ["head"]).tuning_vendor == "auto"
    assert lw.options_for(CompileSettings(cpu_vendor=""), ["head"]).tuning_vendor == ""
    assert lw.options_for(CompileSettings(cpu_vendor="amd"), ["head"]).tuning_vendor == "amd"

    seen = []

    class Stop(Exception):
        pass

    def options_for(self, settings, roles):
        seen.append(settings.cpu_vendor)
        raise Stop

    monkeypatch.setattr(TvmLowerer, "options_for", options_for)
    from types import SimpleNamespace

    art = SimpleNamespace(noise=())       # nothing of the model is read before the options are built
    for vendor in ("amd", "", None):
        with pytest.raises(Stop):
            compile_mod.compile_board("x86-host", art, tmp_path / "out", placement="default", cpu_vendor=vendor)
    assert seen == ["amd", "", None]


@pytest.mark.parametrize("name, ok", [("intel", True), ("amd", True), ("hygon", True), ("centaur-hauls", True),
                                      ("Intel", False), ("genuine intel", False), ("", False), ("amd/../x", False),
                                      (None, False)])
def test_one_vendor_name_check_serves_the_folder_the_options_and_the_command_line(name, ok):
    """``check_vendor_name`` is the one rule for vendor names; the database folder, ``TvmOptions``
    and ``--cpu-vendor`` accept and refuse exactly what it does (``TvmOptions(tuning_vendor="")``
    means "no vendor" and ``--cpu-vendor`` takes no None: those two cases are theirs alone)."""
    from edgeuq.hostcpu import check_vendor_name
    from edgeuq.lower.cli import _cpu_vendor_arg
    from edgeuq.lower.tvm.lowerer import TvmOptions
    from edgeuq.lower.tvm.tune import vendor_folder

    callers = [check_vendor_name, lambda v: vendor_folder("x86-64", v), lambda v: TvmOptions(tuning_vendor=v),
               _cpu_vendor_arg]
    for i, call in enumerate(callers):
        if (i == 2 and name == "") or (i == 3 and name is None):
            continue
        if ok:
            call(name)
        else:
            with pytest.raises(ValueError):
                call(name)
    if ok:
        assert vendor_folder("x86-64", name) == f"x86-64@{name}" and _cpu_vendor_arg(name) == name
