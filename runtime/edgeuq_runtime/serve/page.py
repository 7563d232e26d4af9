"""The live view's single page: HTML with the CSS and JS inlined (no CDN, no framework).

The same page serves the live stream (``serve``: it opens ``events`` by Server-Sent
Events) and a saved log (``edgeuq view``: the records are embedded as JSON and nothing
is fetched). Static files are read once from the package into memory; no request path
ever reaches the file system."""
from __future__ import annotations

import base64
import hashlib
import json
from functools import lru_cache
from importlib import resources
from typing import Any, Mapping, Optional

__all__ = ["render_page", "embed_json", "script_hash"]

_STATIC = ("index.html", "app.js", "app.css")


@lru_cache(maxsize=1)
def _static() -> Mapping[str, str]:
    root = resources.files(__package__) / "static"
    return {name: (root / name).read_text(encoding="utf-8") for name in _STATIC}


def embed_json(obj: Any) -> str:
    """JSON safe inside a ``<script type="application/json">`` element: no ``<`` (so no
    ``</script>``), no ``&``, and the U+2028/9 line separators escaped."""
    text = json.dumps(obj, allow_nan=False, separators=(",", ":"), default=str)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def script_hash() -> str:
    """CSP hash source of the page's inline script (``'sha256-…'``)."""
    digest = hashlib.sha256(_static()["app.js"].encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def render_page(embedded: Optional[Mapping[str, Any]] = None) -> str:
    """The page; ``embedded`` (``{"mode": "log", "info": …, "records": […]}``) makes it a
    self-contained view of a saved log, ``None`` a live page."""
    s = _static()
    data = embed_json(embedded) if embedded is not None else "null"
    # str.replace of fixed markers (the JS/CSS never contain them); data last, so it cannot inject markers
    html = s["index.html"].replace("/*CSS*/", s["app.css"]).replace("/*JS*/", s["app.js"])
    return html.replace("/*DATA*/", data)
