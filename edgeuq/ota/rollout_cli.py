"""`edgeuq rollout start|status|promote|halt|evaluate|collect` (registered by edgeuq.ota.cli)."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

__all__ = ["register"]


def _policy(a: argparse.Namespace):
    from .rollout import RolloutPolicy

    return RolloutPolicy(max_abstain_increase=a.max_abstain_increase, max_ood_increase=a.max_ood_increase,
                         max_error_increase=a.max_error_increase, min_devices=a.min_devices,
                         min_windows=a.min_windows)


def _keys_kw(a: argparse.Namespace) -> dict:
    if not a.keys:
        raise SystemExit(f"error: rollout {a.action} signs the rollout target: pass --keys DIR (targets, snapshot, "
                         "timestamp keys)")
    return {"passphrase_file": Path(a.passphrase_file) if a.passphrase_file else None}


def _print_spec(spec) -> None:
    state = "HALTED" if spec.halted else f"{spec.percent:g} %"
    print(f"rollout of release {spec.release} ({spec.sha256[:12]}...): {state}; stages {list(spec.stages)}; "
          f"groups {list(spec.groups) or 'all'}; previous {spec.previous}")


def _cmd(a: argparse.Namespace) -> int:
    from . import rollout as R

    repo, keys = Path(a.repo), Path(a.keys) if a.keys else None
    if a.action == "status":
        st = R.status(repo, a.board, a.model, Path(a.reports) if a.reports else None, _policy(a))
        if a.json:
            print(json.dumps(st, indent=2))
            return 0
        ch = st["channel"]
        print(f"channel: release {ch['release']} ({ch['sha256'][:12]}...)")
        if st["rollout"] is None or not st["applies"]:
            print("rollout: none for this release (it goes to every device)")
        else:
            _print_spec(R.parse_rollout(json.dumps(st["rollout"]).encode()))
        v = st.get("verdict")
        if v:
            for side in ("new", "old"):
                g = v[side]
                rate = (lambda x: "-" if x is None else f"{x:.3f}")
                print(f"  {side}: {g['devices']} devices, {g['windows']} windows, abstain {rate(g['abstain_rate'])}, "
                      f"OOD {rate(g['ood_rate'])}, errors {g['errors']}, p50 {g['latency_p50_ms']} ms, "
                      f"p99 {g['latency_p99_ms']} ms")
            c = st["canary"]
            print(f"  canaries on the new release: {c['devices']} devices, {c['windows']} windows, "
                  f"{c['errors']} failed")
            print(f"verdict: {v['action']}" + "".join(f"\n  - {r}" for r in v["reasons"]))
            for p in st["refused_reports"]:
                print(f"  refused report {p}")
        return 0
    if a.action == "start":
        if a.percent is None:
            raise SystemExit("error: rollout start needs --percent")
        spec = R.start(repo, keys, a.board, a.model, a.percent, stages=a.stages or (), groups=a.group or (),
                       **_keys_kw(a))
    elif a.action == "promote":
        spec = R.promote(repo, keys, a.board, a.model, to=a.percent, **_keys_kw(a))
    elif a.action == "halt":
        spec = R.halt(repo, keys, a.board, a.model, **_keys_kw(a))
    elif a.action == "evaluate":
        v = R.auto_evaluate(repo, keys, a.board, a.model, Path(a.reports), _policy(a), **_keys_kw(a))
        print(f"verdict: {v.action}" + "".join(f"\n  - {r}" for r in v.reasons))
        return 0
    else:  # collect
        if not a.reports:
            raise SystemExit("error: rollout collect needs --reports DIR")
        hook = None
        if a.auto_halt:
            kw = _keys_kw(a)
            hook = lambda: R.auto_evaluate(repo, keys, a.board, a.model, Path(a.reports), _policy(a), **kw)  # noqa: E731
        with R.Collector(Path(a.reports), on_report=hook, port=a.port) as c:
            print(f"collecting health reports at {c.url} into {a.reports}"
                  + (" (auto-halt on)" if a.auto_halt else "") + "; Ctrl-C stops", flush=True)
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        return 0
    _print_spec(spec)
    return 0


def register(sub) -> None:
    r = sub.add_parser("rollout", help="staged rollouts: start, status (fleet health), promote, halt, evaluate, collect")
    r.add_argument("action", choices=["start", "status", "promote", "halt", "evaluate", "collect"])
    r.add_argument("--repo", required=True, help="repository directory")
    r.add_argument("--board", required=True)
    r.add_argument("--model", required=True)
    r.add_argument("--keys", help="key directory (start, promote, halt, evaluate, collect --auto-halt)")
    r.add_argument("--passphrase-file")
    r.add_argument("--percent", type=float, help="start: share of devices; promote: target share (default next stage)")
    r.add_argument("--stages", type=lambda s: [float(x) for x in s.split(",")], help="e.g. 5,25,100")
    r.add_argument("--group", action="append", help="only devices in this group (repeatable)")
    r.add_argument("--reports", help="folder of health reports (file drop; the collector writes there too)")
    r.add_argument("--port", type=int, default=8765, help="collect: port on 127.0.0.1")
    r.add_argument("--auto-halt", action="store_true", help="collect: evaluate after each report, halt when unhealthy")
    r.add_argument("--max-abstain-increase", type=float, default=0.10)
    r.add_argument("--max-ood-increase", type=float, default=0.10)
    r.add_argument("--max-error-increase", type=float, default=0.01)
    r.add_argument("--min-devices", type=int, default=3)
    r.add_argument("--min-windows", type=int, default=60)
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=_cmd)
