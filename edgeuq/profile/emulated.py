"""A TVM RPC server under qemu-aarch64 in the local aarch64 Python sysroot: profile an aarch64
bundle's libraries without the board. Reports made this way are labelled ``"emulated"``:
qemu translates every instruction, so **its times are not board times** (they say only
that the libraries load and run on the emulated CPU, and give relative costs at best).

The sysroot is the one the TVM lowering's qemu checks use (``scripts/setup_toolchains.sh``
-> ``.toolchains/aarch64-py311``). ``tvm.rpc.Server`` would start its worker as a fresh
interpreter, which user-mode qemu cannot exec without binfmt_misc, so the server state is
created in the emulated process itself (one forked child per session, as TVM does).
"""
from __future__ import annotations

import os
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any, List, Optional

__all__ = ["EmulatedServer", "emulated_note", "bundle_qemu_cpu"]

_SERVER_SCRIPT = r"""
import sys
import tvm
from tvm.rpc.server import PopenRPCServerState
# sessions are forked from this process, so they see this function: clients label the times emulated
tvm.register_global_func("edgeuq.rpc.emulated", lambda: sys.argv[4])
tracker = (sys.argv[5], int(sys.argv[6])) if len(sys.argv) > 6 else None
key = sys.argv[7] if len(sys.argv) > 7 else ""
state = PopenRPCServerState(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), tracker_addr=tracker, key=key,
                            silent=True)
print("EDGEUQ_RPC_PORT", state.port, flush=True)
state.thread.join()
"""
_STARTUP_S = 300  # importing TVM under qemu takes ~20 s on an idle 2-core host


def emulated_note(cpu: str) -> str:
    return (f"emulated: TVM RPC server under qemu-aarch64 (-cpu {cpu}) on this host; times are not board times "
            "(qemu translates every instruction)")


def bundle_qemu_cpu(bundle: Any) -> str:
    """The qemu CPU model for the aarch64 target the bundle's graphs were compiled for."""
    from ..catalog import get_target
    from ..lower.tvm.qemu import qemu_cpu

    targets = (bundle.manifest.metadata or {}).get("targets") or {}
    names = {str((t or {}).get("target")) for t in targets.values()} if isinstance(targets, dict) else set()
    if len(names) != 1 or "None" in names:
        raise ValueError(f"bundle {bundle.root}: its manifest does not name one compile target for its graphs "
                         f"(metadata.targets = {targets!r}); --emulate needs a bundle made by `edgeuq compile`")
    target = get_target(names.pop())
    if target.arch != "aarch64":
        raise ValueError(f"--emulate runs aarch64 bundles under qemu-aarch64; this bundle targets {target.name!r} "
                         f"({target.arch})")
    return qemu_cpu(target)


class EmulatedServer:
    """``with EmulatedServer("cortex-a72") as srv: connect(remote=f"127.0.0.1:{srv.port}")``.

    With ``tracker=(host, port)`` and ``key`` the server registers with a TVM RPC tracker like
    ``python -m tvm.exec.rpc_server --tracker ... --key ...``; every session can tell it is
    emulated (the global function ``edgeuq.rpc.emulated``), so its times are labelled so."""

    def __init__(self, cpu: str, host: str = "127.0.0.1", port: int = 19700, port_end: int = 19800,
                 tracker: Optional[tuple] = None, key: str = "") -> None:
        if (tracker is None) != (not key):
            raise ValueError("EmulatedServer: give both tracker=(host, port) and key, or neither")
        self.cpu, self.host, self.port_range = cpu, host, (port, port_end)
        self.tracker, self.key = tracker, key
        self.port: Optional[int] = None
        self._proc: Optional[subprocess.Popen] = None
        self._tmp: Optional[tempfile.TemporaryDirectory] = None

    def __enter__(self) -> "EmulatedServer":
        from ..lower.toolchain import require_tool
        from ..lower.tvm.qemu import aarch64_sysroot

        root = aarch64_sysroot()
        qemu = require_tool("qemu-aarch64-static", "run a TVM RPC server under user-mode emulation")
        self._tmp = tempfile.TemporaryDirectory(prefix="edgeuq-emulated-rpc-")
        script = Path(self._tmp.name) / "server.py"
        script.write_text(_SERVER_SCRIPT)
        env = dict(os.environ, PYTHONPATH=str(root / "site"))
        cmd: List[str] = [qemu, "-cpu", self.cpu, "-L", str(root), str(root / "usr" / "bin" / "python3.11"),
                          str(script), self.host, str(self.port_range[0]), str(self.port_range[1]),
                          f"qemu-aarch64 -cpu {self.cpu}"]
        if self.tracker is not None:
            cmd += [str(self.tracker[0]), str(self.tracker[1]), self.key]
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                      cwd=self._tmp.name)
        watchdog = threading.Timer(_STARTUP_S, self._proc.kill)  # a silent hang must not block forever
        watchdog.start()
        seen: List[str] = []
        assert self._proc.stdout is not None
        try:
            while True:
                line = self._proc.stdout.readline()
                if not line:
                    break
                seen.append(line.rstrip())
                if line.startswith("EDGEUQ_RPC_PORT"):
                    self.port = int(line.split()[1])
                    return self
        finally:
            watchdog.cancel()
        self.__exit__()
        raise RuntimeError(f"the emulated TVM RPC server did not start: {' | '.join(seen[-5:]) or 'no output'}")

    def __exit__(self, *exc: Any) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc is not None and self._proc.stdout is not None:
            self._proc.stdout.close()
        self._proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
