"""Timing agents in a TVM RPC tracker's pool (`python -m edgeuq_runtime agent --tracker T --key K`,
`edgeuq search --tracker T --key K`): a real tracker (`python -m tvm.exec.rpc_tracker`) and real TVM
RPC servers on 127.0.0.1, started and stopped here; agents in threads or as subprocesses.

The tracker's view is read with TVM's own client (`tvm.rpc.connect_tracker(...).summary()`), the
independent reference for edgeuq's pure-Python implementation of the protocol."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from require_extras import require_extra  # noqa: E402

require_extra("tvm", "tvm")
require_extra("tornado", "tvm")

from rpc_farm import Farm, free_port, stop_process  # noqa: E402
from test_profile_agent import ort_bundle  # noqa: E402,F401  (the tiny ONNX Runtime bundle fixture)

from edgeuq.profile.agent_client import AgentError, agent_profile  # noqa: E402
from edgeuq.profile.agent_pool import AgentPool, BoardLost, NoFreeBoard, NotAnAgent  # noqa: E402
from edgeuq_runtime.agent import agent_in_thread  # noqa: E402
from edgeuq_runtime.tracker import TrackerConnection  # noqa: E402

pytestmark = pytest.mark.slow
TOKEN = "farm-agent-token-0123456789abcdef"


@pytest.fixture(scope="module")
def farm():
    with Farm() as f:
        # one TVM RPC server of board key "k" (the TVM pool) and one registered, wrongly, under an agent key
        f.add_servers("k", 1, wait=False)
        f.add_servers("edgeuq-agent.wrong", 1, wait=False)
        f.wait_free("k", 1)
        f.wait_free("edgeuq-agent.wrong", 1)
        yield f


def _wait(cond, what: str, timeout_s: float = 60.0):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


def _agents_in(summary: dict, pool: str) -> list:
    return sorted(f"{s['addr'][0]}:{s['addr'][1]}" for s in summary["server_info"] if s.get("key") == "server:" + pool)


def test_agent_joins_its_own_pool_and_appears_in_the_trackers_summary(farm):
    with agent_in_thread(TOKEN, tracker=farm.tracker_addr, key="k") as addr:
        _wait(lambda: farm.free("edgeuq-agent.k") == 1, "the agent in the tracker's pool")
        summary = farm.summary()  # TVM's own client
        assert _agents_in(summary, "edgeuq-agent.k") == [addr]
        assert [s.get("edgeuq") for s in summary["server_info"] if s["key"] == "server:edgeuq-agent.k"] \
            == ["timing-agent"]
        assert farm.free("k") == 1  # the TVM pool of the same board key still holds only its RPC server
        assert addr not in _agents_in(summary, "k")
    _wait(lambda: farm.free("edgeuq-agent.k") == 0 and not _agents_in(farm.summary(), "edgeuq-agent.k"),
          "the agent gone from the pool after it stopped")


def test_a_request_hands_out_the_agent_once_and_it_goes_back_after_the_session(farm, ort_bundle):  # noqa: F811
    with agent_in_thread(TOKEN, tracker=farm.tracker_addr, key="k") as addr:
        _wait(lambda: farm.free("edgeuq-agent.k") == 1, "the agent in the pool")
        with TrackerConnection(farm.tracker_addr) as t:
            host, port, matchkey = t.request("edgeuq-agent.k", timeout_s=30)
        assert f"{host}:{port}" == addr and matchkey.startswith("edgeuq-agent.k:")
        assert farm.free("edgeuq-agent.k") == 0  # handed out: no longer free
        with pytest.raises(AgentError, match=r"\(409\).*ask the tracker"):  # in the pool: no direct requests
            agent_profile(addr, ort_bundle, token=TOKEN, samples=(1,), warmup=0, repeats=2)
        doc = agent_profile(addr, ort_bundle, token=TOKEN, samples=(1,), warmup=0, repeats=2, match_key=matchkey)
        assert doc["end_to_end"]["1"]["median_ms"] > 0
        with pytest.raises(AgentError, match=r"\(409\)"):  # one session per matchkey
            agent_profile(addr, ort_bundle, token=TOKEN, samples=(1,), warmup=0, repeats=2, match_key=matchkey)
        _wait(lambda: farm.free("edgeuq-agent.k") == 1, "the agent back in the pool after its session", 10)
        with TrackerConnection(farm.tracker_addr) as t:  # and it is handed out again, with a fresh matchkey
            again = t.request("edgeuq-agent.k", timeout_s=30)
        assert f"{again[0]}:{again[1]}" == addr and again[2] != matchkey


def test_pool_measures_on_the_agent_and_names_the_board(farm, ort_bundle):  # noqa: F811
    with agent_in_thread(TOKEN, tracker=farm.tracker_addr, key="k") as addr:
        _wait(lambda: farm.free("edgeuq-agent.k") == 1, "the agent in the pool")
        pool = AgentPool(farm.tracker_addr, "k", TOKEN, wait_s=30)
        doc, board = pool.profile(ort_bundle, samples=(1,), warmup=0, repeats=3, log=lambda m: None)
        assert board == {"location": "agent", "key": "k", "tracker": farm.tracker_addr, "agent": addr,
                         "hostname": socket.gethostname(), "machine": board["machine"]}
        assert doc["repeats"] == 3 and doc["end_to_end"]["1"]["median_ms"] > 0
        assert pool.label == f"the boards of key k through tracker {farm.tracker_addr}"
        # a wrong token is the agent's own refusal, as with --agent
        bad = AgentPool(farm.tracker_addr, "k", "not-the-token-of-this-farm-000", wait_s=30)
        _wait(lambda: farm.free("edgeuq-agent.k") == 1, "the agent back in the pool")
        with pytest.raises(AgentError, match=r"\(401\).*token required"):
            bad.profile(ort_bundle, samples=(1,), warmup=0, repeats=2, log=lambda m: None)


def test_a_tvm_client_is_never_handed_an_agent_and_an_agent_request_never_a_tvm_server(farm, ort_bundle):  # noqa: F811
    from tvm import rpc

    with agent_in_thread(TOKEN, tracker=farm.tracker_addr, key="k"):
        _wait(lambda: farm.free("edgeuq-agent.k") == 1, "the agent in the pool")
        tracker = rpc.connect_tracker("127.0.0.1", farm.tracker_port)
        sess = tracker.request("k", session_timeout=30)  # TVM's pool of key k: its RPC server, a working session
        assert sess.cpu(0).exist
        del sess
        # a TVM client that asks for the agents' pool is refused at the RPC handshake, at once
        t0 = time.time()
        with pytest.raises(Exception, match="cannot find server that matches key"):
            tracker.request("edgeuq-agent.k", session_timeout=5, max_retry=1)
        assert time.time() - t0 < 20
    # an agent request handed a TVM RPC server (registered under an agent key) is named as such
    with pytest.raises(NotAnAgent, match="not answer as an edgeuq timing agent"):
        AgentPool(farm.tracker_addr, "wrong", TOKEN, wait_s=30).profile(ort_bundle, samples=(1,), repeats=2,
                                                                          log=lambda m: None)


def test_no_free_board_waits_then_says_so(farm, ort_bundle):  # noqa: F811
    said = []
    t0 = time.time()
    with pytest.raises(NoFreeBoard, match=r"no free board of key nobody at tracker .* within 2 s "
                                          r"\(the tracker lists 0 agent\(s\)"):
        AgentPool(farm.tracker_addr, "nobody", TOKEN, wait_s=2).profile(ort_bundle, samples=(1,), repeats=2,
                                                                         log=said.append)
    assert 2 <= time.time() - t0 < 30
    assert said and said[0].startswith("waiting up to 2 s for a free board of key nobody")
    assert NoFreeBoard.retry_trial and BoardLost.retry_trial and not NotAnAgent.retry_trial


def test_an_agent_killed_mid_measurement_is_a_lost_board_and_leaves_the_pool(farm, ort_bundle, tmp_path):  # noqa: F811
    port = free_port()
    env = dict(os.environ, EDGEUQ_AGENT_TOKEN=TOKEN, PYTHONUNBUFFERED="1")
    log = open(tmp_path / "agent.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "edgeuq_runtime", "agent", "--bind", f"127.0.0.1:{port}",
                             "--tracker", farm.tracker_addr, "--key", "doomed"], stdout=log, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)
    log.close()
    try:
        _wait(lambda: farm.free("edgeuq-agent.doomed") == 1, "the agent subprocess in the pool", 120)
        pool = AgentPool(farm.tracker_addr, "doomed", TOKEN, wait_s=30)
        got = {}

        def measure():
            try:
                pool.profile(ort_bundle, samples=(32,), warmup=0, repeats=10_000, log=lambda m: None)
            except Exception as exc:  # noqa: BLE001 -- examined below
                got["error"] = exc

        th = threading.Thread(target=measure)
        th.start()
        _wait(lambda: farm.free("edgeuq-agent.doomed") == 0, "the agent handed out")
        time.sleep(1.5)  # it is timing now (10,000 repeats at S = 32 take far longer)
        os.killpg(proc.pid, signal.SIGKILL)
        th.join(60)
        assert isinstance(got.get("error"), BoardLost), got
        assert f"127.0.0.1:{port}" in str(got["error"]) and "mid-measurement" in str(got["error"])
        _wait(lambda: not _agents_in(farm.summary(), "edgeuq-agent.doomed"), "the dead agent out of the tracker")
    finally:
        stop_process(proc)
        (tmp_path / "agent.log").unlink(missing_ok=True)


def test_two_search_workers_take_both_agents_of_the_key_from_the_tracker(farm, tmp_path, monkeypatch, capsys):
    """`edgeuq search --tracker T --tracker-key K --workers 2` (journal storage, tiny recipe): every
    trial's latency was measured on one of the key's two agents, both were used, and the output
    says where."""
    import json

    import optuna

    from edgeuq.cli import main
    from tiny_recipes import tiny_recipe

    rec = tmp_path / "tiny-farm.toml"
    rec.write_text(tiny_recipe("tiny-farm", "tiny farm search test recipe", heads=2, depth=2, ffn=16, blocks=(1,)))
    ck = tmp_path / "teacher"
    assert main(["train", "--recipe", str(rec), "--out", str(ck), "--no-progress"]) == 0
    monkeypatch.setenv("EDGEUQ_AGENT_TOKEN", TOKEN)
    out = tmp_path / "search"
    with agent_in_thread(TOKEN, tracker=farm.tracker_addr, key="search") as a1, \
            agent_in_thread(TOKEN, tracker=farm.tracker_addr, key="search") as a2:
        _wait(lambda: farm.free("edgeuq-agent.search") == 2, "both agents in the pool")
        rc = main(["search", "--board", "x86-host", "--teacher", str(ck), "--recipe", str(rec), "--out", str(out),
                   "--trials", "6", "--population", "4", "--workers", "2", "--tracker", farm.tracker_addr,
                   "--tracker-key", "search", "--keep-ratios", "0.5", "1.0", "--bytes-fractions", "1.0",
                   "--samples", "4", "8", "--repeats", "5", "--calibration", "32", "--board-wait", "120"])
    assert rc in (0, 1)  # 1: no trial within the host board's budgets (the tiny teacher is not the point here)
    text = capsys.readouterr().out
    assert f"measured on the boards of key search through tracker {farm.tracker_addr}" in text
    study = optuna.load_study(study_name="edgeuq-x86-host", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / "search.journal"))))
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    assert 6 <= len(done) <= 7
    boards = [t.user_attrs["latency_measured_on"] for t in done]
    assert all(b["location"] == "agent" and b["key"] == "search" and b["tracker"] == farm.tracker_addr
               and b["agent"] in (a1, a2) for b in boards), boards
    assert {b["agent"] for b in boards} == {a1, a2}  # both boards measured trials
    assert len({t.user_attrs["worker"] for t in done}) == 2  # and both workers ran trials
    info = json.loads((out / "result" / "search.json").read_text())["meta"]["info"]
    assert sum(info["boards"].values()) == len(done) and set(info["boards"]) == {a1, a2}
    assert info["latency_measured_on"].startswith(f"measured on the boards of key search through tracker ")


def test_edgeuq_tvm_paths_refuse_the_agents_pool_key():
    """edgeuq's own TVM RPC paths (profile --tracker, the fleet, tuning) refuse an agent pool key at
    once, naming the TVM servers' key instead (no tracker needed: refused before connecting)."""
    from edgeuq.profile.fleet import free_boards
    from edgeuq.profile.tvm_rpc import connect

    for call in (lambda: connect(tracker="127.0.0.1:1", key="edgeuq-agent.pool7"),
                 lambda: free_boards("127.0.0.1:1", "edgeuq-agent.pool7")):
        with pytest.raises(ValueError, match=r"'edgeuq-agent.pool7' is the tracker pool of edgeuq timing agents.*"
                                             r"servers of key 'pool7'"):
            call()


def test_the_agent_registers_again_when_the_tracker_restarts():
    with Farm() as f:
        with agent_in_thread(TOKEN, tracker=f.tracker_addr, key="again") as addr:
            _wait(lambda: f.free("edgeuq-agent.again") == 1, "the agent in the first tracker's pool")
            stop_process(f.procs[0])  # the tracker goes away, and comes back on the same port, empty
            f._spawn("-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(f.tracker_port),
                     "--port-end", str(f.tracker_port + 1))

            def back():
                try:
                    return _agents_in(f.summary(), "edgeuq-agent.again") == [addr] and f.free("edgeuq-agent.again")
                except Exception:  # noqa: BLE001 -- the new tracker is still starting
                    return False

            _wait(back, "the agent in the restarted tracker's pool", 180)


def test_fleet_profile_on_every_free_timing_agent_of_a_key(farm, ort_bundle, tmp_path, monkeypatch, capsys):  # noqa: F811
    """`edgeuq profile --tracker T --key K --timing-agents --all`: one report per free agent (each
    reached exactly once, ONNX Runtime graphs timed there) and the fleet summary."""
    import json

    from edgeuq.cli import main
    from edgeuq.profile.report import load_latency_report

    monkeypatch.setenv("EDGEUQ_AGENT_TOKEN", TOKEN)
    out = tmp_path / "fleet"
    with agent_in_thread(TOKEN, tracker=farm.tracker_addr, key="fleet") as a1, \
            agent_in_thread(TOKEN, tracker=farm.tracker_addr, key="fleet") as a2:
        _wait(lambda: farm.free("edgeuq-agent.fleet") == 2, "both agents in the pool")
        rc = main(["profile", "--bundle", str(ort_bundle), "--tracker", farm.tracker_addr, "--key", "fleet",
                   "--timing-agents", "--all", "--out", str(out), "--samples", "1", "4", "--repeats", "5",
                   "--warmup", "1", "--no-plots"])
    assert rc == 0
    table = json.loads((out / "fleet_summary.json").read_text())
    servers = [r[0] for r in table["rows"] if not r[0].startswith("spread")]
    assert sorted(servers) == sorted([a1, a2])  # every free agent, once
    for i, server in enumerate(servers):
        rep = load_latency_report(out / f"board-{i:02d}-{server.replace(':', '_')}")
        assert rep.location == "agent" and rep.environment["agent"] == server
        assert rep.environment["key"] == "fleet" and rep.environment["tracker"] == farm.tracker_addr
        assert f"key fleet through tracker {farm.tracker_addr}" in rep.where
        assert rep.stages["4"]["trunk"]["median_ms"] > 0 and rep.stages["4"]["head"]["median_ms"] > 0
    assert table["spread"]["boards"] == 2
