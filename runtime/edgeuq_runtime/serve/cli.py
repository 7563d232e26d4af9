"""``python -m edgeuq_runtime serve --bundle B --source ... [--bind 127.0.0.1:8080]``: the
streaming loop plus the read-only live view (HTTP + Server-Sent Events)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["add_serve_parser", "run_serve_command", "default_token_file"]


def default_token_file() -> Path:
    env = os.environ.get("EDGEUQ_SERVE_TOKEN_FILE")
    return Path(env) if env else Path.home() / ".config" / "edgeuq" / "serve-token"


def add_serve_parser(sub) -> argparse.ArgumentParser:
    from ..stream.cli import add_diagnosis_arguments

    p = sub.add_parser("serve", help="stream and show the diagnosis live in a browser (read-only web page)")
    p.add_argument("--bundle", help="bundle directory (default: the bundle the OTA root serves, with --ota-root)")
    p.add_argument("--source", required=True,
                   help="file:PATH, stdin:f32|i16, tcp:127.0.0.1:PORT[:f32|i16], sim[:KIND] (as for stream)")
    p.add_argument("--bind", default="127.0.0.1:8080",
                   help="HOST:PORT to listen on (default 127.0.0.1:8080; any other host needs the token)")
    p.add_argument("--token-file", help="where the access token for a non-local bind is kept (mode 0600; "
                                        "default $EDGEUQ_SERVE_TOKEN_FILE or ~/.config/edgeuq/serve-token)")
    p.add_argument("--ota-root", help="OTA device root to show slot and trial state (default $EDGEUQ_OTA_ROOT; "
                                      "read only)")
    p.add_argument("--no-realtime", action="store_true", help="play file/sim sources as fast as possible")
    p.add_argument("--reopen", action="store_true", help="re-open the source when it ends (replay a file)")
    add_diagnosis_arguments(p)
    p.add_argument("--stall-timeout", type=float, default=2.0)
    p.add_argument("--max-windows", type=int, help="stop streaming after this many windows")
    p.add_argument("--no-calibration", action="store_true")
    p.add_argument("--history", type=int, default=3000,
                   help="decisions kept for pages that connect later (default 3000: 5 min at 10/s; memory scales "
                        "with it)")
    p.add_argument("--exit-when-done", action="store_true",
                   help="stop the server when the stream ends (default: keep showing the last state)")
    p.set_defaults(func=run_serve_command)
    return p


def run_serve_command(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..stream.alarm import Hysteresis
    from ..stream.cli import diagnosis_setup
    from ..stream.sources import open_source
    from .hub import Hub
    from .live import LiveFeed
    from .server import LiveServer, is_local_bind, load_or_create_token, parse_bind

    host, port = parse_bind(args.bind)
    ota_root = args.ota_root or os.environ.get("EDGEUQ_OTA_ROOT")
    ota_root = Path(ota_root) if ota_root else None
    bundle = args.bundle
    if bundle is None:
        if ota_root is None:
            raise InputError("serve needs --bundle B (or --ota-root to serve the OTA root's current bundle)")
        from ..ota.slots import current_bundle
        bundle = str(current_bundle(ota_root))
    rt, diag, (k, n, normal) = diagnosis_setup(bundle, args, "serve")
    rate = rt.manifest.input.sample_rate_hz

    def opener():
        return open_source(args.source, rate, realtime=not args.no_realtime, stall_timeout=args.stall_timeout,
                           seed=args.seed)

    token = None
    if not is_local_bind(host):
        token_file = Path(args.token_file) if args.token_file else default_token_file()
        token, created = load_or_create_token(token_file)
        if created:
            print(f"access token (shown once; stored in {token_file}, mode 0600): {token}", file=sys.stderr)
        else:
            print(f"access token: the one stored in {token_file}", file=sys.stderr)
    if args.history < 1:
        raise InputError(f"--history must be >= 1, got {args.history}")
    hub = Hub(history=args.history)
    server = LiveServer(hub, host, port, token=token)
    shown = server.url() if token is None else server.url().split("?")[0] + "?token=…"
    feed = LiveFeed(hub, diag, opener, hop=args.hop, alarm=Hysteresis(k, n, normal), ota_root=ota_root,
                    bundle_path=Path(bundle), reopen=args.reopen, max_windows=args.max_windows)
    try:
        feed.prepare()
        server.start()
        # the address once it answers (opening the source first can take a while on a slow device)
        print(f"live view on {shown} (read-only; Ctrl-C stops)", file=sys.stderr, flush=True)
        feed.run()
        if not args.exit_when_done:
            print("stream ended; still serving the last state (Ctrl-C stops)", file=sys.stderr, flush=True)
            server.stopping.wait()
    except KeyboardInterrupt:
        pass
    finally:
        feed.stop()
        server.stop()
    return 0
