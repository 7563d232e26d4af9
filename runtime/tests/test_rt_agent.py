"""The board's timing agent (``python -m edgeuq_runtime agent``): token, verified bundles only,
127.0.0.1 by default, and a real timing report of every stage."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from edgeuq_runtime import UncertaintyRuntime
from edgeuq_runtime.__main__ import build_parser
from edgeuq_runtime.agent import AgentServer, agent_in_thread
from edgeuq_runtime.bundle import load_bundle
from edgeuq_runtime.ota.archive import pack_bundle
from edgeuq_runtime.profiling import STAGES

TOKEN = "t0ken-for-the-agent-tests-0123456789"


@pytest.fixture
def agent():
    with agent_in_thread(TOKEN) as addr:
        yield addr


def _post(addr: str, body: bytes, token: str = TOKEN, query: str = "samples=1,4&warmup=1&repeats=5"):
    req = urllib.request.Request(f"http://{addr}/v1/profile?{query}", data=body, method="POST",
                                 headers={"Authorization": f"Bearer {token}"} if token is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_wrong_or_missing_token_is_refused(agent, tiny):
    body = pack_bundle(tiny.dir)
    for token in (None, "", TOKEN[:-1] + "X", TOKEN + "0", "Bearer"):
        code, doc = _post(agent, body, token=token)
        assert code == 401 and doc == {"error": "token required"}, (token, code, doc)
    code, doc = _post(agent, body)  # the right token gets through (the refusals above were the token's)
    assert code == 200


def test_tampered_or_unexpected_bundle_is_refused(agent, tiny, tmp_path):
    b = load_bundle(tiny.dir)
    tampered = tmp_path / "tampered"
    shutil.copytree(tiny.dir, tampered)
    head = tampered / b.manifest.head.file
    data = bytearray(head.read_bytes())
    data[-1] ^= 0x01
    head.write_bytes(bytes(data))
    code, doc = _post(agent, pack_bundle(tampered))
    assert code == 422 and "IntegrityError" in doc["error"] and b.manifest.head.file in doc["error"]
    # a verified bundle whose digest is not the one the host meant is refused too
    code, doc = _post(agent, pack_bundle(tiny.dir), query="samples=1&repeats=2&digest=" + "0" * 64)
    assert code == 422 and "digest" in doc["error"]
    # not a bundle archive at all; unsafe parameters
    code, doc = _post(agent, b"not a tar" * 100)
    assert code == 422 and "bundle refused" in doc["error"]
    code, doc = _post(agent, pack_bundle(tiny.dir), query="samples=1&repeats=0")
    assert code == 422 and "repeats" in doc["error"]


def test_agent_returns_a_real_timing_report(agent, tiny, windows):
    b = load_bundle(tiny.dir)
    code, doc = _post(agent, pack_bundle(tiny.dir), query=f"samples=1,4&warmup=2&repeats=15&digest={b.digest}")
    assert code == 200, doc
    assert doc["bundle_digest"] == b.digest and doc["samples"] == [1, 4]
    assert doc["backends"] == {"trunk": "onnxruntime", "head": "onnxruntime"}
    for s in ("1", "4"):
        assert set(doc["stages"][s]) == set(STAGES) | {"sum of stages"}
        for st in doc["stages"][s].values():
            assert st["repeats"] == 15 and 0 < st["min_ms"] <= st["median_ms"] <= st["p99_ms"]
    assert doc["environment"]["harness"] == "edgeuq_runtime.harness"
    # independent reference: predict timed here with a bare perf_counter loop, same bundle and S
    rt = UncertaintyRuntime(tiny.dir, threads=1)
    x = windows[:1]
    rt.predict(x, samples=4, seed=0)
    t = []
    for _ in range(15):
        t0 = time.perf_counter()
        rt.predict(x, samples=4, seed=0)
        t.append((time.perf_counter() - t0) * 1e3)
    ref = float(np.median(t))
    got = doc["end_to_end"]["4"]["median_ms"]
    assert 0.1 * ref <= got <= 10 * ref, (got, ref)  # same machine: same magnitude (loaded host: wide band)


def test_cli_binds_127_0_0_1_by_default(tmp_path):
    assert build_parser().parse_args(["agent"]).bind.startswith("127.0.0.1:")
    env = dict(os.environ, EDGEUQ_AGENT_TOKEN=TOKEN, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-m", "edgeuq_runtime", "agent", "--bind", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    try:
        killer = threading.Timer(60, proc.kill)  # a hang must not block the test run
        killer.start()
        line = proc.stdout.readline()
        killer.cancel()
        assert line.startswith("edgeuq_runtime agent on 127.0.0.1:"), line
        port = int(line.split()[3].rsplit(":", 1)[1])
        assert "token from $EDGEUQ_AGENT_TOKEN" in line
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/health", headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert json.loads(resp.read())["ok"] is True
        # not reachable on another address of this machine (when it has one)
        others = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)} - {"127.0.0.1"}
        for addr in others:
            if addr.startswith("127."):
                continue
            with pytest.raises(OSError):
                socket.create_connection((addr, port), timeout=5).close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()


def test_token_file_must_be_private(tmp_path, monkeypatch):
    from edgeuq_runtime.agent import agent_token
    from edgeuq_runtime.errors import InputError

    monkeypatch.delenv("EDGEUQ_AGENT_TOKEN", raising=False)
    path = tmp_path / "agent.token"
    token, source = agent_token(path)
    assert len(token) >= 16 and "created" in source and (path.stat().st_mode & 0o777) == 0o600
    assert agent_token(path)[0] == token
    path.chmod(0o644)
    with pytest.raises(InputError, match="0600"):
        agent_token(path)
    monkeypatch.setenv("EDGEUQ_AGENT_TOKEN", "short")
    with pytest.raises(InputError, match="16"):
        agent_token(path)
    with pytest.raises(InputError, match="16"):
        AgentServer(("127.0.0.1", 0), "short")
