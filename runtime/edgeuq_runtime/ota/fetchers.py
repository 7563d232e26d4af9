"""Transports behind one method: ``_fetch(url) -> Iterator[bytes]`` (tuf's FetcherInterface).

* :class:`HttpFetcher` — urllib3, connect/read timeouts, an overall deadline per file
  (a server dripping bytes forever is cut off), no redirects, no retries.
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
    def __init__(self, connect_timeout: float = 5.0, read_timeout: float = 10.0, deadline_s: float = 300.0,
                 user_agent: str = "edgeuq-runtime-ota") -> None:
        import urllib3

        self._urllib3 = urllib3
        self._pool = urllib3.PoolManager(timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
                                         retries=False, headers={"User-Agent": user_agent})
        self.deadline_s = deadline_s

    def _fetch(self, url: str) -> Iterator[bytes]:
        u3 = self._urllib3
        try:
            resp = self._pool.request("GET", url, preload_content=False, redirect=False)
        except u3.exceptions.HTTPError as exc:
            raise exceptions.DownloadError(f"cannot reach {url}: {exc}") from None
        if resp.status != 200:
            resp.release_conn()
            raise exceptions.DownloadHTTPError(f"HTTP {resp.status} for {url}", resp.status)
        return self._stream(resp, url)

    def _stream(self, resp, url: str) -> Iterator[bytes]:
        start = time.monotonic()
        try:
            while True:
                try:
                    chunk = resp.read(CHUNK)
                except self._urllib3.exceptions.ReadTimeoutError:
                    raise exceptions.SlowRetrievalError(f"read timed out downloading {url}") from None
                except self._urllib3.exceptions.HTTPError as exc:  # truncated body, reset connection
                    raise exceptions.DownloadError(f"download of {url} broke off: {exc}") from None
                if not chunk:
                    return
                yield chunk
                if time.monotonic() - start > self.deadline_s:
                    raise exceptions.SlowRetrievalError(f"download of {url} exceeded {self.deadline_s:g} s")
        finally:
            resp.release_conn()


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
