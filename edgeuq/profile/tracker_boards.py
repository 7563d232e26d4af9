"""The servers of a TVM RPC tracker key: how many are free, one session on a free one (and which
server answered), and a survey of them all (which declare themselves emulated). Used by the fleet
profile (:mod:`edgeuq.profile.fleet`) and by tuning through a tracker (:mod:`edgeuq.lower.tvm.tune`),
which refuses a key with an emulated server."""
from __future__ import annotations

import contextlib
import gc
import socket
import time
from typing import Any, Iterator, List, Optional, Tuple

from .tvm_rpc import remote_emulation

__all__ = ["free_boards", "request_board", "survey_boards"]


def free_boards(tracker: str, key: str) -> int:
    """How many servers of ``key`` the tracker lists as free now."""
    from .tvm_rpc import parse_address, tvm_server_key

    parse_address(tracker, "--tracker")
    tvm_server_key(key)
    with _tracker(tracker, 10.0) as conn:
        summary = conn.summary()
    return int(summary.get("queue_info", {}).get(key, {}).get("free", 0))


def request_board(tracker: str, key: str, session_timeout: int = 600,
                  wait_s: float = 60.0) -> Tuple[Any, str]:
    """One session on a free server of ``key`` through the tracker, and the server's address.

    TVM's ``TrackerSession.request`` does the same but does not say which server answered; the
    tracker's reply carries it (``[SUCCESS, [host, port, matchkey]]``), so this asks through the
    runtime's tracker client (:class:`edgeuq_runtime.tracker.TrackerConnection`) and connects with
    ``rpc.connect(host, port, matchkey)``."""
    from tvm import rpc

    from .tvm_rpc import parse_address, tvm_server_key

    parse_address(tracker, "--tracker")
    tvm_server_key(key)
    with _tracker(tracker, wait_s) as conn:
        try:
            url, sport, matchkey = conn.request(key, user="", priority=1, timeout_s=wait_s)
        except socket.timeout as exc:
            raise RuntimeError(f"tracker {tracker}: no free server of key {key!r} within {wait_s:g} s") from exc
    return rpc.connect(url, sport, matchkey, session_timeout=session_timeout), f"{url}:{sport}"


@contextlib.contextmanager
def _tracker(tracker: str, timeout_s: float) -> Iterator[Any]:
    """The runtime's tracker client; its errors become RuntimeError (what these helpers raise)."""
    from edgeuq_runtime.tracker import TrackerConnection, TrackerError

    try:
        with TrackerConnection(tracker, timeout_s=timeout_s) as conn:
            yield conn
    except TrackerError as exc:
        raise RuntimeError(str(exc)) from exc


def survey_boards(tracker: str, key: str, wait_s: float = 60.0,
                  settle_s: float = 30.0) -> List[Tuple[str, Optional[str]]]:
    """``(address, emulator or None)`` of every free server of ``key``: each is requested once
    (held, so the tracker hands the next request another server), asked whether it declares itself
    emulated (:func:`remote_emulation`), and released; returns once the tracker lists them all free
    again (at most ``settle_s``), so a caller can hand the key to another client at once."""
    n = free_boards(tracker, key)
    sessions: List[Tuple[Any, str]] = []
    try:
        for _ in range(n):
            sessions.append(request_board(tracker, key, session_timeout=60, wait_s=wait_s))
        found = [(server, remote_emulation(session)) for session, server in sessions]
    finally:
        del sessions[:]
        gc.collect()
    deadline = time.monotonic() + settle_s
    while free_boards(tracker, key) < len(found) and time.monotonic() < deadline:
        time.sleep(0.2)
    return found
