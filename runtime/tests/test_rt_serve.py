"""The live view's server: page self-contained, read-only, no path reaches the file system
(traversal, encoded ../, absolute paths), token for non-local binds (another loopback
address included), bounded memory (history, per-client queues, client count), slow clients
dropped without blocking the loop, the stream's records arriving over SSE, a real bundle
through the ``serve`` command, and a source that stalls and whose producer restarts."""
from __future__ import annotations

import builtins
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgeuq_runtime import InputSpec, UncertaintyRuntime
from edgeuq_runtime.errors import InputError
from edgeuq_runtime.serve import Hub, LiveServer, LiveStats, embed_json, is_local_bind, load_or_create_token, \
    parse_bind, render_page
from edgeuq_runtime.serve.live import LiveFeed
from edgeuq_runtime.stream import ArraySource, Diagnoser, Hysteresis, TcpSource
from rt_helpers import L
from serve_helpers import SSEReader, raw_request

RUNTIME_DIR = Path(__file__).resolve().parents[1]


def _decision(i, **kw):
    rec = {"type": "decision", "window": i, "time": time.time(), "class": "rest", "class_index": 0,
           "confidence": 0.9, "total": 0.3, "aleatoric": 0.2, "epistemic": 0.1, "density": None, "abstain": False,
           "reasons": [], "flags": [], "samples": 8, "latency_ms": 1.0, "late": False}
    rec.update(kw)
    return rec


@pytest.fixture
def server():
    hub = Hub(info={"model": "m"})
    srv = LiveServer(hub, "127.0.0.1", 0)
    srv.start()
    yield srv
    srv.stop()


# ---------------- the page ----------------

def test_page_is_self_contained_and_embeds_data_safely():
    page = render_page(None)
    assert "<script src" not in page and "<link" not in page and "@import" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "no CDN / external resource"
    assert "/*JS*/" not in page and "/*CSS*/" not in page and "new EventSource" in page
    nasty = {"mode": "log", "records": [{"type": "error", "message": "</script><script>alert(1)</script>\u2028&"}]}
    text = embed_json(nasty)
    assert "</" not in text and "<" not in text and "\u2028" not in text
    assert json.loads(text) == nasty                      # round trip: the escapes are JSON's own
    page = render_page(nasty)
    inside = page.split('<script type="application/json" id="embedded">', 1)[1].split("</script>", 1)[0]
    assert json.loads(inside) == nasty


# ---------------- binding and the token ----------------

@pytest.mark.parametrize("text,expect", [("127.0.0.1:8080", ("127.0.0.1", 8080)), ("8081", ("127.0.0.1", 8081)),
                                         ("[::1]:9", ("::1", 9)), ("0.0.0.0:80", ("0.0.0.0", 80)),
                                         ("localhost:0", ("localhost", 0))])
def test_parse_bind(text, expect):
    assert parse_bind(text) == expect


@pytest.mark.parametrize("bad", ["", "host:80", "127.0.0.1", "127.0.0.1:99999", "1.2.3.4:x", "evil.example:80"])
def test_parse_bind_refuses(bad):
    with pytest.raises(InputError, match="bind"):
        parse_bind(bad)


def test_only_127_0_0_1_and_ipv6_loopback_are_local():
    assert is_local_bind("127.0.0.1") and is_local_bind("::1") and is_local_bind("localhost")
    for host in ("127.0.0.2", "127.1.2.3", "0.0.0.0", "192.168.1.5", "::"):
        assert not is_local_bind(host)
    with pytest.raises(InputError, match="token"):
        LiveServer(Hub(), "127.0.0.2", 0, token=None)


def test_token_file_created_private_once(tmp_path):
    path = tmp_path / "cfg" / "serve-token"
    token, created = load_or_create_token(path)
    assert created and len(token) >= 24
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again, created2 = load_or_create_token(path)
    assert again == token and not created2
    os.chmod(path, 0o644)
    with pytest.raises(InputError, match="0600"):
        load_or_create_token(path)


def test_token_required_on_other_loopback_address():
    token = "a-test-token-0123456789abcdef"
    hub = Hub()
    srv = LiveServer(hub, "127.0.0.2", 0, token=token)
    srv.start()
    try:
        host, port = "127.0.0.2", srv.port
        for target, headers in [("/", {}), ("/state", {}), ("/events", {}), ("/?token=", {}),
                                ("/?token=" + token[:-1], {}), ("/state?token=" + token + "x", {}),
                                ("/", {"Authorization": "Bearer nope"})]:
            code, _, body = raw_request(host, port, target, headers=headers)
            assert code == 401, (target, code)
            assert b"<html" not in body and b'"info"' not in body
        assert raw_request(host, port, "/?token=" + token)[0] == 200
        assert raw_request(host, port, "/state", headers={"Authorization": "Bearer " + token})[0] == 200
        code, _, body = raw_request(host, port, "/state?token=" + token)
        assert code == 200 and json.loads(body)["type"] == "snapshot"
    finally:
        srv.stop()


def test_local_bind_refuses_foreign_host_header(server):
    port = server.port
    assert raw_request("127.0.0.1", port, "/")[0] == 200
    assert raw_request("127.0.0.1", port, "/", headers={"Host": f"localhost:{port}"})[0] == 200
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1:1", ""):
        assert raw_request("127.0.0.1", port, "/", headers={"Host": host})[0] == 401, host


# ---------------- read-only, no file system ----------------

TRAVERSAL = ["/../../../../etc/passwd", "/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
             "/..%2f..%2f..%2fetc%2fpasswd", "/static/../../etc/passwd", "/index.html/../../etc/passwd",
             "//etc/passwd", "/etc/passwd", "/%2fetc%2fpasswd", "/..\\..\\etc\\passwd", "/%252e%252e/etc/passwd",
             "/app.js", "/static/app.js", "/index.html%00.js", "/./index.html", "/events/../state",
             "SECRET"]


def test_no_url_path_reaches_the_file_system(server, tmp_path, monkeypatch):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    targets = [t.replace("SECRET", str(secret)) for t in TRAVERSAL]
    targets += ["/" + os.path.relpath(secret, "/"), "/" + "../" * 12 + str(secret).lstrip("/"),
                "http://127.0.0.1/etc/passwd", "file:///etc/passwd"]
    opened = []
    real_open, real_os_open = builtins.open, os.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: (opened.append(str(f)), real_open(f, *a, **k))[1])
    monkeypatch.setattr(os, "open", lambda f, *a, **k: (opened.append(str(f)), real_os_open(f, *a, **k))[1])
    for t in targets:
        code, _, body = raw_request("127.0.0.1", server.port, t)
        assert code in (400, 404), (t, code)
        assert b"TOP-SECRET" not in body and b"root:" not in body, t
    assert not [p for p in opened if "secret" in p or "passwd" in p], opened


def test_read_only_methods_refused(server):
    hub = server.hub
    hub.publish(_decision(0))
    before = (hub.published, hub.history_len, dict(hub.info))
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"):
        for target in ("/", "/events", "/state"):
            code, h, _ = raw_request("127.0.0.1", server.port, target, method=method,
                                     headers={"Content-Length": "2", "Content-Type": "application/json"})
            assert code == 405 and h.get("allow") == "GET", (method, target, code)
    assert raw_request("127.0.0.1", server.port, "/", method="BREW")[0] == 501
    assert (hub.published, hub.history_len, dict(hub.info)) == before


def test_security_headers(server):
    code, h, body = raw_request("127.0.0.1", server.port, "/")
    assert code == 200 and b"edgeuq" in body
    csp = h["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'sha256-" in csp and "'unsafe-eval'" not in csp
    assert h["x-content-type-options"] == "nosniff" and h["referrer-policy"] == "no-referrer"


# ---------------- bounded memory, slow clients ----------------

def test_history_and_stats_bounded_whatever_the_uptime():
    hub = Hub(history=500)
    for i in range(20000):
        hub.publish(_decision(i, latency_ms=float(i % 97)))
    assert hub.history_len == 500
    _, parts = hub.subscribe(register=False)            # the snapshot in pieces is one JSON document
    parts = list(parts)
    assert len(parts) == 2 + 5 and all("\n" not in p for p in parts)
    hist = json.loads("\n".join(parts))["history"]
    assert [h["window"] for h in hist] == list(range(19500, 20000))
    assert hub.stats.windows == 20000 and len(hub.stats._lat) == 1000


def test_live_stats_quantiles_against_numpy():
    rng = np.random.default_rng(0)
    st = LiveStats(n=300)
    vals = rng.exponential(3.0, 1000)
    for v in vals:
        st.add({"latency_ms": float(v)}, 0.002, 0.1)
    tail = vals[-300:]
    j = st.to_json()
    assert abs(j["latency_p50_ms"] - np.quantile(tail, 0.5, method="inverted_cdf")) <= 1e-4
    assert abs(j["latency_p99_ms"] - np.quantile(tail, 0.99, method="inverted_cdf")) <= 1e-4
    assert abs(j["real_time_factor"] - 0.1 / 0.002) <= 0.01


def test_queue_bounded_and_nonreading_subscriber_dropped():
    hub = Hub(queue_size=32)
    sub, parts = hub.subscribe()
    assert json.loads("\n".join(parts))["type"] == "snapshot"
    for i in range(1000):
        hub.publish(_decision(i))
    assert sub.dropped and sub.queue.qsize() <= 32 and hub.clients == 0 and hub.dropped_clients == 1


def test_too_many_pages_refused(server):
    server.hub.max_clients = 2
    readers = [SSEReader("127.0.0.1", server.port) for _ in range(2)]
    try:
        assert all(r.wait_for(lambda m: m["type"] == "snapshot") for r in readers)
        code, _, _ = raw_request("127.0.0.1", server.port, "/events")
        assert code == 503
    finally:
        for r in readers:
            r.close()


def test_slow_client_dropped_without_blocking_the_loop(server):
    hub = server.hub
    hub.queue_size = 256
    slow = socket.create_connection(("127.0.0.1", server.port))
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.sendall(f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())  # then never reads
    fast = SSEReader("127.0.0.1", server.port)
    try:
        t_end = time.monotonic() + 5
        while hub.clients < 2 and time.monotonic() < t_end:
            time.sleep(0.01)
        assert hub.clients == 2
        pad = "x" * 4000     # 4 kB records: 64 kB socket buffer + 256 queued = about 300 records until dropped
        worst = 0.0
        for i in range(1500):
            t0 = time.perf_counter()
            hub.publish(_decision(i, error=pad))
            worst = max(worst, time.perf_counter() - t0)
            if i % 10 == 0:
                time.sleep(0.01)    # about 4 kB/ms: a reading page keeps up, the silent one cannot
        hub.publish(_decision(99999))
        assert worst < 0.25, f"publish blocked for {worst:.3f} s"
        assert hub.dropped_clients >= 1
        assert fast.wait_for(lambda m: m.get("window") == 99999, timeout=10), "the reading page was dropped too"
    finally:
        slow.close()
        fast.close()


def test_page_that_never_reads_is_cut_by_the_write_timeout():
    hub = Hub(history=400)
    for i in range(400):                      # a 1.6 MB snapshot: more than any socket buffers hold
        hub.publish(_decision(i, error="y" * 4000))
    srv = LiveServer(hub, "127.0.0.1", 0, write_timeout=0.5)
    srv.start()
    try:
        s = socket.create_connection(("127.0.0.1", srv.port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n\r\n".encode())  # never reads
        t_end = time.monotonic() + 10
        while srv.write_timeouts == 0 and time.monotonic() < t_end:
            time.sleep(0.05)
        assert srv.write_timeouts == 1 and srv.errors == 0
        t_end = time.monotonic() + 5
        while hub.clients and time.monotonic() < t_end:
            time.sleep(0.05)
        assert hub.clients == 0
        s.close()
    finally:
        srv.stop()


# ---------------- records over SSE; a real bundle; stalls and restarts ----------------

def test_sse_delivers_records_in_order(server):
    r = SSEReader("127.0.0.1", server.port)
    try:
        assert r.wait_for(lambda m: m["type"] == "snapshot")
        sent = [_decision(i, **{"class": c}) for i, c in enumerate(["rest", "walk", "run"] * 50)]
        for rec in sent:
            server.hub.publish(rec)
        server.hub.publish({"type": "error", "window": 99, "message": "RuntimeError: boom", "time": 1.0})
        server.hub.publish({"type": "alarm", "state": "walk", "time": 1.0})
        assert r.wait_for(lambda m: m["type"] == "alarm")
        got = [m for m in r.messages if m["type"] == "decision"]
        assert got == json.loads(json.dumps(sent))
        snap = json.loads(raw_request("127.0.0.1", server.port, "/state")[2])
        assert snap["alarm"] == "walk" and len(snap["history"]) == len(sent) + 2
        assert [m["type"] for m in snap["history"][-2:]] == ["error", "alarm"] and snap["stats"]["errors"] == 1
        assert any(m["type"] == "error" and m["message"] == "RuntimeError: boom" for m in r.messages)
        assert snap["last"]["window"] == sent[-1]["window"]
        late = SSEReader("127.0.0.1", server.port)      # a page that connects now gets the history (several pieces)
        try:
            assert late.wait_for(lambda m: m["type"] == "snapshot")
            first = late.messages[0]
            assert [h.get("window") for h in first["history"]] == [r_["window"] for r_ in sent] + [99, None]
        finally:
            late.close()
    finally:
        r.close()


@pytest.fixture
def tiny160(build_bundle):
    return build_bundle(input=InputSpec(length=L, sample_rate_hz=160.0))


def test_feed_with_a_real_bundle_matches_the_diagnoser(tiny160):
    rt = UncertaintyRuntime(tiny160.dir)
    x = np.random.default_rng(3).standard_normal(L * 40).astype(np.float32)
    hub = Hub()
    got = []
    orig = hub.publish
    hub.publish = lambda rec, *a: (got.append(dict(rec)), orig(rec, *a))[1]
    LiveFeed(hub, Diagnoser(rt, samples=8, seed=5), lambda: ArraySource(x, 160.0), alarm=Hysteresis(3, 5, "rest")).run()
    ref = Diagnoser(rt, samples=8, seed=5)
    dec = [r for r in got if r["type"] == "decision"]
    assert len(dec) == 40
    for k, r in enumerate(dec):
        d = ref.decide(x[k * L:(k + 1) * L])
        assert r["class"] == d.label
        assert np.allclose(r["probs"], d.probs, atol=1e-4) and abs(sum(r["probs"]) - 1) < 1e-3
        assert r["class_index"] == int(np.argmax(r["probs"]))
    info = hub.info
    assert info["model"] == "tiny-har" and info["digest"] == rt.bundle_digest and info["classes"] == list(rt.class_names)
    assert hub.stats.windows == 40 and hub.stats.to_json()["real_time_factor"] > 0


def test_stalled_source_and_restarted_producer(tiny160):
    rt = UncertaintyRuntime(tiny160.dir)
    src = TcpSource(0, "f32", 160.0, stall_timeout=0.2)
    hub = Hub()
    feed = LiveFeed(hub, Diagnoser(rt, samples=4), lambda: src)
    t = threading.Thread(target=feed.run, daemon=True)
    t.start()
    reader_srv = LiveServer(hub, "127.0.0.1", 0)
    reader_srv.start()
    r = SSEReader("127.0.0.1", reader_srv.port)
    try:
        assert r.wait_for(lambda m: m.get("type") == "status" and m.get("event") == "stalled", timeout=5)
        sig = np.random.default_rng(0).standard_normal(L * 10).astype("<f4").tobytes()
        for round_ in range(2):     # a producer connects, sends, disconnects; then another one
            n0 = hub.stats.windows
            with socket.create_connection(("127.0.0.1", src.port)) as p:
                p.sendall(sig)
            t_end = time.monotonic() + 10
            while hub.stats.windows < n0 + 10 and time.monotonic() < t_end:
                time.sleep(0.02)
            assert hub.stats.windows == n0 + 10, round_
            t_end = time.monotonic() + 10
            while sum(m.get("event") == "closed" for m in list(r.messages)) < round_ + 1 and time.monotonic() < t_end:
                time.sleep(0.02)
            assert sum(m.get("event") == "closed" for m in list(r.messages)) == round_ + 1
        assert t.is_alive() and not r.closed.is_set()
        assert sum(m["type"] == "decision" for m in list(r.messages)) == 20
    finally:
        r.close()
        feed.stop()
        t.join(5)
        reader_srv.stop()


def _foreground_signals():
    """In the child before exec: SIGINT as in a foreground terminal (default disposition, not blocked),
    whatever this test process inherited or a library set in it (an ignored or blocked SIGINT is
    inherited across exec, and the CLI then cannot be stopped the way these tests stop it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _start_cli(args, env=None):
    e = dict(os.environ, PYTHONPATH=str(RUNTIME_DIR) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    e.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "edgeuq_runtime", "serve", *args], cwd=RUNTIME_DIR, env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_foreground_signals)


def _url_from(proc):
    lines = []
    t_end = time.monotonic() + 60
    while time.monotonic() < t_end:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"live view on http://([\d.]+):(\d+)/", line)
        if m:
            return m.group(1), int(m.group(2)), lines
    raise AssertionError("no URL printed: " + "".join(lines))


def test_serve_command_streams_a_bundle(tiny160, tmp_path):
    proc = _start_cli(["--bundle", str(tiny160.dir), "--source", "sim:inner_race", "--bind", "127.0.0.1:0"])
    try:
        host, port, lines = _url_from(proc)
        assert not any("token" in ln for ln in lines)
        t_end = time.monotonic() + 30
        snap = {}
        while time.monotonic() < t_end:
            snap = json.loads(raw_request(host, port, "/state")[2])
            if len(snap["history"]) >= 5:
                break
            time.sleep(0.2)
        assert len(snap["history"]) >= 5 and snap["info"]["model"] == "tiny-har" and snap["info"]["simulated"]
        assert snap["last"]["type"] == "decision" and len(snap["last"]["probs"]) == 3
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0


def test_serve_command_token_printed_once(tiny160, tmp_path):
    tf = tmp_path / "tok"
    outs = []
    for _ in range(2):
        proc = _start_cli(["--bundle", str(tiny160.dir), "--source", "sim", "--bind", "127.0.0.2:0",
                           "--token-file", str(tf)])
        try:
            host, port, lines = _url_from(proc)
            outs.append("".join(lines))
            assert host == "127.0.0.2" and raw_request(host, port, "/")[0] == 401
            tok = tf.read_text().strip()
            assert raw_request(host, port, "/?token=" + tok)[0] == 200
        finally:
            proc.send_signal(signal.SIGINT)
            assert proc.wait(20) == 0
    assert stat.S_IMODE(os.stat(tf).st_mode) == 0o600
    assert tok in outs[0] and tok not in outs[1] and "shown once" in outs[0]


def test_serve_shows_the_ota_slot_and_trial_state_read_only(tiny160, tmp_path):
    from edgeuq_runtime.ota import slots

    root = tmp_path / "device"
    files = {p.relative_to(tiny160.dir).as_posix(): p.read_bytes() for p in tiny160.dir.rglob("*") if p.is_file()}
    slot = slots.write_slot(root, files)
    slots.commit(root, slot, {"release": 3, "model_version": "1.0.0"}, attempts=3, healthy_needed=20)
    state_before = (root / "state.json").read_bytes()
    proc = _start_cli(["--ota-root", str(root), "--source", "sim:normal", "--bind", "127.0.0.1:0"])
    try:
        host, port, _ = _url_from(proc)
        info = json.loads(raw_request(host, port, "/state")[2])["info"]
        assert info["slot"] == slot and info["model"] == "tiny-har"
        assert info["ota"]["pending"]["release"] == 3 and info["ota"]["pending"]["healthy_needed"] == 20
        assert info["digest"] == info["ota"]["slots"][slot]["bundle_digest"]
        r = SSEReader(host, port)
        try:
            assert r.wait_for(lambda m: m["type"] == "snapshot")
            time.sleep(2.5)
            assert (root / "state.json").read_bytes() == state_before     # serving never writes the OTA state
            slots.mark_good(root)                                          # the updater commits meanwhile
            assert r.wait_for(lambda m: m["type"] == "info" and m["info"]["ota"]["pending"] is None
                              and m["info"]["ota"]["good"] == slot, timeout=10)
        finally:
            r.close()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0


def test_a_server_stopped_before_it_started_stops_at_once():
    """Ctrl-C during start-up reaches ``LiveServer.stop`` before ``start``: socketserver's ``shutdown``
    waits for a ``serve_forever`` loop that never ran (the CLI hung on SIGINT); stop must return
    and close the socket, and a started server must still stop."""
    s = LiveServer(Hub(history=4), "127.0.0.1", 0)
    t = threading.Thread(target=s.stop, daemon=True)
    t.start()
    t.join(5.0)
    assert not t.is_alive(), "stop() of a never-started server hangs"
    assert s.socket.fileno() == -1                               # the listening socket is closed
    s2 = LiveServer(Hub(history=4), "127.0.0.1", 0)
    s2.start()
    assert raw_request("127.0.0.1", s2.port, "/healthz")[0] == 200
    t2 = threading.Thread(target=s2.stop, daemon=True)
    t2.start()
    t2.join(5.0)
    assert not t2.is_alive()
