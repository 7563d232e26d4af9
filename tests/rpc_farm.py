"""A local board farm for tests: a TVM RPC tracker and RPC servers on 127.0.0.1, started as the
documented commands (``python -m tvm.exec.rpc_tracker``, ``python -m tvm.exec.rpc_server
--tracker ... --key ...``), each in its own process group, and always stopped (the whole group:
TVM's server forks one child per session).

    with Farm() as farm:
        farm.tracker_addr                    # "127.0.0.1:PORT"
        farm.add_servers("key", 2)           # blocks until the tracker lists both as free
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import List, Optional

__all__ = ["Farm", "free_port", "stop_process"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Terminate ``proc``'s process group (it was started with ``start_new_session=True``), then kill."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
    else:  # the leader is gone; children of the group may not be
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for f in (proc.stdout, proc.stderr):
        if f is not None:
            f.close()


class Farm:
    def __init__(self, startup_s: float = 300.0) -> None:
        import tempfile

        self.startup_s = startup_s
        self._logs = tempfile.TemporaryDirectory(prefix="edgeuq-farm-")
        self.procs: List[subprocess.Popen] = []
        self.tracker_port: Optional[int] = None
        self.server_ports: dict = {}

    @property
    def tracker_addr(self) -> str:
        return f"127.0.0.1:{self.tracker_port}"

    def _spawn(self, *args: str) -> subprocess.Popen:
        log = open(os.path.join(self._logs.name, f"{len(self.procs)}.log"), "wb")
        proc = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        log.close()
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        """The last lines of every farm process's output (for error messages)."""
        out = []
        for i, proc in enumerate(self.procs):
            with open(os.path.join(self._logs.name, f"{i}.log"), "rb") as f:
                tail = f.read().decode(errors="replace").strip().splitlines()[-3:]
            out.append(f"[{' '.join(proc.args[1:4])}] " + " | ".join(tail))
        return "\n".join(out)

    def summary(self) -> dict:
        from tvm import rpc

        return rpc.connect_tracker("127.0.0.1", self.tracker_port).summary()

    def free(self, key: str) -> int:
        return int(self.summary().get("queue_info", {}).get(key, {}).get("free", 0))

    def __enter__(self) -> "Farm":
        port = free_port()
        proc = self._spawn("-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port),
                           "--port-end", str(port + 1))
        self.tracker_port = port
        deadline = time.time() + self.startup_s
        while time.time() < deadline:
            if proc.poll() is not None:
                self.__exit__()
                raise RuntimeError(f"the TVM RPC tracker exited with {proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.3)
        self.__exit__()
        raise RuntimeError(f"the TVM RPC tracker did not listen on 127.0.0.1:{port} within {self.startup_s:g} s")

    def add_servers(self, key: str, n: int, wait: bool = True) -> List[int]:
        """Start ``n`` ``tvm.exec.rpc_server``s of ``key``; return their ports (with ``wait``, once
        the tracker lists all of them as free; else call :meth:`wait_free`)."""
        ports = []
        for _ in range(n):
            p = free_port()
            self._spawn("-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(p), "--port-end",
                        str(p + 1), "--tracker", self.tracker_addr, "--key", key)
            ports.append(p)
        self.server_ports.setdefault(key, []).extend(ports)
        if wait:
            self.wait_free(key, len(self.server_ports[key]))
        return ports

    def wait_free(self, key: str, n: int) -> None:
        deadline = time.time() + self.startup_s
        while time.time() < deadline:
            if self.free(key) >= n:
                return
            dead = [p for p in self.procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"a farm process exited early (exit codes {[p.returncode for p in dead]}):\n"
                                   + self.logs())
            time.sleep(0.3)
        raise RuntimeError(f"the tracker lists {self.free(key)} free server(s) of {key!r}, expected {n}, "
                           f"after {self.startup_s:g} s:\n" + self.logs())

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.procs):
            stop_process(proc)
        self.procs.clear()
        self._logs.cleanup()
