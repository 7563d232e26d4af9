"""``python -m edgeuq_runtime update | status | rollback`` (registered by the runtime's __main__).

    python -m edgeuq_runtime update --root /var/lib/edgeuq \\
        --repo https://updates.example/repo --board my-board --model bearing --trust-root root.json
    python -m edgeuq_runtime update --root /var/lib/edgeuq      # later: identity is stored
    python -m edgeuq_runtime status --root /var/lib/edgeuq [--mark-good]
    python -m edgeuq_runtime rollback --root /var/lib/edgeuq
    python -m edgeuq_runtime factory-install --root ... --bundle DIR --release N --repo ... --board ... --model ...

Every verb that changes the device takes its update lock (a second concurrent update exits
with "another update is running" after ``--lock-wait`` seconds) and repairs local corruption
(truncated state, broken ``current``, stray files) from the verified slots first.

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
    cfg = UpdateConfig(attempts=a.attempts, healthy_needed=a.healthy, delta=not a.no_delta,
                       lock_wait_s=a.lock_wait)
    out = OtaUpdater(root, config=cfg, repo_url=a.repo).update()
    if a.json:
        print(json.dumps(out, indent=2))
    elif out["status"] == "up-to-date" and out.get("same_bundle"):
        print(f"up to date: signed release {out['signed_release']} is the bundle already in slot {out['slot']} "
              "(same digest); nothing written")
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
    from .slots import link_slot, mark_good, read_state, status

    if a.mark_good:
        root = _root(a)
        pending = read_state(root).get("pending")
        if not pending or pending.get("slot") != link_slot(root):
            print("nothing on trial: the serving release is already confirmed")
        else:
            st = mark_good(root)
            print(f"marked release {pending.get('release')} in slot {st['good']} good (version floor {st['floor']})")
    st = status(_root(a))
    if a.json:
        print(json.dumps(st, indent=2))
        return 0
    print(f"device:   {st['root']}")
    for problem in st.get("needs_repair", []):
        print(f"repair:   {problem} (the next update, boot or rollback repairs it)")
    print(f"serving:  {st['serving']}  (current slot {st['current']}, version floor {st['floor']})")
    for s, info in st["slots"].items():
        if not (Path(st["root"]) / "slots" / s).exists():
            print(f"  slot {s}: empty")
            continue
        digest = (info.get("bundle_digest") or "")[:16]
        print(f"  slot {s}: release {info.get('release', '-')} {info.get('model_version', '')} "
              f"{'verified' if info['verified'] else 'NOT verified'} {digest}"
              f"{' REJECTED' if info.get('rejected') else ''}")
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


def _factory(a: argparse.Namespace) -> int:
    from .factory import install_factory
    try:
        from .updater import DEVICE_FILE, provision
    except ImportError as exc:
        raise OtaError(f"OTA needs the ota extra (pip install 'edgeuq-runtime[ota]'): {exc}") from None
    root = _root(a)
    repo = Path(a.repo).resolve().as_uri() if "://" not in a.repo else a.repo
    from ..bundle import load_bundle
    model = load_bundle(Path(a.bundle), verify=True).manifest.model_name  # refuse before storing anything
    if model != a.model:
        raise OtaError(f"factory bundle is model {model!r}, this device runs {a.model!r}; nothing stored")
    if not (root / DEVICE_FILE).exists():
        from .fetchers import fetcher_for
        try:
            fetcher_for(repo)
        except ValueError as exc:
            raise OtaError(str(exc)) from None
        provision(root, a.board, a.model, repo, Path(a.trust_root).read_bytes())
    out = install_factory(root, Path(a.bundle), a.release, a.model)
    print(f"factory image: release {out['release']} ({out['model_version']}) in slot {out['slot']}, marked good "
          f"(version floor {out['release']}); bundle {out['bundle_digest'][:16]}")
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
    up.add_argument("--lock-wait", type=float, default=0.0,
                    help="seconds to wait for another running update before giving up (default 0)")
    up.add_argument("--json", action="store_true")
    up.set_defaults(func=_update)
    st = sub.add_parser("status", help="slots, version floor, pending trial, the bundle being served")
    st.add_argument("--root")
    st.add_argument("--json", action="store_true")
    st.add_argument("--mark-good", action="store_true",
                    help="confirm the release on trial (e.g. a first install checked by hand): it becomes the floor")
    st.set_defaults(func=_status)
    fi = sub.add_parser("factory-install", help="write a factory bundle as the first, confirmed release")
    fi.add_argument("--root")
    fi.add_argument("--bundle", required=True, help="bundle directory from the factory image")
    fi.add_argument("--release", type=int, required=True, help="its release number (becomes the version floor)")
    fi.add_argument("--repo", required=True, help="repository URL the device updates from")
    fi.add_argument("--board", required=True)
    fi.add_argument("--model", required=True)
    fi.add_argument("--trust-root", required=True, help="bootstrap root.json shipped with the device")
    fi.set_defaults(func=_factory)
    rb = sub.add_parser("rollback", help="flip back to the previous verified slot")
    rb.add_argument("--root")
    rb.add_argument("--reason", default="operator request")
    rb.set_defaults(func=_rollback)
