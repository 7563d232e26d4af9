"""``python -m edgeuq_runtime update | status | rollback`` (registered by the runtime's __main__).

    python -m edgeuq_runtime update --root /var/lib/edgeuq \\
        --repo https://updates.example/repo --board my-board --model bearing --trust-root root.json
    python -m edgeuq_runtime update --root /var/lib/edgeuq      # later: identity is stored
    python -m edgeuq_runtime status --root /var/lib/edgeuq
    python -m edgeuq_runtime rollback --root /var/lib/edgeuq

The root defaults to ``$EDGEUQ_OTA_ROOT``. tuf is imported only by ``update``.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .errors import OtaError

__all__ = ["register"]


def _root(a: argparse.Namespace) -> Path:
    root = a.root or os.environ.get("EDGEUQ_OTA_ROOT")
    if not root:
        raise OtaError("no device root: pass --root DIR or set EDGEUQ_OTA_ROOT")
    return Path(root)


def _update(a: argparse.Namespace) -> int:
    try:
        from .updater import DEVICE_FILE, OtaUpdater, UpdateConfig, provision
    except ImportError as exc:
        raise OtaError(f"OTA needs the ota extra (pip install 'edgeuq-runtime[ota]'): {exc}") from None
    root = _root(a)
    if a.repo and "://" not in a.repo:  # a local directory: file:// URL
        a.repo = Path(a.repo).resolve().as_uri()
    if a.repo:
        from .fetchers import fetcher_for
        try:
            fetcher_for(a.repo)  # refuse an unusable URL before anything is stored
        except ValueError as exc:
            raise OtaError(str(exc)) from None
    if not (root / DEVICE_FILE).exists():
        if not (a.repo and a.board and a.model and a.trust_root):
            raise OtaError(f"{root} is not provisioned: the first update needs --repo, --board, --model, --trust-root")
        provision(root, a.board, a.model, a.repo, Path(a.trust_root).read_bytes())
    cfg = UpdateConfig(attempts=a.attempts, healthy_needed=a.healthy, delta=not a.no_delta)
    out = OtaUpdater(root, config=cfg, repo_url=a.repo).update()
    if a.json:
        print(json.dumps(out, indent=2))
    elif out["status"] == "up-to-date":
        print(f"up to date: release {out['release']} in slot {out['slot']}")
    elif out["status"] != "installed":  # staged rollouts (h4 hook): not-in-rollout, rolled-back, halted-no-fallback
        print(f"{out['status']}: release {out.get('release')} in slot {out.get('slot')} (rollout {out.get('rollout')})")
    else:
        c = out["canaries"]
        print(f"installed release {out['release']} ({out['model_version']}) into slot {out['slot']} "
              f"{'via delta' if out['delta'] else 'full'}, {out['bytes']} bytes fetched; canaries "
              f"{c['class_ok']}/{c['windows']} classes, MI error {c['mi_max_error']:.2e}, "
              f"{c['latency_ms']:.2f}/{c['latency_budget_ms']:g} ms; on trial until marked good")
    return 0


def _status(a: argparse.Namespace) -> int:
    from .slots import status

    st = status(_root(a))
    if a.json:
        print(json.dumps(st, indent=2))
        return 0
    print(f"device:   {st['root']}")
    print(f"serving:  {st['serving']}  (current slot {st['current']}, version floor {st['floor']})")
    for s, info in st["slots"].items():
        if not (Path(st["root"]) / "slots" / s).exists():
            print(f"  slot {s}: empty")
            continue
        digest = (info.get("bundle_digest") or "")[:16]
        print(f"  slot {s}: release {info.get('release', '-')} {info.get('model_version', '')} "
              f"{'verified' if info['verified'] else 'NOT verified'} {digest}")
    p = st["pending"]
    if p:
        print(f"pending:  release {p['release']} in slot {p['slot']}, attempts left {p['attempts_left']}, "
              f"healthy windows {p['healthy']}/{p['healthy_needed']}")
    else:
        print("pending:  none")
    return 0


def _rollback(a: argparse.Namespace) -> int:
    from .slots import rollback

    res = rollback(_root(a), a.reason)
    print(f"rolled back: now serving slot {res.slot} ({res.bundle})")
    return 0


def register(sub) -> None:
    up = sub.add_parser("update", help="fetch, verify (TUF), canary-check and install a newer bundle (A/B slots)")
    up.add_argument("--root", help="device state directory (default $EDGEUQ_OTA_ROOT)")
    up.add_argument("--repo", help="repository URL (http://, https://, file://); stored at provisioning")
    up.add_argument("--board", help="this device's board (first run only)")
    up.add_argument("--model", help="model name this device runs (first run only)")
    up.add_argument("--trust-root", help="bootstrap root.json shipped with the device (first run only)")
    up.add_argument("--attempts", type=int, default=3, help="trial boots before an automatic rollback")
    up.add_argument("--healthy", type=int, default=20, help="healthy windows that mark the release good")
    up.add_argument("--no-delta", action="store_true", help="always download the full bundle")
    up.add_argument("--json", action="store_true")
    up.set_defaults(func=_update)
    st = sub.add_parser("status", help="slots, version floor, pending trial, the bundle being served")
    st.add_argument("--root")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=_status)
    rb = sub.add_parser("rollback", help="flip back to the previous verified slot")
    rb.add_argument("--root")
    rb.add_argument("--reason", default="operator request")
    rb.set_defaults(func=_rollback)
