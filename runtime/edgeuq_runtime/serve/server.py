"""A read-only HTTP server for the live view (standard library only).

* binds 127.0.0.1 unless told otherwise; any other address (another loopback address
  included) needs the access token (``?token=`` or ``Authorization: Bearer``);
* GET only: ``/`` (the page), ``/events`` (Server-Sent Events), ``/state`` (a JSON
  snapshot), ``/healthz``; every other method is refused and nothing changes state;
* routes are an in-memory dict of exact names: no URL path is ever joined to a file
  system path (``/../``, ``%2e%2e``, absolute paths all give 404);
* each page has a bounded queue (see :class:`~edgeuq_runtime.serve.hub.Hub`); a slow one
  is dropped, a blocked socket write times out; the number of pages is bounded.
"""
from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import socket
import stat
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional, Tuple
from urllib.parse import parse_qs, urlsplit

from ..errors import InputError
from .hub import Hub
from .page import render_page, script_hash

__all__ = ["LiveServer", "parse_bind", "is_local_bind", "load_or_create_token", "DEFAULT_BIND"]

DEFAULT_BIND = "127.0.0.1:8080"
_LOCAL_HOSTS = ("127.0.0.1", "::1", "localhost")


def parse_bind(text: str) -> Tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``PORT`` (host 127.0.0.1)."""
    text = text.strip()
    if text.isdigit():
        host, port = "127.0.0.1", text
    elif text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InputError(f"--bind must be HOST:PORT (e.g. 127.0.0.1:8080), got {text!r}")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise InputError(f"--bind host must be an IP address or localhost, got {host!r}") from None
    return host, int(port)


def is_local_bind(host: str) -> bool:
    """Only 127.0.0.1, ::1 and localhost are local: any other address, other loopback
    addresses (127.0.0.2, …) included, needs the token."""
    return host in _LOCAL_HOSTS


def load_or_create_token(path: Path) -> Tuple[str, bool]:
    """The token stored at ``path`` (must be private: mode 0600, owned by us), or a new one
    written there with mode 0600. Returns ``(token, created)``."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        token = secrets.token_urlsafe(24)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        return token, True
    except OSError as exc:
        raise InputError(f"cannot read the token file {str(path)!r}: {exc}") from None
    with os.fdopen(fd, "r") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o077 or (hasattr(os, "getuid") and st.st_uid != os.getuid()):
            raise InputError(f"token file {str(path)!r} must be a regular file of ours with mode 0600 "
                             f"(it is {stat.filemode(st.st_mode)}); fix it with chmod 600 or delete it")
        token = f.read().strip()
    if len(token) < 16:
        raise InputError(f"token file {str(path)!r} holds no usable token (under 16 characters); delete it")
    return token, False


class _Handler(BaseHTTPRequestHandler):
    server: "LiveServer"
    protocol_version = "HTTP/1.1"
    server_version = "edgeuq-live"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.write_timeout)
        # a fixed, small kernel send buffer per page (no autotuning to megabytes): bounded memory,
        # and a page that stops reading fills it, then its queue, and is dropped soon
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.server.sndbuf)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet: the device console is for the stream
        pass

    # --- everything but GET is refused; nothing in this server changes state ---
    def _refuse(self) -> None:
        self._send(405, b"read-only: only GET\n", "text/plain; charset=utf-8", extra={"Allow": "GET"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_TRACE = do_CONNECT = _refuse

    def _send(self, code: int, body: bytes, ctype: str, extra: Optional[dict] = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self._common_headers()
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _common_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Content-Security-Policy",
                         f"default-src 'none'; script-src {self.server.csp_script}; style-src 'unsafe-inline'; "
                         "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
                         "frame-ancestors 'none'")

    def _authorized(self, query: str) -> bool:
        srv = self.server
        if srv.token is None:
            # local bind: refuse foreign Host headers (DNS rebinding from a web page)
            host = (self.headers.get("Host") or "").strip().lower()
            return host in srv.allowed_hosts
        given = parse_qs(query).get("token", [""])[0]
        auth = self.headers.get("Authorization") or ""
        if auth.startswith("Bearer "):
            given = auth[7:].strip()
        return hmac.compare_digest(given.encode("utf-8", "replace"), srv.token.encode("utf-8"))

    def do_GET(self) -> None:  # noqa: N802
        parts = urlsplit(self.path)
        if parts.scheme or parts.netloc or not self.path.startswith("/"):
            self._send(400, b"bad request target\n", "text/plain; charset=utf-8")
            return
        route = self.server.routes.get(parts.path)   # exact names only; the path is never decoded or joined
        if route is None:
            self._send(404, b"not found\n", "text/plain; charset=utf-8")
            return
        if not self._authorized(parts.query):
            self._send(401, b"token required\n", "text/plain; charset=utf-8",
                       extra={"WWW-Authenticate": 'Bearer realm="edgeuq"'})
            return
        if route == "page":
            self._send(200, self.server.page, "text/html; charset=utf-8")
        elif route == "state":
            _, parts = self.server.hub.subscribe(register=False)
            self._send(200, "\n".join(parts).encode("utf-8"), "application/json")
        elif route == "healthz":
            self._send(200, b"ok\n", "text/plain; charset=utf-8")
        else:
            self._events()

    def _events(self) -> None:
        hub = self.server.hub
        sub, parts = hub.subscribe()
        if sub is None:
            self._send(503, b"too many clients\n", "text/plain; charset=utf-8", extra={"Retry-After": "5"})
            return
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self._common_headers()
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            self.wfile.write(b"retry: 2000\n")
            for part in parts:    # one SSE message over several data lines (joined by newlines: valid JSON)
                self.wfile.write(("data: " + part + "\n").encode("utf-8"))
            self.wfile.write(b"\n")
            self.wfile.flush()
            del parts
            while not self.server.stopping.is_set():
                text = sub.get(timeout=self.server.keepalive)
                if sub.dropped:
                    break
                self.wfile.write((": keepalive\n\n" if text is None else "data: " + text + "\n\n").encode("utf-8"))
                self.wfile.flush()
        except socket.timeout:   # the page stopped reading and its buffers are full: drop it
            self.server.write_timeouts += 1
        except OSError:          # the page went away: just end this thread
            pass
        finally:
            hub.unsubscribe(sub)


class LiveServer(ThreadingHTTPServer):
    """The live view's HTTP server over a :class:`Hub`; ``token`` None only for local binds."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 16

    def __init__(self, hub: Hub, host: str = "127.0.0.1", port: int = 8080, token: Optional[str] = None,
                 keepalive: float = 10.0, write_timeout: float = 5.0, sndbuf: int = 65536) -> None:
        if token is None and not is_local_bind(host):
            raise InputError(f"binding {host} (not 127.0.0.1/::1) needs an access token")
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), _Handler)
        self.hub, self.token = hub, token
        self.keepalive, self.write_timeout, self.sndbuf = float(keepalive), float(write_timeout), int(sndbuf)
        self.stopping = threading.Event()
        self.errors = self.disconnects = self.write_timeouts = 0
        self.page = render_page(None).encode("utf-8")
        self.csp_script = script_hash()
        self.routes = {"/": "page", "/index.html": "page", "/events": "events", "/state": "state",
                       "/healthz": "healthz"}
        self.port = self.server_address[1]
        names = ["127.0.0.1", "localhost", "[::1]"]
        self.allowed_hosts = frozenset(f"{n}:{self.port}" for n in names) | (
            frozenset(names) if self.port == 80 else frozenset())

    def handle_error(self, request, client_address) -> None:
        """A client that went away is normal; anything else is counted and named on stderr
        (one line, no traceback on the device console). The server keeps running."""
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            self.disconnects += 1
            return
        self.errors += 1
        print(f"live view: error serving {client_address[0]}: {type(exc).__name__}: {exc}"[:500], file=sys.stderr)

    def url(self) -> str:
        host = self.server_address[0]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/" + (f"?token={self.token}" if self.token else "")

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2}, name="edgeuq-live-http",
                             daemon=True)
        t.start()
        self._serving = t
        return t

    def stop(self) -> None:
        """Stop serving and close the socket; also right after construction or a Ctrl-C during
        start-up (``shutdown`` waits for a ``serve_forever`` loop, so it is only asked of a started one)."""
        self.stopping.set()
        if getattr(self, "_serving", None) is not None:
            self.shutdown()
        self.server_close()
