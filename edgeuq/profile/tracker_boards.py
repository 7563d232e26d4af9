"""The servers of a TVM RPC tracker key: how many are free, one session on a free one (and which
server answered), and a survey of them all (which declare themselves emulated). Used by the fleet
profile (:mod:`edgeuq.profile.fleet`) and by tuning through a tracker (:mod:`edgeuq.lower.tvm.tune`),
which refuses a key with an emulated server."""
from __future__ import annotations

import gc
import socket
import struct
import time
from typing import Any, List, Optional, Tuple

from .tvm_rpc import remote_emulation

__all__ = ["free_boards", "request_board", "survey_boards"]


def free_boards(tracker: str, key: str) -> int:
    """How many servers of ``key`` the tracker lists as free now."""
    from tvm import rpc

    from .tvm_rpc import parse_address, tvm_server_key

    host, port = parse_address(tracker, "--tracker")
    tvm_server_key(key)
    summary = rpc.connect_tracker(host, port).summary()
    return int(summary.get("queue_info", {}).get(key, {}).get("free", 0))


def request_board(tracker: str, key: str, session_timeout: int = 600,
                  wait_s: float = 60.0) -> Tuple[Any, str]:
    """One session on a free server of ``key`` through the tracker, and the server's address.

    TVM's ``TrackerSession.request`` does the same but does not say which server answered; the
    tracker's reply carries it (``[SUCCESS, [host, port, matchkey]]``), so this speaks the same
    two messages and connects with ``rpc.connect(host, port, matchkey)``."""
    from tvm import rpc
    from tvm.rpc import base

    from .tvm_rpc import parse_address, tvm_server_key

    host, port = parse_address(tracker, "--tracker")
    tvm_server_key(key)
    sock = socket.create_connection((host, port), timeout=wait_s)
    try:
        sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
        magic = struct.unpack("<i", base.recvall(sock, 4))[0]
        if magic != base.RPC_TRACKER_MAGIC:
            raise RuntimeError(f"{tracker} is not a TVM RPC tracker")
        base.sendjson(sock, [base.TrackerCode.REQUEST, key, "", 1])
        try:
            value = base.recvjson(sock)
        except socket.timeout as exc:
            raise RuntimeError(f"tracker {tracker}: no free server of key {key!r} within {wait_s:g} s") from exc
    finally:
        sock.close()
    if value[0] != base.TrackerCode.SUCCESS:
        raise RuntimeError(f"tracker {tracker}: request for key {key!r} failed: {value!r}")
    url, sport, matchkey = value[1]
    return rpc.connect(url, sport, matchkey, session_timeout=session_timeout), f"{url}:{sport}"


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
