"""Helpers for the live-view tests: an HTTP client on raw sockets (so tests control every
byte of the request line), an SSE reader, a switchable simulated source and a stand-in
model for the browser test."""
from __future__ import annotations

import json
import math
import shutil
import socket
import sys
import threading
import time
from types import SimpleNamespace
from typing import Dict, List, Optional, Tuple

import numpy as np

from edgeuq_runtime.stream.decide import Decision
from edgeuq_runtime.stream.quality import BLOCKING_FLAGS, window_flags
from edgeuq_runtime.stream.sim import SimulatedSensor
from edgeuq_runtime.stream.sources import Chunk, Pacer, Source
from rt_helpers import in_ci


def browser_or_skip(what: str) -> Tuple[str, str]:
    """(chromium, chromedriver) paths for a browser test, else the test is skipped loudly naming what
    is missing (FAILED under CI=true). One copy for the live-view and the log-view browser tests."""
    import pytest

    missing = []
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install 'edgeuq-runtime[test]')")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium:
        missing.append("chromium (scripts/setup_browser.sh)")
    if not driver:
        missing.append("chromedriver (scripts/setup_browser.sh: Debian package chromium-driver)")
    if missing:
        msg = f"{what} browser test NOT RUN: missing " + ", ".join(missing)
        print("\n*** " + msg + " ***", file=sys.stderr)
        if in_ci():
            pytest.fail(msg + " (CI=true: a missing browser is a failure)")
        pytest.skip(msg)
    return chromium, driver


def headless_chromium(chromium: str, driver: str, window_size: str, extra: Tuple[str, ...] = ()):
    """A selenium driver of headless Chromium (no sandbox, no GPU) at ``window_size`` ("W,H")."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--window-size={window_size}", *extra):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(driver), options=opts)


def raw_request(host: str, port: int, target: str, method: str = "GET", headers: Optional[Dict[str, str]] = None,
                timeout: float = 5.0) -> Tuple[int, Dict[str, str], bytes]:
    """Send one request with ``target`` exactly as given; return (status, headers, body)."""
    hdrs = {"Host": f"{host}:{port}", "Connection": "close"}
    hdrs.update(headers or {})
    req = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(req.encode("latin-1"))
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and len(lines[0].split()) > 1 else 0
    h = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        h[k.strip().lower()] = v.strip()
    return status, h, body


class SSEReader:
    """A page stand-in: reads /events in a thread and keeps the parsed messages."""

    def __init__(self, host: str, port: int, query: str = "") -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.sendall(f"GET /events{query} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        self.messages: List[dict] = []
        self.closed = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        buf = b""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
                while b"\n\n" in buf:
                    block, buf = buf.split(b"\n\n", 1)
                    data = [line[6:] for line in block.split(b"\n") if line.startswith(b"data: ")]
                    if data:   # SSE: the data lines of one message, joined by newlines
                        self.messages.append(json.loads(b"\n".join(data)))
        except OSError:
            pass
        finally:
            self.closed.set()

    def wait_for(self, pred, timeout: float = 10.0) -> bool:
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            if any(pred(m) for m in list(self.messages)):
                return True
            time.sleep(0.02)
        return False

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class SwitchSource(Source):
    """Simulated sensor whose fault ``kind`` can be switched while streaming (one continuous
    sensor per kind), with injectable flat segments and stalls; real-time paced. Simulated."""

    simulated = True

    def __init__(self, rate: float, kind: str = "normal", realtime: bool = True, stall_timeout: float = 0.3) -> None:
        self.rate, self.kind, self.realtime = float(rate), kind, realtime
        self.stall_timeout = stall_timeout
        self._sensors = {k: SimulatedSensor(k, rate, seed=i) for i, k in enumerate(("normal", "inner_race"))}
        self.flat = 0
        self.paused = False
        self._pacer = Pacer(self.rate, realtime)
        self.description = "simulated sensor (switchable fault, real time)"

    def read(self, n: int) -> Chunk:
        if self.paused:
            time.sleep(self.stall_timeout)
            self._pacer.restart()
            return Chunk(np.zeros(0, np.float32), time.monotonic(), "stalled", "no data (test pause)")
        x = self._sensors[self.kind].read(n)
        if self.flat > 0:
            x[:] = 0.25
            self.flat -= n
        return self._pacer.release(x)


class RmsModel:
    """A stand-in diagnoser (NOT a trained model; named so in the test): class ``inner_race``
    when the window's RMS is above 0.3, else ``normal``; the real quality checks run first,
    so a flat window abstains with ``flatline_input``. Uncertainties are a deterministic
    function of the RMS margin (entropy of the two-class probability)."""

    classes = ("normal", "inner_race")

    def __init__(self, length: int, thresholds: Optional[dict] = None) -> None:
        manifest = SimpleNamespace(model_name="simulated-rms-model", model_version="0.0-test")
        self.rt = SimpleNamespace(input_length=length, class_names=self.classes, manifest=manifest)
        self.digest = "0" * 63 + "1"
        self.adaptive, self.samples = False, 1
        self.cfg = SimpleNamespace(s_max=1)
        th = thresholds or {"epistemic": 0.05, "density": 25.0, "combined": None, "false_alarm_rate": 0.05}
        self.cal = SimpleNamespace(cal=SimpleNamespace(abstain=SimpleNamespace(**th)))

    fail_next = 0

    def decide(self, window: np.ndarray) -> Decision:
        if self.fail_next > 0:
            self.fail_next -= 1
            raise RuntimeError("simulated model failure")
        flags = window_flags(window)
        blocking = [f for f in flags if f in BLOCKING_FLAGS]
        if blocking:
            return Decision(None, None, None, None, None, None, None, None, None, True, blocking, flags, 0)
        rms = float(np.sqrt(np.mean(np.square(window.astype(np.float64)))))
        p1 = 1.0 / (1.0 + math.exp(-(rms - 0.3) / 0.03))
        probs = [1 - p1, p1]
        i = int(p1 > 0.5)
        total = -sum(p * math.log(p) for p in probs if p > 0)
        epi = 0.1 * total
        density = 10.0 * abs(math.log(max(rms, 1e-9) / 0.15))   # distance from the typical RMS, in log units
        ab = self.cal.cal.abstain
        reasons = [name for name, v, t in (("epistemic", epi, ab.epistemic), ("density", density, ab.density))
                   if t is not None and v > t]
        return Decision(self.classes[i], i, probs[i], total, total - epi, epi, density, None, [self.classes[i]],
                        bool(reasons), reasons, flags, 1, probs)
