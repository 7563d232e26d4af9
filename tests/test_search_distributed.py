"""`edgeuq search --storage URL --workers N`: workers share one optuna study (a real PostgreSQL
server on 127.0.0.1, started and stopped here, and a journal file); a worker killed mid-trial
costs only that trial, which another worker runs again (heartbeat + RetryHeartbeatStaleTrialCallback)."""
from __future__ import annotations

import multiprocessing
import os
import signal
import time

import pytest
from require_extras import in_ci, require_extra

optuna = require_extra("optuna", "search")

from search_toy import SPACE, metrics_of, worker  # noqa: E402

from edgeuq.compress.distributed import open_storage, run_workers, storage_label  # noqa: E402
from edgeuq.compress.search import SearchBudgets, run_search_with_failures  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pg():
    require_extra("psycopg2", "search")
    from pg_cluster import PgCluster, postgres_bindir

    if postgres_bindir() is None:
        msg = "PostgreSQL is not installed: run bash scripts/setup_postgres.sh (make install does)"
        if in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    with PgCluster() as cluster:
        yield cluster


def _complete(storage, name="toy"):
    study = optuna.load_study(study_name=name, storage=storage)
    return study, study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def test_two_workers_share_a_journal_study(tmp_path):
    spec = f"journal:{tmp_path / 'search.journal'}"
    codes = run_workers(2, worker, (spec, 8, "slow_evaluate", 5, 20), timeout_s=240, log=lambda m: None)
    assert codes == [0, 0]
    study, done = _complete(open_storage(spec))
    assert 8 <= len(done) <= 9  # each worker stops once 8 are finished; one trial in flight may finish too
    assert len({t.number for t in done}) == len(done)
    assert len({t.user_attrs["worker"] for t in done}) == 2  # both workers evaluated trials
    for t in done:  # every stored objective is the evaluator's closed form of the trial's own parameters
        m = metrics_of(t.params)
        assert t.values == [m["latency_ms"], m["accuracy"], m["ood_auroc"], m["bytes"]]


def test_a_killed_worker_costs_one_trial_which_is_retried(pg):
    spec = pg.url
    ctx = multiprocessing.get_context("spawn")
    doomed = ctx.Process(target=worker, args=(spec, 3, "hang_evaluate", 1, 3, 0))
    doomed.start()
    try:
        storage = open_storage(spec, heartbeat_s=1, grace_s=3)
        deadline = time.time() + 120
        running = []
        while time.time() < deadline and not running:
            try:  # a trial in its evaluation: every parameter suggested
                running = [t for t in optuna.load_study(study_name="toy", storage=storage).get_trials(
                    deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)) if len(t.params) == 5]
            except KeyError:  # the study is not created yet
                pass
            time.sleep(0.3)
        assert len(running) == 1, "the doomed worker never started a trial"
        killed = running[0]
        os.kill(doomed.pid, signal.SIGKILL)
    finally:
        doomed.join(timeout=30)
        if doomed.is_alive():
            doomed.kill()
            doomed.join()
    time.sleep(4)  # past the grace period: the trial's heartbeat has stopped
    records, failed = run_search_with_failures(SPACE, __import__("search_toy").evaluate, SearchBudgets(), 3, storage,
                                               population=4, study_name="toy", log=lambda m: None)
    study, done = _complete(storage)
    assert len(records) == len(done) == 3
    states = {t.number: t.state for t in study.trials}
    assert states[killed.number] == optuna.trial.TrialState.FAIL  # failed by the survivor, as stale
    retried = [t for t in done
               if optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed.number]
    assert killed.params == study.trials[killed.number].params and len(killed.params) == 5
    assert len(retried) == 1 and retried[0].params == killed.params  # the same configuration, run again
    assert "edgeuq" in storage_label(spec) and "127.0.0.1" in storage_label(spec)


def test_storage_specs_are_checked(tmp_path):
    with pytest.raises(ValueError, match="unknown URL scheme"):
        open_storage("redis://127.0.0.1:6379/0")
    with pytest.raises(ValueError, match="--workers"):
        run_workers(0, worker)
    assert storage_label("postgresql+psycopg2://u:secret@h:5432/db") == "postgresql+psycopg2://u@h:5432/db"


def test_workers_start_with_the_thread_pool_sizes_unless_already_set(tmp_path, monkeypatch):
    """run_workers(env=...) gives each worker the variables this process lacks, keeps those it has
    (a user's own OMP_NUM_THREADS wins), and leaves this process's environment as it was."""
    from search_toy import report_env

    names = ("EDGEUQ_TEST_POOL_A", "EDGEUQ_TEST_POOL_B")
    monkeypatch.delenv(names[0], raising=False)
    monkeypatch.setenv(names[1], "7")
    codes = run_workers(2, report_env, (str(tmp_path / "env"), names), timeout_s=120, log=lambda m: None,
                        env={names[0]: "1", names[1]: "1"})
    assert codes == [0, 0]
    import json

    for i in range(2):
        assert json.loads((tmp_path / f"env.{i}").read_text())["env"] == {names[0]: "1", names[1]: "7"}
    assert names[0] not in os.environ and os.environ[names[1]] == "7"


def test_each_worker_runs_in_a_session_of_its_own(tmp_path):
    """Autogroup scheduling shares one CPU share per session: every worker leads its own session
    (not this process's, not each other's); own_session=False keeps them in this one."""
    import json

    from search_toy import report_env

    assert run_workers(2, report_env, (str(tmp_path / "own"), ()), timeout_s=120, log=lambda m: None) == [0, 0]
    own = [json.loads((tmp_path / f"own.{i}").read_text()) for i in range(2)]
    assert all(r["sid"] == r["pid"] for r in own) and len({r["sid"] for r in own} | {os.getsid(0)}) == 3
    assert run_workers(2, report_env, (str(tmp_path / "same"), ()), timeout_s=120, log=lambda m: None,
                       own_session=False) == [0, 0]
    same = [json.loads((tmp_path / f"same.{i}").read_text()) for i in range(2)]
    assert {r["sid"] for r in same} == {os.getsid(0)}


def test_only_optunas_heartbeat_ask_warning_is_silenced(tmp_path):
    """On a heartbeat storage optuna's Study.ask warns that heartbeats belong to Study.optimize
    (checked here, so the test cannot pass vacuously); the search loop silences that one message
    and nothing else: a warning of the evaluator still reaches the caller."""
    import warnings

    import search_toy

    def noisy(number, params):
        warnings.warn("the evaluator's own warning", UserWarning)
        return search_toy.evaluate(number, params)

    storage = open_storage(f"sqlite:///{tmp_path / 'hb.db'}", heartbeat_s=1, grace_s=3)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        optuna.create_study(study_name="probe", storage=storage).ask()
    assert any("Heartbeat of storage is supposed to be used with Study.optimize" in str(w.message) for w in seen)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        records, _ = run_search_with_failures(SPACE, noisy, SearchBudgets(), 3, storage, population=2,
                                              study_name="toy", log=lambda m: None)
    assert len(records) == 3
    messages = [str(w.message) for w in seen]
    assert not any("Heartbeat of storage is supposed to be used" in m for m in messages), messages
    assert messages.count("the evaluator's own warning") == 3


class _LostBoard(RuntimeError):
    retry_trial = True  # what edgeuq.profile.agent_pool's BoardLost / NoFreeBoard say


def test_a_trial_whose_board_was_lost_runs_again_with_the_same_parameters(tmp_path):
    """A failure that is not the configuration's fault (the board died mid-measurement) fails the
    trial and re-enqueues it with its parameters (optuna's retry callback, journal storage too);
    any other failure is only recorded."""
    lost, calls = set(), []

    def evaluate(number, params):
        calls.append(number)
        if number == 1 and number not in lost:
            lost.add(number)
            raise _LostBoard("the board 127.0.0.1:1 stopped answering mid-measurement")
        if number == 3:
            raise ValueError("a configuration that cannot be built")
        return metrics_of(params), f"trial{number}", {"latency_measured_on": {"location": "agent", "n": number}}

    storage = open_storage(f"journal:{tmp_path / 'search.journal'}")
    records, failed = run_search_with_failures(SPACE, evaluate, SearchBudgets(), 5, storage, seed=0, population=4,
                                               study_name="toy", log=lambda m: None)
    assert sorted(f.number for f in failed) == [1, 3]
    study = optuna.load_study(study_name="toy", storage=storage)
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    again = [t for t in by_number.values() if t.system_attrs.get("failed_trial") == 1]
    assert len(again) == 1 and again[0].state == optuna.trial.TrialState.COMPLETE
    assert again[0].params == by_number[1].params  # the same configuration, measured again
    assert not any(t.system_attrs.get("failed_trial") == 3 for t in by_number.values())  # not retried
    assert len(records) == 5 and all(r.latency_measured_on == {"location": "agent", "n": r.number} for r in records)
