"""`edgeuq keys` and `edgeuq publish` (registered through edgeuq.cli's command-module hook)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List

__all__ = ["register"]


def _role_ints(items: List[str], what: str) -> Dict[str, int]:
    out = {}
    for item in items or []:
        role, _, n = item.partition("=")
        if not n.isdigit():
            raise SystemExit(f"error: {what} must look like ROLE=N, got {item!r}")
        out[role] = int(n)
    return out


def _cmd_keys(a: argparse.Namespace) -> int:
    from .keys import ROLES, generate_keys, migrate_keys, read_index, rotate_key

    pwf = Path(a.passphrase_file) if a.passphrase_file else None
    if a.action == "generate":
        index = generate_keys(Path(a.keydir), _role_ints(a.threshold, "--threshold"), _role_ints(a.count, "--count"),
                              passphrase_file=pwf)
    elif a.action == "rotate":
        if not a.role:
            raise SystemExit("error: keys rotate needs a ROLE")
        index = rotate_key(Path(a.keydir), a.role, a.new_threshold, a.new_count, passphrase_file=pwf)
    elif a.action == "migrate":
        index = migrate_keys(Path(a.keydir), passphrase_file=pwf)
        print(f"migrated {a.keydir}: private keys encrypted, one folder per role; keep root/ and targets/ offline")
    else:
        index = read_index(Path(a.keydir))
    for role in ROLES:
        e = index["roles"][role]
        print(f"{role:<10} threshold {e['threshold']}  current {[k['keyid'][:12] for k in e['current']]}  "
              f"retired {len(e['retired'])}")
    if a.action == "rotate" and a.role == "root":
        print("the next `edgeuq publish` signs a new root version with the old and the new root keys: keep the "
              "retired root key files (root/) at hand for it")
    elif a.action == "rotate":
        print("the next `edgeuq publish` signs a new root version listing the new key (it loads the root keys)")
    return 0


def _print_expiry(repo, warn_days: float) -> None:
    from .repository import expiry_report

    for role, when, left, warn in expiry_report(repo, warn_days):
        line = f"  {role:<10} expires {when.isoformat()} ({left:.2f} days)"
        if warn:
            line += f"  WARNING: within {warn_days:g} days; run `edgeuq publish --refresh` (or rotate) before then"
        print(line)


def _expiry_days(a: argparse.Namespace) -> Dict[str, float]:
    from .repository import EXPIRY_DAYS

    expiry = dict(EXPIRY_DAYS)
    for role in expiry:
        v = getattr(a, f"expire_{role}")
        if v is not None:
            expiry[role] = v
    return expiry


def _cmd_publish(a: argparse.Namespace) -> int:
    import numpy as np

    from .canaries import add_canaries, synthetic_windows
    from .publish import publish_bundle

    if a.refresh:
        from .publish import refresh_repository

        if a.bundle:
            raise SystemExit("error: publish --refresh re-signs snapshot and timestamp only; give no bundle")
        repo = refresh_repository(Path(a.repo), Path(a.keys), _expiry_days(a),
                                  passphrase_file=Path(a.passphrase_file) if a.passphrase_file else None)
        print(f"refreshed {a.repo}: snapshot v{repo.snapshot.signed.version}, timestamp "
              f"v{repo.timestamp.signed.version}, targets v{repo.targets.signed.version} unchanged")
        _print_expiry(repo, a.warn_days)
        return 0
    if not a.bundle:
        raise SystemExit("error: publish needs a BUNDLE directory (or --refresh)")
    if not a.board:
        raise SystemExit("error: publish needs --board")
    bundle = Path(a.bundle)
    if not a.allow_unknown_board:
        from ..catalog import get_board

        get_board(a.board)  # a typo would publish to a channel no device reads
    if a.canaries or a.synthetic_canaries:
        from edgeuq_runtime import load_bundle

        length = load_bundle(bundle, verify=True).manifest.input.length
        windows = (np.load(a.canaries, allow_pickle=False) if a.canaries
                   else synthetic_windows(length, a.synthetic_canaries, seed=a.canary_seed))
        spec = add_canaries(bundle, windows, seed=a.canary_seed, mi_tolerance=a.mi_tolerance,
                            latency_budget_ms=a.latency_budget_ms)
        print(f"canaries: {len(spec.expected_class)} windows, classes {list(spec.expected_class)}, "
              f"MI tolerance {spec.mi_tolerance:g} nats, latency budget {spec.latency_budget_ms:g} ms")
    expiry = _expiry_days(a)
    pwf = Path(a.passphrase_file) if a.passphrase_file else None
    if a.rollout_percent is not None:  # release + staged rollout in one signed publish
        from .rollout import publish_staged

        res, spec = publish_staged(bundle, Path(a.repo), Path(a.keys), a.board, percent=a.rollout_percent,
                                   stages=a.rollout_stages or (), groups=a.rollout_group or (), passphrase_file=pwf,
                                   expiry_days=expiry, release=a.release, delta_max_ratio=a.delta_max_ratio)
        print(f"staged rollout: {spec.percent:g} % of devices, stages {list(spec.stages)}")
    else:
        res = publish_bundle(bundle, Path(a.repo), Path(a.keys), a.board, release=a.release,
                             delta_max_ratio=a.delta_max_ratio, expiry_days=expiry, passphrase_file=pwf)
    print(f"published release {res.release}: {res.target} ({res.full_bytes} bytes), root v{res.root_version}, "
          f"targets v{res.targets_version}")
    for p, n in res.deltas.items():
        print(f"  delta {p}: {n} bytes ({n / res.full_bytes:.1%} of full)")
    for p, n in res.skipped_deltas.items():
        print(f"  no delta {p}: patch {n} bytes is not below {a.delta_max_ratio:.0%} of full")
    from .repository import TufRepository

    _print_expiry(TufRepository.load(Path(a.repo)), a.warn_days)
    print(f"serve {Path(a.repo) / 'metadata'} and {Path(a.repo) / 'targets'} from any static server; ship "
          f"{Path(a.repo) / 'metadata' / '1.root.json'} with the devices")
    return 0


def register(sub) -> None:
    k = sub.add_parser("keys", help="TUF signing keys (ed25519 per role): generate, rotate, show")
    k.add_argument("action", choices=["generate", "rotate", "show", "migrate"])
    k.add_argument("keydir")
    k.add_argument("role", nargs="?", help="role to rotate (root, targets, snapshot, timestamp)")
    k.add_argument("--threshold", action="append", metavar="ROLE=N", help="generate: signatures needed")
    k.add_argument("--count", action="append", metavar="ROLE=N", help="generate: keys per role")
    k.add_argument("--new-threshold", type=int, help="rotate: new threshold")
    k.add_argument("--new-count", type=int, help="rotate: number of new keys")
    k.add_argument("--passphrase-file", help="file holding the key passphrase (default: $EDGEUQ_OTA_PASSPHRASE "
                   "or a prompt)")
    k.set_defaults(func=_cmd_keys)
    p = sub.add_parser("publish", help="sign a bundle release into a static TUF repository (deltas, channel)")
    p.add_argument("bundle", nargs="?", help="bundle directory (omit with --refresh)")
    p.add_argument("--refresh", action="store_true",
                   help="only re-sign snapshot and timestamp (targets untouched); run before the timestamp expires")
    p.add_argument("--warn-days", type=float, default=7.0,
                   help="warn when a role's metadata expires within this many days (default 7)")
    p.add_argument("--repo", required=True, help="repository directory (created on first publish)")
    p.add_argument("--keys", required=True, help="key directory from `edgeuq keys generate`")
    p.add_argument("--board", help="board this release is for (required unless --refresh)")
    p.add_argument("--allow-unknown-board", action="store_true",
                   help="publish for a board name that is not in the board catalog")
    p.add_argument("--release", type=int, help="release number (default: newest + 1)")
    p.add_argument("--canaries", help=".npy of canary windows (n, length) to add to the bundle first")
    p.add_argument("--synthetic-canaries", type=int, default=0, metavar="N",
                   help="add N canary windows from the synthetic bearing generator")
    p.add_argument("--canary-seed", type=int, default=0)
    p.add_argument("--mi-tolerance", type=float, default=0.01, help="allowed |MI - expected| on the device (nats)")
    p.add_argument("--latency-budget-ms", type=float, help="per-window budget (default max(50, 10x host))")
    p.add_argument("--delta-max-ratio", type=float, default=0.5, help="publish a delta only below this share of full")
    for role in ("root", "targets", "snapshot", "timestamp"):
        p.add_argument(f"--expire-{role}", type=float, help=f"days until {role} metadata expires")
    p.add_argument("--passphrase-file", help="file holding the key passphrase (default: $EDGEUQ_OTA_PASSPHRASE "
                   "or a prompt)")
    p.add_argument("--rollout-percent", type=float, help="staged rollout: share of devices that take this release")
    p.add_argument("--rollout-stages", type=lambda s: [float(x) for x in s.split(",")], help="e.g. 5,25,100")
    p.add_argument("--rollout-group", action="append", help="staged rollout: only devices in this group")
    p.set_defaults(func=_cmd_publish)
    from .rollout_cli import register as register_rollout  # h4 hook: `edgeuq rollout ...`
    register_rollout(sub)
