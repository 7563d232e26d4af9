"""A threaded HTTP server on 127.0.0.1, run in a daemon thread for the length of a ``with`` block.

The one copy of that lifecycle: the rollout collector (:class:`edgeuq.ota.rollout.Collector`) and
the test and bench repository servers subclass it, build their handler class and call
:meth:`LocalHTTPServer._listen`."""
from __future__ import annotations

import http.server
import threading
from typing import Any, ClassVar

__all__ = ["LocalHTTPServer"]


class LocalHTTPServer:
    """Listens on ``127.0.0.1:port`` (0: a free port) once :meth:`_listen` ran; serves while the
    ``with`` block lasts; ``url`` is the base address plus ``URL_PATH``."""

    URL_PATH: ClassVar[str] = ""

    def _listen(self, handler: type, port: int = 0) -> None:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{self.URL_PATH}"

    def __enter__(self) -> Any:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
