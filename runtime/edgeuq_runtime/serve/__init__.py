"""The live view: ``python -m edgeuq_runtime serve`` (stdlib HTTP + Server-Sent Events, a
static page shipped in this package) and the page renderer the host's ``edgeuq view``
uses for saved logs. numpy-free itself; never imports torch or edgeuq."""
from .hub import Hub, LiveStats, Subscriber
from .page import embed_json, render_page
from .server import LiveServer, is_local_bind, load_or_create_token, parse_bind

__all__ = ["Hub", "LiveStats", "Subscriber", "embed_json", "render_page", "LiveServer", "is_local_bind",
           "load_or_create_token", "parse_bind"]
