"""The TVM RPC tracker's wire protocol in pure Python (no ``tvm``): the timing agent joins a
tracker's pool of boards, and the host asks the tracker for a free agent.

Wire format (the tracker of ``python -m tvm.exec.rpc_tracker``): a TCP connection opens with the
tracker magic (``0x2F271``, little-endian int32) sent and echoed; then every message is a
little-endian int32 length and that many bytes of JSON, ``[code, args...]``, answered by one JSON
message. The codes used here:

* ``UPDATE_INFO {"key": "server:KEY", "addr": [custom_addr, port], ...}``: describes the
  connection (the tracker lists connections whose key starts with ``server`` in its summary,
  and drops their pool entries when the connection closes);
* ``PUT KEY [port, matchkey] custom_addr``: one free resource of KEY; ``matchkey`` is
  ``KEY:random``, the one-time ticket a client must present (a ``custom_addr`` of null means
  the address the tracker sees the connection come from);
* ``GET_PENDING_MATCHKEYS``: which of this connection's matchkeys are still free in the pool;
* ``REQUEST KEY user priority``: blocks until a resource of KEY is free, then answers
  ``[SUCCESS, [host, port, matchkey]]`` and takes that entry out of the pool;
* ``SUMMARY``: ``[SUCCESS, {"queue_info": {KEY: {"free", "pending"}}, "server_info": [...]}]``;
* ``PING``.

A resource serves one session per matchkey, then registers a new one (PUT) — that is how it
goes back into the pool. When a matchkey was handed out but no session came within a few
seconds (the client gave up), the resource registers a fresh one; when the tracker connection
drops (the tracker restarted), it reconnects and registers again.

**Agents and TVM RPC servers never share a pool.** A timing agent of board key ``K`` registers
under ``edgeuq-agent.K`` (:func:`agent_pool_key`), a TVM RPC server under ``K``: a TVM client asking
for ``K`` is never handed an agent, and the host asking for agents of ``K`` asks for
``edgeuq-agent.K``. A TVM client that still reaches an agent (it asked for an agent key) gets the
RPC handshake's "key mismatch" answer at once; an agent request that reaches something else than
an agent (a TVM server registered under an agent key) is named as such by the host.
"""
from __future__ import annotations

import json
import random
import socket
import struct
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from .errors import InputError, RuntimeUQError

__all__ = ["AGENT_KEY_PREFIX", "TRACKER_MAGIC", "RPC_MAGIC", "RPC_CODE_MISMATCH", "Code", "TrackerError",
           "TrackerConnection", "TrackerLink", "agent_pool_key", "is_agent_pool_key", "parse_tracker", "recv_exact"]

TRACKER_MAGIC = 0x2F271   # the tracker's (control plane) handshake
RPC_MAGIC = 0xFF271       # a TVM RPC session's (data plane) handshake
RPC_CODE_MISMATCH = RPC_MAGIC + 2   # "no server matches your key": what an agent answers a TVM client
AGENT_KEY_PREFIX = "edgeuq-agent."
_MAX_MSG = 1 << 20        # tracker messages are small JSON lists (the tracker's own bound too)


class Code:
    """The tracker's message codes."""

    FAIL = -1
    SUCCESS = 0
    PING = 1
    STOP = 2
    PUT = 3
    REQUEST = 4
    UPDATE_INFO = 5
    SUMMARY = 6
    GET_PENDING_MATCHKEYS = 7


class TrackerError(RuntimeUQError):
    """The tracker could not be reached, answered out of protocol, or had no free resource in time."""


def recv_exact(sock: socket.socket, n: int, peer: str = "the peer") -> bytes:
    """Exactly ``n`` bytes from ``sock`` (ConnectionResetError naming ``peer`` if it closes first)."""
    parts, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 65536))
        if not chunk:
            raise ConnectionResetError(f"{peer} closed the connection")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def parse_tracker(text: str, what: str = "--tracker") -> Tuple[str, int]:
    host, sep, port = str(text).strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"{what} must be HOST:PORT (e.g. 127.0.0.1:9190), got {text!r}")
    return host, int(port)


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not key.strip() or any(c.isspace() for c in key):
        raise InputError(f"--key must be a non-empty board key without spaces, got {key!r}")
    return key


def agent_pool_key(key: str) -> str:
    """The tracker key timing agents of board key ``key`` register under (``edgeuq-agent.KEY``);
    a key that already carries the prefix is returned as is."""
    key = _check_key(key)
    return key if key.startswith(AGENT_KEY_PREFIX) else AGENT_KEY_PREFIX + key


def is_agent_pool_key(key: str) -> bool:
    return str(key).startswith(AGENT_KEY_PREFIX)


class TrackerConnection:
    """One connection to a tracker (handshake done); ``with TrackerConnection("HOST:PORT") as t:``."""

    def __init__(self, address: str, timeout_s: float = 10.0) -> None:
        self.address = address
        host, port = parse_tracker(address)
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout_s)
        except OSError as exc:
            raise TrackerError(f"cannot reach the tracker at {address}: {exc}") from None
        try:
            self.sock.sendall(struct.pack("<i", TRACKER_MAGIC))
            magic = struct.unpack("<i", self._recv(4))[0]
        except OSError as exc:
            self.close()
            raise TrackerError(f"{address} did not complete the tracker handshake: {exc}") from None
        if magic != TRACKER_MAGIC:
            self.close()
            raise TrackerError(f"{address} is not a TVM RPC tracker (handshake answered {magic:#x})")

    def __enter__(self) -> "TrackerConnection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def settimeout(self, timeout_s: Optional[float]) -> None:
        self.sock.settimeout(timeout_s)

    def _recv(self, n: int) -> bytes:
        return recv_exact(self.sock, n, "the tracker")

    def call(self, *msg: Any) -> Any:
        """Send ``[code, args...]``, return the tracker's answer (socket errors propagate as OSError)."""
        data = json.dumps(list(msg)).encode("utf-8")
        self.sock.sendall(struct.pack("<i", len(data)) + data)
        size = struct.unpack("<i", self._recv(4))[0]
        if not 0 < size <= _MAX_MSG:
            raise TrackerError(f"tracker {self.address} sent a message of {size} bytes")
        return json.loads(self._recv(size).decode("utf-8"))

    def _ok(self, answer: Any, what: str) -> None:
        if answer != Code.SUCCESS:
            raise TrackerError(f"tracker {self.address} refused {what}: {answer!r}")

    def ping(self) -> None:
        self._ok(self.call(Code.PING), "PING")

    def summary(self) -> Dict[str, Any]:
        answer = self.call(Code.SUMMARY)
        if not (isinstance(answer, list) and len(answer) == 2 and answer[0] == Code.SUCCESS):
            raise TrackerError(f"tracker {self.address} answered SUMMARY with {answer!r}")
        return answer[1]

    def update_info(self, info: Dict[str, Any]) -> None:
        self._ok(self.call(Code.UPDATE_INFO, info), "UPDATE_INFO")

    def put(self, key: str, port: int, matchkey: str, custom_addr: Optional[str]) -> None:
        self._ok(self.call(Code.PUT, key, [int(port), matchkey], custom_addr), "PUT")

    def pending_matchkeys(self) -> List[str]:
        return list(self.call(Code.GET_PENDING_MATCHKEYS))

    def request(self, key: str, user: str = "edgeuq", priority: int = 0,
                timeout_s: Optional[float] = None) -> Tuple[str, int, str]:
        """A free resource of ``key``: ``(host, port, matchkey)``. Waits up to ``timeout_s``
        (None: forever); on timeout raises ``socket.timeout`` (the connection is then unusable:
        close it, which withdraws the request)."""
        self.sock.settimeout(timeout_s)
        answer = self.call(Code.REQUEST, key, user, int(priority))
        if not (isinstance(answer, list) and len(answer) == 2 and answer[0] == Code.SUCCESS
                and isinstance(answer[1], list) and len(answer[1]) == 3):
            raise TrackerError(f"tracker {self.address} answered REQUEST {key!r} with {answer!r}")
        host, port, matchkey = answer[1]
        return str(host), int(port), str(matchkey)


class TrackerLink:
    """Keeps a resource (here: the timing agent listening on ``port``) in a tracker's pool of
    ``key``, from a daemon thread: registers a matchkey, serves one session per matchkey
    (:meth:`claim` / :meth:`release`), registers a fresh one after each session, after a matchkey
    handed out but never used for ``unmatched_s`` seconds, and after the tracker comes back.

    ``info``: extra fields of the connection's summary entry (e.g. what kind of resource it is).
    """

    def __init__(self, tracker: str, key: str, port: int, custom_addr: Optional[str] = None, *,
                 info: Optional[Dict[str, Any]] = None, ping_s: float = 1.0, unmatched_s: float = 6.0,
                 retry_s: float = 1.0, log: Any = None) -> None:
        parse_tracker(tracker)
        self.tracker, self.key, self.port, self.custom_addr = tracker, _check_key(key), int(port), custom_addr
        self.info = dict(info or {})
        self.ping_s, self.unmatched_s, self.retry_s = float(ping_s), float(unmatched_s), float(retry_s)
        self._log = log or (lambda m: None)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._matchkey: Optional[str] = None   # the ticket now in the pool (or handed out)
        self._busy = False                     # a session is being served
        self._registered = threading.Event()   # set while a matchkey of ours is registered
        self.sessions = 0
        self._thread = threading.Thread(target=self._run, name=f"tracker-link-{key}", daemon=True)

    # ------------------------------------------------------------------ sessions
    def claim(self, matchkey: Optional[str]) -> bool:
        """Start the session of ``matchkey``: True when it is the ticket the tracker handed out
        (and no session runs); the ticket is then spent."""
        import hmac

        with self._lock:
            if self._busy or not matchkey or self._matchkey is None:
                return False
            if not hmac.compare_digest(str(matchkey).encode(), self._matchkey.encode()):
                return False
            self._busy, self._matchkey = True, None
            self._registered.clear()
            return True

    def release(self) -> None:
        """The session ended: back into the pool with a fresh matchkey."""
        with self._lock:
            self._busy = False
            self.sessions += 1
        self._wake.set()

    def wait_registered(self, timeout_s: float) -> bool:
        return self._registered.wait(timeout_s)

    # ------------------------------------------------------------------ thread
    def start(self) -> "TrackerLink":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def _new_matchkey(self) -> str:
        return f"{self.key}:{random.SystemRandom().random()}"

    def _run(self) -> None:
        outage = False  # said once per outage, not on every retry
        while not self._stop.is_set():
            conn = None
            try:
                conn = TrackerConnection(self.tracker, timeout_s=10.0)
                conn.update_info({**self.info, "key": "server:" + self.key, "addr": [self.custom_addr, self.port]})
                self._log(f"registered with the tracker {self.tracker} under key {self.key}")
                outage = False
                self._serve(conn)
            except (OSError, TrackerError, ValueError) as exc:  # the tracker went away: reconnect
                with self._lock:
                    if not self._busy:
                        self._matchkey = None
                    self._registered.clear()
                if not self._stop.is_set():
                    if not outage:
                        self._log(f"tracker {self.tracker}: {exc}; retrying every {self.retry_s:g} s")
                    outage = True
                    self._stop.wait(self.retry_s)
            finally:
                if conn is not None:
                    conn.close()

    def _serve(self, conn: TrackerConnection) -> None:
        unmatched_since: Optional[float] = None
        with self._lock:
            if not self._busy:
                self._matchkey = None   # a ticket of an earlier connection is gone with it
        while not self._stop.is_set():
            with self._lock:
                busy, current = self._busy, self._matchkey
            if not busy and current is None:   # (re-)enter the pool
                fresh = self._new_matchkey()
                with self._lock:
                    self._matchkey = fresh
                conn.put(self.key, self.port, fresh, self.custom_addr)
                self._registered.set()
                unmatched_since = None
            self._wake.wait(self.ping_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            with self._lock:
                busy, current = self._busy, self._matchkey
            pending = conn.pending_matchkeys()   # also notices a tracker that went away
            if busy or current is None:
                continue
            if current in pending:
                unmatched_since = None
            elif unmatched_since is None:       # handed out: the client should come now
                unmatched_since = time.monotonic()
            elif time.monotonic() - unmatched_since > self.unmatched_s:
                with self._lock:   # handed out but never used: the client gave up; a fresh ticket
                    if not self._busy and self._matchkey == current:
                        self._matchkey = None
                        self._registered.clear()
                self._log(f"matchkey handed out but unused for {self.unmatched_s:g} s: registering a fresh one")
