"""MetaSchedule tuning measured on the boards of a TVM RPC tracker key (`edgeuq compile --tune N
--tracker HOST:PORT --key KEY`): candidates are built here and timed by the tracker's servers (two
`tvm.exec.rpc_server`s on 127.0.0.1, started and stopped here); the records land in the target's
database with the run's provenance, and the tuned library computes what numpy computes."""
from __future__ import annotations

import json

import numpy as np
import pytest
from require_extras import require_extra

require_extra("tvm", "tvm")

from rpc_farm import Farm  # noqa: E402

pytestmark = pytest.mark.slow


def test_tuning_through_the_tracker_records_board_measurements(tmp_path):
    import tvm
    from tvm import relax
    from tvm.script import ir as I
    from tvm.script import relax as R

    from edgeuq.lower.tvm.tune import database_size, open_database, tune_and_compile

    @I.ir_module
    class Mod:
        @R.function
        def main(x: R.Tensor((16, 32), "float32"), w: R.Tensor((32, 32), "float32")):
            with R.dataflow():
                y = R.nn.relu(R.matmul(x, w))
                R.output(y)
            return y

    target = tvm.target.Target({"kind": "llvm", "num-cores": 1})
    db = tmp_path / "db"
    with Farm() as farm:
        farm.add_servers("edgeuq-tune", 2)
        ex, report = tune_and_compile(Mod, target, db, 8, progress=lambda m: None,
                                      rpc=(farm.tracker_addr, "edgeuq-tune"))
        farm.wait_free("edgeuq-tune", 2)  # the runner's sessions are closed again
    assert report.records_after > report.records_before == 0 and database_size(db) == report.records_after
    recs = open_database(db).get_all_tuning_records()
    secs = [float(s) for r in recs for s in (r.run_secs or [])]
    assert secs and all(0 < s < 1 for s in secs)  # measured (by the servers), not build errors (1e10 s)
    runs = json.loads((db / "farm_tuning.json").read_text())
    assert len(runs) == 1 and runs[0]["key"] == "edgeuq-tune" and runs[0]["tracker"] == farm.tracker_addr
    assert runs[0]["trials_requested"] == 8 and runs[0]["records_after"] == report.records_after
    assert len(runs[0]["servers"]) == 2 and runs[0]["emulated"] is False   # the boards that measured
    # the tuned library is right: numpy is the reference
    vm = relax.VirtualMachine(ex, tvm.cpu())
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((16, 32)).astype("float32"), rng.standard_normal((32, 32)).astype("float32")
    got = vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(w)).numpy()
    err = float(np.max(np.abs(got - np.maximum(x @ w, 0))))
    assert err <= 1e-4, err


def test_tuning_refuses_a_key_with_an_emulated_server(tmp_path):
    """A qemu-aarch64 server in the key: MetaSchedule would store its times as board times, so the
    tuning refuses the key before it starts, naming the emulated server; no database is written.
    The control: the same tuning on a key of real servers only goes ahead (the test above)."""
    from test_profile_emulated import _need_sysroot

    from edgeuq.lower.tvm.tune import database_size, tune_and_compile
    from edgeuq.profile.emulated import EmulatedServer

    _need_sysroot()
    import tvm
    from tvm.script import ir as I
    from tvm.script import relax as R

    @I.ir_module
    class Mod:
        @R.function
        def main(x: R.Tensor((4, 8), "float32"), w: R.Tensor((8, 8), "float32")):
            with R.dataflow():
                y = R.matmul(x, w)
                R.output(y)
            return y

    db = tmp_path / "db"
    with Farm() as farm:
        farm.add_servers("edgeuq-tune-mixed", 1)
        with EmulatedServer("cortex-a72", tracker=("127.0.0.1", farm.tracker_port), key="edgeuq-tune-mixed"):
            farm.wait_free("edgeuq-tune-mixed", 2)
            with pytest.raises(RuntimeError, match=r"1 of 2 server\(s\) are emulated.*qemu-aarch64"):
                tune_and_compile(Mod, tvm.target.Target({"kind": "llvm", "num-cores": 1}), db, 8,
                                 progress=lambda m: None, rpc=(farm.tracker_addr, "edgeuq-tune-mixed"))
    assert database_size(db) == 0 and not (db / "farm_tuning.json").exists()


def test_an_aarch64_target_is_tuned_through_the_tracker_with_cross_exported_candidates(tmp_path):
    """Tuning a board of another ISA: candidates are built here and exported with the target's cross
    compiler, so the board's server loads them. Only a qemu-aarch64 server exists here, so the route is
    taken with ``allow_emulated`` and the run is recorded as emulated (not board times); the tuned
    library, exported the same way, computes what numpy computes on that server."""
    from test_profile_emulated import _need_sysroot

    from edgeuq.catalog import get_target
    from edgeuq.lower.tvm.targets import cross_compiler, tvm_target
    from edgeuq.lower.tvm.tune import open_database, tune_and_compile
    from edgeuq.profile.emulated import EmulatedServer
    from edgeuq.profile.tracker_boards import request_board

    _need_sysroot()
    import tvm
    from tvm import relax
    from tvm.script import ir as I
    from tvm.script import relax as R

    @I.ir_module
    class Mod:
        @R.function
        def main(x: R.Tensor((4, 16), "float32"), w: R.Tensor((16, 16), "float32")):
            with R.dataflow():
                y = R.nn.relu(R.matmul(x, w))
                R.output(y)
            return y

    a72 = get_target("cortex-a72")
    cc = cross_compiler(a72)
    assert cc, "cortex-a72 is cross-compiled from this host"
    db = tmp_path / "db"
    with Farm() as farm:
        with EmulatedServer("cortex-a72", tracker=("127.0.0.1", farm.tracker_port), key="edgeuq-tune-a72"):
            farm.wait_free("edgeuq-tune-a72", 1)
            ex, report = tune_and_compile(Mod, tvm_target(a72, num_cores=1), db, 4, progress=lambda m: None,
                                          rpc=(farm.tracker_addr, "edgeuq-tune-a72"), cc=cc, allow_emulated=True)
            farm.wait_free("edgeuq-tune-a72", 1)
            recs = open_database(db).get_all_tuning_records()
            secs = [float(s) for r in recs for s in (r.run_secs or [])]
            assert secs and all(0 < s < 1 for s in secs)   # measured by the aarch64 server, not build errors
            lib = tmp_path / "tuned.so"
            ex.export_library(str(lib), cc=cc)
            session, _ = request_board(farm.tracker_addr, "edgeuq-tune-a72")
            session.upload(str(lib))
            vm = relax.VirtualMachine(session.load_module("tuned.so"), session.cpu())
            rng = np.random.default_rng(0)
            x, w = rng.standard_normal((4, 16)).astype("float32"), rng.standard_normal((16, 16)).astype("float32")
            dev = session.cpu()
            got = vm["main"](tvm.runtime.tensor(x, dev), tvm.runtime.tensor(w, dev)).numpy()
            del vm, session
    err = float(np.max(np.abs(got - np.maximum(x @ w, 0))))
    assert err <= 1e-4, err
    runs = json.loads((db / "farm_tuning.json").read_text())
    assert runs[0]["emulated"] is True and "not board times" in runs[0]["measured_on"]
    assert report.records_after > 0


def test_an_unnamed_handler_on_meta_schedules_logger_no_longer_breaks_its_logging_setup(tmp_path):
    """MetaSchedule's set-up (run by every tuning call) lists the handlers on its logger by name;
    an unnamed one broke it ('NoneType' object has no attribute 'format') when another test or
    library had attached one. tune.py detaches them first."""
    import logging

    from tvm.s_tir.meta_schedule.logging import get_loggers_from_work_dir

    from edgeuq.lower.tvm.tune import META_SCHEDULE_LOGGER, drop_unnamed_meta_schedule_handlers

    logger = logging.getLogger(META_SCHEDULE_LOGGER)
    saved = list(logger.handlers)
    stray = logging.StreamHandler()
    logger.addHandler(stray)
    try:
        with pytest.raises(AttributeError, match="format"):   # the failure this guards against
            get_loggers_from_work_dir(str(tmp_path / "a"), ["task0"])
        logger.addHandler(stray)
        dropped = drop_unnamed_meta_schedule_handlers()   # in a full run pytest's own capture handler too
        assert stray in dropped and all(h.get_name() is None for h in dropped)
        assert not [h for h in logger.handlers if h.get_name() is None]
        loggers = get_loggers_from_work_dir(str(tmp_path / "b"), ["task0"])
        assert len(loggers) == 1
    finally:
        for h in list(logger.handlers):
            logger.removeHandler(h)
        for h in saved:
            logger.addHandler(h)
