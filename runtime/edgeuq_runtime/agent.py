"""The board's timing agent: ``python -m edgeuq_runtime agent`` times a bundle's stages on the
board with the runtime's own harness and returns the report as JSON (numpy / ONNX Runtime only).

TVM RPC times only TVM libraries; the agent times every executor (ONNX Runtime, TVM, numpy
stages) exactly as ``edgeuq profile`` does on a host (:mod:`edgeuq_runtime.profiling`,
:mod:`edgeuq_runtime.harness`), so ``edgeuq profile --agent`` and placement measure ONNX
Runtime candidates on the board too.

Security (it runs what it is sent, so it refuses almost everything):

* binds ``127.0.0.1`` by default; reach it through an SSH tunnel (``ssh -L``), as for TVM RPC;
* every request needs the shared token (``Authorization: Bearer TOKEN``; compared in
  constant time with ``hmac.compare_digest``) — from ``$EDGEUQ_AGENT_TOKEN`` or a private
  token file (mode 0600; created on first start); a wrong or missing token is refused
  before the body is read;
* it accepts only a bundle it verifies: the body is the runtime's deterministic bundle tar
  (:func:`edgeuq_runtime.ota.archive.pack_bundle`; members checked before a byte is
  extracted: plain files at safe relative paths), unpacked into a private temporary folder
  and loaded with :func:`edgeuq_runtime.bundle.load_bundle` (``verify=True``: the manifest
  and the sha256 of every file); with ``digest=`` the bundle's digest must also be the one
  the host sent. Nothing else is ever run: no code, no paths, no other routes.
* one request at a time (timings never overlap), bounded body size and parameters.

Protocol: ``POST /v1/profile?samples=1,8,32&warmup=5&repeats=50&seed=0&digest=SHA[&raw=1]`` with the
tar as body (``raw=1``: each stage's statistics also list every timed call, ``samples_ms``) -> ``200`` and the JSON report (``stages``, ``end_to_end``, ``backends``,
``notes``, ``environment``, ``bundle_digest``); errors are JSON ``{"error": ...}`` with
401 (token), 413 (too large), 422 (bundle refused / bad parameters), 404 (route).
``GET /v1/health`` -> ``{"ok", "agent", "machine", "hostname", "cpu_flags", "cpu_vendor", "pool"}``: the
board's CPU feature flags and vendor (``/proc/cpuinfo``; null where unreadable), so the host's
placement skips candidates compiled for an ISA the board lacks and its TVM builds take the tuning
database re-timed on that vendor's CPUs; ``pool``: ``{"tracker", "key"}`` when the agent
serves a tracker's pool, else null.

Board farm (``--tracker HOST:PORT --key KEY``): the agent also joins the TVM RPC tracker's pool
under ``edgeuq-agent.KEY`` (:mod:`edgeuq_runtime.tracker`; never under ``KEY``, the TVM RPC
servers' pool). It then serves only sessions the tracker handed out: a ``POST /v1/profile``
must carry the matchkey the tracker gave the host (``X-Edgeuq-Match``; one request per
matchkey, refused with 409 otherwise), and after each one the agent goes back into the pool
with a fresh matchkey. The token is required exactly as without a tracker. A TVM RPC client
that reaches the agent gets the RPC handshake's "key mismatch" code at once.
"""
from __future__ import annotations

import contextlib
import hmac
import json
import os
import platform
import socket
import struct
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

from .cpuinfo import cpu_flags as board_cpu_flags
from .cpuinfo import cpu_vendor as board_cpu_vendor
from .errors import InputError, RuntimeUQError
from .tracker import RPC_CODE_MISMATCH, RPC_MAGIC, TrackerLink, agent_pool_key, recv_exact

__all__ = ["AgentServer", "agent_in_thread", "agent_token", "profile_bundle_bytes", "DEFAULT_AGENT_BIND", "TOKEN_ENV",
           "MATCH_HEADER", "MAX_REPEATS", "MAX_WARMUP"]

DEFAULT_AGENT_BIND = "127.0.0.1:8790"
TOKEN_ENV = "EDGEUQ_AGENT_TOKEN"
MAX_REPEATS = 10_000
MAX_WARMUP = 1_000
_MAX_BODY = 512 << 20
_RPC_HANDSHAKE_S = 5.0  # seconds a TVM RPC client has to send its key before it is answered
_RPC_KEY_MAX = 4096     # longest key read from a TVM RPC client's handshake (TVM's keys are short)
MATCH_HEADER = "X-Edgeuq-Match"   # the tracker's matchkey, in pool mode


def agent_token(token_file: Optional[Path]) -> Tuple[str, str]:
    """(token, where it came from): ``$EDGEUQ_AGENT_TOKEN`` if set, else the token file
    (created with mode 0600 when missing)."""
    from .serve.server import load_or_create_token

    env = os.environ.get(TOKEN_ENV)
    if env is not None:
        if len(env.strip()) < 16:
            raise InputError(f"${TOKEN_ENV} holds no usable token (under 16 characters)")
        return env.strip(), f"${TOKEN_ENV}"
    if token_file is None:
        raise InputError(f"no token: set ${TOKEN_ENV} or give --token-file PATH")
    token, created = load_or_create_token(Path(token_file))
    return token, f"{token_file}" + (" (created, mode 0600)" if created else "")


def _int(params: Dict[str, Any], name: str, default: int, least: int, most: int) -> int:
    raw = params.get(name, [str(default)])[0]
    if not raw.strip().isdigit() or len(raw) > 9:
        raise InputError(f"parameter {name} must be an integer in [{least}, {most}], got {raw[:40]!r}")
    v = int(raw)
    if not least <= v <= most:
        raise InputError(f"parameter {name} must be in [{least}, {most}], got {v}")
    return v


def profile_bundle_bytes(data: bytes, *, samples: Tuple[int, ...], warmup: int, repeats: int, seed: int = 0,
                         digest: Optional[str] = None, raw: bool = False) -> Dict[str, Any]:
    """Unpack a bundle tar into a private temporary folder, verify it, time its stages here."""
    from .bundle import load_bundle
    from .ota.archive import unpack_bundle
    from .ota.errors import UpdateRefused
    from .profiling import StageProfiler, profile_host

    try:
        files = unpack_bundle(data, max_total=_MAX_BODY)
    except UpdateRefused as exc:
        raise InputError(f"bundle refused: {exc}") from None
    with tempfile.TemporaryDirectory(prefix="edgeuq-agent-") as tmp:
        root = Path(tmp) / "bundle"
        root.mkdir(mode=0o700)
        for name, content in files.items():  # names checked by unpack_bundle: safe relative paths
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        bundle = load_bundle(root, verify=True)  # the manifest and the sha256 of every file it lists
        if digest is not None and not hmac.compare_digest(digest.encode(), str(bundle.digest).encode()):
            raise InputError(f"bundle refused: its digest {bundle.digest} is not the one sent ({digest[:64]})")
        t0 = time.perf_counter()
        profiler = StageProfiler(root, threads=1, seed=seed)
        prof = profile_host(profiler, samples, warmup=warmup, repeats=repeats, seed=seed, keep_samples=raw)
        return {"format": "edgeuq-agent-profile/1", "bundle_digest": bundle.digest, "samples": list(samples),
                "warmup": warmup, "repeats": repeats, "seed": seed, "stages": prof.stages,
                "end_to_end": prof.end_to_end, "backends": prof.backends, "notes": list(prof.notes),
                "environment": {**prof.environment, "hostname": socket.gethostname(), "cores": os.cpu_count(),
                                "harness": "edgeuq_runtime.harness", "threads": 1,
                                "measured_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                "agent_seconds": round(time.perf_counter() - t0, 3)}}


class _Handler(BaseHTTPRequestHandler):
    server: "AgentServer"
    protocol_version = "HTTP/1.1"
    server_version = "edgeuq-agent"
    sys_version = ""
    timeout = 120  # seconds a silent connection may hold the (one-request-at-a-time) agent

    def handle(self) -> None:
        """A TVM RPC client (it asked the tracker for an agent key) opens with the RPC magic, not
        HTTP: answer the handshake's "key mismatch" at once instead of waiting for a request line."""
        try:
            head = self.connection.recv(4, socket.MSG_PEEK)
        except OSError:
            return
        if head == struct.pack("<i", RPC_MAGIC):
            self._refuse_rpc_client()
            if self.server.verbose:
                self.log_message("refused a TVM RPC client: this is an edgeuq timing agent, not an RPC server")
            return
        super().handle()

    def _refuse_rpc_client(self) -> None:
        """Read the client's whole handshake (magic, key length, key: what TVM's own server reads),
        then answer "key mismatch" and close the sending side. Answering before the key has arrived
        and closing with the client's bytes unread resets the connection: the client then sees a
        broken pipe instead of the answer."""
        conn = self.connection
        with contextlib.suppress(OSError):
            conn.settimeout(_RPC_HANDSHAKE_S)
            recv_exact(conn, 4, "the TVM RPC client")                     # the magic, peeked so far
            keylen = struct.unpack("<i", recv_exact(conn, 4, "the TVM RPC client"))[0]
            if 0 <= keylen <= _RPC_KEY_MAX:
                recv_exact(conn, keylen, "the TVM RPC client")
            conn.sendall(struct.pack("<i", RPC_CODE_MISMATCH))
            conn.shutdown(socket.SHUT_WR)

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet unless asked
        if self.server.verbose:
            super().log_message(fmt, *args)

    def _send(self, code: int, doc: Dict[str, Any]) -> None:
        body = (json.dumps(doc) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def _authorized(self) -> bool:
        given = self.headers.get("Authorization", "")
        given = given[7:] if given.startswith("Bearer ") else ""
        return hmac.compare_digest(given.encode("utf-8", "replace"), self.server.token.encode("utf-8"))

    def do_GET(self) -> None:  # noqa: N802
        if not self._authorized():
            return self._send(401, {"error": "token required"})
        if urlsplit(self.path).path == "/v1/health":
            flags = board_cpu_flags()
            pool = self.server.pool
            return self._send(200, {"ok": True, "agent": "edgeuq_runtime", "machine": platform.machine(),
                                    "hostname": socket.gethostname(),
                                    "cpu_flags": None if flags is None else sorted(flags),
                                    "cpu_vendor": board_cpu_vendor(),
                                    "pool": None if pool is None else {"tracker": pool.tracker, "key": pool.key}})
        return self._send(404, {"error": "no such route"})

    def do_POST(self) -> None:  # noqa: N802
        if not self._authorized():  # before reading one byte of the body
            return self._send(401, {"error": "token required"})
        url = urlsplit(self.path)
        if url.path != "/v1/profile":
            return self._send(404, {"error": "no such route"})
        length = self.headers.get("Content-Length", "")
        if not length.isdigit():
            return self._send(411, {"error": "Content-Length required"})
        if int(length) > self.server.max_body:
            return self._send(413, {"error": f"bundle larger than {self.server.max_body} bytes"})
        pool = self.server.pool
        if pool is not None and not pool.claim(self.headers.get(MATCH_HEADER)):
            return self._send(409, {"error": f"this agent serves the pool {pool.key} of the tracker {pool.tracker}: "
                                             "ask the tracker for it (the request needs the matchkey the tracker "
                                             "handed out; this one is missing, stale or already used)"})
        try:
            return self._profile(url, int(length))
        finally:
            if pool is not None:
                pool.release()  # back into the pool with a fresh matchkey

    def _profile(self, url: Any, length: int) -> None:
        data = self.rfile.read(length)
        try:
            from .manifest import MAX_SAMPLES

            params = parse_qs(url.query)
            raw = params.get("samples", ["1,8,32"])[0].split(",")
            samples = tuple(_int({"samples": [s]}, "samples", 1, 1, MAX_SAMPLES) for s in raw if s)
            if not samples:
                raise InputError("parameter samples must list at least one S")
            warmup = _int(params, "warmup", 5, 0, MAX_WARMUP)
            repeats = _int(params, "repeats", 50, 1, MAX_REPEATS)
            seed = _int(params, "seed", 0, 0, 2**31 - 1)
            digest = params.get("digest", [None])[0]
            raw = _int(params, "raw", 0, 0, 1) == 1
            doc = profile_bundle_bytes(data, samples=samples, warmup=warmup, repeats=repeats, seed=seed,
                                       digest=digest, raw=raw)
        except RuntimeUQError as exc:  # bad bundle, integrity, bad parameters: refused, named
            return self._send(422, {"error": f"{type(exc).__name__}: {exc}"})
        except MemoryError:
            return self._send(500, {"error": "out of memory on the board"})
        except Exception as exc:  # an unexpected failure is reported to the host, named as such
            return self._send(500, {"error": f"internal error {type(exc).__name__}: {exc}"})
        return self._send(200, doc)


class AgentServer(HTTPServer):
    """One request at a time (timings never overlap). ``AgentServer(("127.0.0.1", 0), token)``."""

    daemon_threads = True

    def __init__(self, address: Tuple[str, int], token: str, *, verbose: bool = False,
                 max_body: int = _MAX_BODY) -> None:
        if not isinstance(token, str) or len(token) < 16:
            raise InputError("the agent's token must be at least 16 characters")
        self.token, self.verbose, self.max_body = token, verbose, int(max_body)
        self.pool: Optional[TrackerLink] = None
        super().__init__(address, _Handler)

    def join_pool(self, tracker: str, key: str, custom_addr: Optional[str] = None, **kwargs: Any) -> TrackerLink:
        """Join the tracker's pool of board key ``key`` (as ``edgeuq-agent.KEY``) from a daemon
        thread; :meth:`leave_pool` (or ``server_close``) leaves it."""
        if self.pool is not None:
            raise InputError(f"the agent already serves the pool {self.pool.key} of {self.pool.tracker}")
        kwargs.setdefault("log", (lambda m: print(f"agent: {m}", flush=True)) if self.verbose else None)
        self.pool = TrackerLink(tracker, agent_pool_key(key), self.server_address[1], custom_addr,
                                info={"edgeuq": "timing-agent"}, **kwargs).start()
        return self.pool

    def leave_pool(self) -> None:
        if self.pool is not None:
            self.pool.stop()

    def server_close(self) -> None:
        self.leave_pool()
        super().server_close()


@contextlib.contextmanager
def agent_in_thread(token: str, host: str = "127.0.0.1", port: int = 0, *, tracker: Optional[str] = None,
                    key: Optional[str] = None, **kwargs: Any) -> Iterator[str]:
    """An :class:`AgentServer` serving from a daemon thread (tests, benches, notebooks): yields its
    ``"HOST:PORT"`` (``port=0``: a free one) and shuts it down, socket closed, on leaving the block.
    ``tracker``/``key``: it also joins that tracker's pool of agents of ``key`` (and leaves it)."""
    srv = AgentServer((host, port), token, **kwargs)
    if (tracker is None) != (key is None):
        srv.server_close()
        raise InputError("give both tracker and key, or neither")
    if tracker is not None:
        srv.join_pool(tracker, key)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"{srv.server_address[0]}:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(timeout=10)


def add_agent_parser(sub: Any) -> None:
    p = sub.add_parser("agent", help="serve timing requests from `edgeuq profile --agent` (token, verified "
                                     "bundles only, 127.0.0.1 by default)")
    p.add_argument("--bind", default=DEFAULT_AGENT_BIND,
                   help=f"HOST:PORT (default {DEFAULT_AGENT_BIND}; reach it through an SSH tunnel)")
    p.add_argument("--token-file", default=str(Path.home() / ".config" / "edgeuq" / "agent.token"),
                   help=f"private token file (mode 0600, created if missing); ${TOKEN_ENV} overrides it")
    p.add_argument("--tracker", metavar="HOST:PORT", default=None,
                   help="also join this TVM RPC tracker's pool (as edgeuq-agent.KEY; then only sessions the "
                        "tracker hands out are served)")
    p.add_argument("--key", default=None, help="the board key of the pool (with --tracker)")
    p.add_argument("--custom-addr", default=None,
                   help="the address hosts reach this agent at, as the tracker announces it (default: the "
                        "address the tracker sees; e.g. a tunnel's end)")
    p.add_argument("--verbose", action="store_true", help="log each request")
    p.set_defaults(func=_run_agent)


def _run_agent(args: Any) -> int:
    import sys

    from .serve.server import is_local_bind, parse_bind

    host, port = parse_bind(args.bind)
    if (args.tracker is None) != (args.key is None):
        raise InputError("--tracker and --key go together (the tracker's address and the board key of the pool)")
    token, source = agent_token(Path(args.token_file) if args.token_file else None)
    srv = AgentServer((host, port), token, verbose=args.verbose)
    if not is_local_bind(host):
        print(f"warning: the agent listens on {host}, not 127.0.0.1: anyone who can reach it and has the token "
              "runs bundles here; prefer 127.0.0.1 and an SSH tunnel", file=sys.stderr)
    print(f"edgeuq_runtime agent on {srv.server_address[0]}:{srv.server_address[1]} (token from {source})",
          flush=True)
    if args.tracker is not None:
        link = srv.join_pool(args.tracker, args.key, args.custom_addr,
                             log=lambda m: print(f"agent: {m}", file=sys.stderr, flush=True))
        print(f"edgeuq_runtime agent joins the pool {link.key} of the tracker {args.tracker} "
              f"(announced as {args.custom_addr or 'the address the tracker sees'}:{srv.server_address[1]})",
              flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
    return 0
