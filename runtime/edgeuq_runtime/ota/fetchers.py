"""Transports behind one method: ``_fetch(url) -> Iterator[bytes]`` (tuf's FetcherInterface).

* :class:`HttpFetcher` — http.client, connect/read timeouts and a wall-clock deadline per file
  enforced by a watchdog that shuts the socket (a server dripping bytes is cut off at the
  deadline, whatever the read size), no redirects, no retries.
* :class:`FileFetcher` — ``file://`` URLs (a repository on a USB stick or a mounted share).

Length limits are enforced by tuf itself (metadata max sizes, signed target lengths).
Errors raised while streaming are tuf ``DownloadError``s, so the updater sees one kind.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator, Optional
from urllib.parse import unquote, urlparse

from tuf.api import exceptions
from tuf.ngclient import FetcherInterface

__all__ = ["HttpFetcher", "FileFetcher", "CountingFetcher", "fetcher_for"]

CHUNK = 1 << 16


class HttpFetcher(FetcherInterface):
    """HTTP(S) with a wall-clock deadline per file that does not depend on read sizes.

    A watchdog timer shuts the socket down when ``deadline_s`` has passed since the request
    started, whatever the server does (drip the status line, the headers or the body one byte
    at a time); each socket operation also times out after ``read_timeout``. No redirects
    (http.client never follows them), no retries.
    """

    def __init__(self, connect_timeout: float = 5.0, read_timeout: float = 10.0, deadline_s: float = 300.0,
                 user_agent: str = "edgeuq-runtime-ota") -> None:
        for what, v in (("connect_timeout", connect_timeout), ("read_timeout", read_timeout),
                        ("deadline_s", deadline_s)):
            if not (isinstance(v, (int, float)) and v > 0):
                raise ValueError(f"HttpFetcher {what} must be a positive number of seconds, got {v!r}")
        self.connect_timeout, self.read_timeout, self.deadline_s = connect_timeout, read_timeout, deadline_s
        self.user_agent = user_agent

    def _fetch(self, url: str) -> Iterator[bytes]:
        import http.client
        import socket
        import threading

        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise exceptions.DownloadError(f"HttpFetcher needs an http(s):// URL, got {url!r}")
        start = time.monotonic()
        if parsed.scheme == "https":
            import ssl
            conn = http.client.HTTPSConnection(parsed.hostname, parsed.port, timeout=self.connect_timeout,
                                               context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=self.connect_timeout)
        expired = threading.Event()

        def cut() -> None:
            expired.set()
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        timer = threading.Timer(self.deadline_s, cut)
        timer.daemon = True
        timer.start()
        target = parsed.path or "/"
        if parsed.query:
            target += "?" + parsed.query
        try:
            conn.connect()
            conn.sock.settimeout(self.read_timeout)
            conn.request("GET", target, headers={"User-Agent": self.user_agent, "Accept-Encoding": "identity"})
            resp = conn.getresponse()
        except Exception as exc:
            timer.cancel()
            conn.close()
            if expired.is_set():
                raise exceptions.SlowRetrievalError(f"{url}: no response within the {self.deadline_s:g} s "
                                                    "deadline") from None
            if isinstance(exc, socket.timeout):
                raise exceptions.SlowRetrievalError(f"{url}: timed out ({exc})") from None
            if isinstance(exc, (OSError, http.client.HTTPException)):
                raise exceptions.DownloadError(f"cannot reach {url}: {type(exc).__name__}: {exc}") from None
            raise
        if resp.status != 200:
            timer.cancel()
            conn.close()
            raise exceptions.DownloadHTTPError(f"HTTP {resp.status} for {url}", resp.status)
        return self._stream(conn, resp, url, timer, expired, start)

    def _stream(self, conn, resp, url: str, timer, expired, start: float) -> Iterator[bytes]:
        import http.client
        import socket

        try:
            while True:
                try:
                    chunk = resp.read1(CHUNK)
                except socket.timeout:
                    raise exceptions.SlowRetrievalError(f"read timed out downloading {url}") from None
                except (OSError, http.client.HTTPException) as exc:  # truncated body, reset, watchdog
                    if expired.is_set():
                        break
                    raise exceptions.DownloadError(f"download of {url} broke off: {type(exc).__name__}: {exc}") \
                        from None
                if expired.is_set() or time.monotonic() - start > self.deadline_s:
                    break
                if not chunk:
                    if resp.length:  # Content-Length promised more
                        raise exceptions.DownloadError(f"download of {url} broke off: {resp.length} bytes missing")
                    return
                yield chunk
            raise exceptions.SlowRetrievalError(f"download of {url} exceeded the {self.deadline_s:g} s deadline")
        finally:
            timer.cancel()
            conn.close()


class FileFetcher(FetcherInterface):
    def _fetch(self, url: str) -> Iterator[bytes]:
        parsed = urlparse(url)
        if parsed.scheme != "file":
            raise exceptions.DownloadError(f"FileFetcher only reads file:// URLs, got {url!r}")
        path = Path(unquote(parsed.path))
        if not path.is_file():
            raise exceptions.DownloadHTTPError(f"no file {path}", 404)
        return self._stream(path)

    @staticmethod
    def _stream(path: Path) -> Iterator[bytes]:
        with open(path, "rb") as fh:
            while True:
                chunk = fh.read(CHUNK)
                if not chunk:
                    return
                yield chunk


class CountingFetcher(FetcherInterface):
    """Wraps a fetcher and counts the bytes it delivers (for status and the benchmark)."""

    def __init__(self, inner: FetcherInterface) -> None:
        self.inner = inner
        self.bytes = 0
        self.files = 0

    def _fetch(self, url: str) -> Iterator[bytes]:
        chunks = self.inner._fetch(url)  # noqa: SLF001 - the one method of the interface
        self.files += 1

        def counted() -> Iterator[bytes]:
            for chunk in chunks:
                self.bytes += len(chunk)
                yield chunk
        return counted()


def fetcher_for(url: str, timeout: Optional[float] = None) -> FetcherInterface:
    if url.startswith("file://"):
        return FileFetcher()
    if url.startswith(("http://", "https://")):
        return HttpFetcher() if timeout is None else HttpFetcher(read_timeout=timeout, deadline_s=30 * timeout)
    raise ValueError(f"repository URL must be http://, https:// or file://, got {url!r}")
