"""Transports behind one method: ``_fetch(url) -> Iterator[bytes]`` (tuf's FetcherInterface).

* :class:`HttpFetcher` — http.client, connect/read timeouts and a wall-clock deadline per file
  enforced by a watchdog that shuts the socket (a server dripping bytes is cut off at the
  deadline, whatever the read size), no redirects, no retries.
* :class:`FileFetcher` — ``file://`` URLs (a repository on a USB stick or a mounted share).

Length limits are enforced by tuf itself (metadata max sizes, signed target lengths).
Errors raised while streaming are tuf ``DownloadError``s, so the updater sees one kind.

Big targets (the bundle archive) do not go through tuf's ``download_target`` (which buffers the
file in a temporary file and copies it): :func:`download_to_file` streams them into the staging
area, hashing every byte as it arrives, and resumes a dropped connection with an HTTP
``Range: bytes=N-`` request (``fetch_from``): a ``206`` is accepted only when its
``Content-Range`` continues exactly at ``N`` and names the signed length; a ``200`` means the
server ignored the range and the download restarts from byte 0 (partial file truncated,
hashes reset); at most ``max_resumes`` resumes, and the wall-clock deadline of the download
holds across all of them.
"""
from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence, Tuple
from urllib.parse import unquote, urlparse

from tuf.api import exceptions
from tuf.ngclient import FetcherInterface

__all__ = ["HttpFetcher", "FileFetcher", "CountingFetcher", "fetcher_for", "RangeMismatchError",
           "DeadlineExceeded", "Download", "download_to_file", "MAX_RESUMES"]

CHUNK = 1 << 16
#: Resumes (Range requests or restarts) of one download after a dropped connection.
MAX_RESUMES = 8


class RangeMismatchError(exceptions.DownloadError):
    """A ``206 Partial Content`` whose ``Content-Range`` does not continue the partial file
    exactly (another start, another total length, a malformed header): never resumed."""


class DeadlineExceeded(exceptions.SlowRetrievalError):
    """The wall-clock deadline of one download passed (across every resume): never resumed."""


_CONTENT_RANGE = re.compile(r"bytes (\d{1,19})-(\d{1,19})/(\d{1,19})")


def parse_content_range(value: Optional[str], offset: int, total: int) -> None:
    """Accept ``Content-Range: bytes offset-(total-1)/total`` only (raises :class:`RangeMismatchError`)."""
    m = _CONTENT_RANGE.fullmatch((value or "").strip())
    if m is None:
        raise RangeMismatchError(f"206 response with a malformed Content-Range {str(value)[:80]!r}")
    first, last, length = (int(g) for g in m.groups())
    if first != offset or length != total or last != total - 1:
        raise RangeMismatchError(f"206 response with Content-Range bytes {first}-{last}/{length}, asked for bytes "
                                 f"{offset}- of "
                                 f"the signed {total}; not resuming from a range that does not continue the file")


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
        return self._request(url, 0, None, time.monotonic() + self.deadline_s)[1]

    def fetch_from(self, url: str, offset: int, total: int, deadline_at: Optional[float] = None
                   ) -> Tuple[int, Iterator[bytes]]:
        """Bytes of ``url`` from ``offset`` (``Range: bytes=offset-`` when offset > 0) of a file of
        ``total`` bytes. Returns (start, chunks): ``start`` is ``offset`` for a verified 206, 0 for
        a 200 (the server sent the whole file). ``deadline_at`` (time.monotonic) bounds the whole
        request and body; default: ``deadline_s`` from now."""
        if deadline_at is None:
            deadline_at = time.monotonic() + self.deadline_s
        return self._request(url, int(offset), int(total), deadline_at)

    def _request(self, url: str, offset: int, total: Optional[int], deadline_at: float
                 ) -> Tuple[int, Iterator[bytes]]:
        import http.client
        import socket
        import threading

        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise exceptions.DownloadError(f"HttpFetcher needs an http(s):// URL, got {url!r}")
        remaining = deadline_at - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded(f"download of {url} exceeded its {self.deadline_s:g} s deadline before "
                                   f"resuming at byte {offset}")
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
        timer = threading.Timer(remaining, cut)
        timer.daemon = True
        timer.start()
        target = parsed.path or "/"
        if parsed.query:
            target += "?" + parsed.query
        headers = {"User-Agent": self.user_agent, "Accept-Encoding": "identity"}
        if offset > 0:
            headers["Range"] = f"bytes={offset}-"
        try:
            conn.connect()
            conn.sock.settimeout(self.read_timeout)
            conn.request("GET", target, headers=headers)
            resp = conn.getresponse()
        except Exception as exc:
            timer.cancel()
            conn.close()
            if expired.is_set():
                raise DeadlineExceeded(f"{url}: no response within the {self.deadline_s:g} s deadline") from None
            if isinstance(exc, socket.timeout):
                raise exceptions.SlowRetrievalError(f"{url}: timed out ({exc})") from None
            if isinstance(exc, (OSError, http.client.HTTPException)):
                raise exceptions.DownloadError(f"cannot reach {url}: {type(exc).__name__}: {exc}") from None
            raise
        start = 0
        try:
            if offset > 0 and resp.status == 206:
                parse_content_range(resp.getheader("Content-Range"), offset, int(total or 0))
                start = offset
            elif resp.status != 200:
                raise exceptions.DownloadHTTPError(f"HTTP {resp.status} for {url}"
                                                   + (f" (Range: bytes={offset}-)" if offset else ""), resp.status)
        except exceptions.DownloadError:
            timer.cancel()
            conn.close()
            raise
        return start, self._stream(conn, resp, url, timer, expired, deadline_at)

    def _stream(self, conn, resp, url: str, timer, expired, deadline_at: float) -> Iterator[bytes]:
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
                if expired.is_set() or time.monotonic() > deadline_at:
                    break
                if not chunk:
                    if resp.length:  # Content-Length promised more
                        raise exceptions.DownloadError(f"download of {url} broke off: {resp.length} bytes missing")
                    return
                yield chunk
            raise DeadlineExceeded(f"download of {url} exceeded the {self.deadline_s:g} s deadline")
        finally:
            timer.cancel()
            conn.close()


class FileFetcher(FetcherInterface):
    def _fetch(self, url: str) -> Iterator[bytes]:
        return self._stream(self._path(url), 0)

    def fetch_from(self, url: str, offset: int, total: int, deadline_at: Optional[float] = None
                   ) -> Tuple[int, Iterator[bytes]]:
        return int(offset), self._stream(self._path(url), int(offset))

    @staticmethod
    def _path(url: str) -> Path:
        """The existing file a ``file://`` URL names (a download error otherwise, 404 when missing)."""
        parsed = urlparse(url)
        if parsed.scheme != "file":
            raise exceptions.DownloadError(f"FileFetcher only reads file:// URLs, got {url!r}")
        path = Path(unquote(parsed.path))
        if not path.is_file():
            raise exceptions.DownloadHTTPError(f"no file {path}", 404)
        return path

    @staticmethod
    def _stream(path: Path, offset: int) -> Iterator[bytes]:
        with open(path, "rb") as fh:
            fh.seek(offset)
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

    def fetch_from(self, url: str, offset: int, total: int, deadline_at: Optional[float] = None
                   ) -> Tuple[int, Iterator[bytes]]:
        """The inner fetcher's ranged fetch; a fetcher without one restarts from byte 0 (like a 200)."""
        inner = getattr(self.inner, "fetch_from", None)
        if inner is not None:
            start, chunks = inner(url, offset, total, deadline_at)
        else:
            start, chunks = 0, self.inner.fetch(url)
        self.files += 1

        def counted() -> Iterator[bytes]:
            for chunk in chunks:
                self.bytes += len(chunk)
                yield chunk
        return start, counted()

    @property
    def deadline_s(self) -> Optional[float]:
        return getattr(self.inner, "deadline_s", None)


@dataclass(frozen=True)
class Download:
    """A target streamed into a file: its length and digests (computed as the bytes arrived)."""

    path: Path
    length: int
    hashes: Dict[str, str]
    resumes: int      # Range requests answered with a verified 206
    restarts: int     # downloads restarted from byte 0 (a 200 to a Range request, or no range support)
    resumed_from: int = 0  # bytes of a partial file left by an earlier run that this download continued


def download_to_file(fetcher: FetcherInterface, url: str, dest: Path, length: int, algorithms: Sequence[str],
                     max_resumes: int = MAX_RESUMES, deadline_s: Optional[float] = None,
                     keep_partial: bool = False) -> Download:
    """Stream ``url`` into ``dest`` (at most ``length`` bytes), hashing with every algorithm in
    ``algorithms`` while writing; resume after a dropped connection (see the module docstring).
    With ``keep_partial`` a regular file already at ``dest`` (an earlier run's partial download of
    the same signed target, at most ``length`` bytes) is continued: its bytes are hashed from
    disk in chunks and the first request asks for the rest with ``Range``. Its bytes are
    unverified until the end: the caller compares the digests and starts over on a mismatch.

    Raises tuf ``DownloadError``s: ``DownloadLengthMismatchError`` past ``length``,
    :class:`RangeMismatchError` for a lying 206, :class:`DeadlineExceeded` when ``deadline_s``
    (default: the fetcher's own ``deadline_s``, else none) has passed since the first request,
    the last transport error once ``max_resumes`` resumes are spent. The caller compares
    :attr:`Download.hashes` and :attr:`Download.length` with the signed target info."""
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ValueError(f"download length must be a non-negative integer, got {length!r}")
    algos = [str(a) for a in algorithms]
    for a in algos:
        hashlib.new(a)  # ValueError for an algorithm this device cannot compute
    if deadline_s is None:
        deadline_s = getattr(fetcher, "deadline_s", None)
    deadline_at = time.monotonic() + deadline_s if deadline_s else None
    ranged = getattr(fetcher, "fetch_from", None)
    hashers = {a: hashlib.new(a) for a in algos}
    received, resumes, restarts, failures = 0, 0, 0, 0
    dest = Path(dest)
    mode = "wb"
    if keep_partial and dest.is_file() and not dest.is_symlink() and dest.stat().st_size <= length:
        mode = "r+b"
    with open(dest, mode) as fh:
        if mode == "r+b":
            while True:
                block = fh.read(1 << 20)
                if not block:
                    break
                received += len(block)
                for h in hashers.values():
                    h.update(block)
            fh.seek(received)
            fh.truncate()
        resumed_from = received
        while True:
            if deadline_at is not None and time.monotonic() >= deadline_at:
                raise DeadlineExceeded(f"download of {url} exceeded its {deadline_s:g} s deadline after "
                                       f"{failures} dropped connection(s), {received} of {length} bytes in")
            try:
                if ranged is not None:
                    start, chunks = ranged(url, received, length, deadline_at)
                else:
                    start, chunks = 0, fetcher.fetch(url)
                if start != received:
                    if start != 0:
                        raise RangeMismatchError(f"fetcher resumed {url} at byte {start}, asked for {received}")
                    fh.seek(0)
                    fh.truncate()
                    hashers = {a: hashlib.new(a) for a in algos}
                    received = 0
                    restarts += 1
                elif start:
                    resumes += 1
                for chunk in chunks:
                    received += len(chunk)
                    if received > length:
                        raise exceptions.DownloadLengthMismatchError(
                            f"download of {url} exceeds the signed length of {length} bytes")
                    fh.write(chunk)
                    for h in hashers.values():
                        h.update(chunk)
                break
            except (DeadlineExceeded, RangeMismatchError, exceptions.DownloadLengthMismatchError,
                    exceptions.DownloadHTTPError):
                raise
            except exceptions.DownloadError as exc:  # dropped connection, reset, read timeout
                failures += 1
                if failures > max_resumes:
                    raise type(exc)(f"{exc} (gave up after {max_resumes} resumes, {received} of {length} "
                                    "bytes in)") from None
        fh.flush()
    return Download(path=dest, length=received, hashes={a: h.hexdigest() for a, h in hashers.items()},
                    resumes=resumes, restarts=restarts, resumed_from=resumed_from)


def fetcher_for(url: str, timeout: Optional[float] = None) -> FetcherInterface:
    if url.startswith("file://"):
        return FileFetcher()
    if url.startswith(("http://", "https://")):
        return HttpFetcher() if timeout is None else HttpFetcher(read_timeout=timeout, deadline_s=30 * timeout)
    raise ValueError(f"repository URL must be http://, https:// or file://, got {url!r}")
