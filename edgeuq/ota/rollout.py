"""Staged rollouts (host side): the signed rollout target, the health collector, and the verdict.

    spec = publish_staged(bundle, repo, keys, board, percent=10, stages=(10, 50, 100))
    with Collector(reports_dir, on_report=lambda: auto_evaluate(repo, keys, board, model, reports_dir)):
        ...                                     # devices POST health to http://127.0.0.1:PORT/report
    status(repo, board, model, reports_dir)     # `edgeuq rollout status`
    promote(repo, keys, board, model)           # next stage (or 100)
    halt(repo, keys, board, model)              # percent 0: updated devices roll back

The rollout is the signed target ``rollouts/<board>/<model>.json`` (format and device rule:
``edgeuq_runtime.ota.rollout``). Changing it is a targets-role publish: it needs the targets,
snapshot and timestamp keys (a rollout is a release in progress; the targets key is needed
for its duration, and for the automatic halt on the machine that evaluates).

The verdict compares pooled in-service counts of devices that run the rollout's release
with those of devices that run the previous one: the rollout halts when the abstention rate,
the OOD rate or the error rate of the new release exceeds the old one's by more than the
policy's threshold, once both sides have enough devices and windows.
"""
from __future__ import annotations

import http.server
import json
import re
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from edgeuq_runtime.ota import core
from edgeuq_runtime.ota.health import send_report, validate_report
from edgeuq_runtime.ota.rollout import RolloutSpec, parse_rollout, rollout_target_path

from .keys import keys_for_publish
from .localhttp import LocalHTTPServer
from .repository import EXPIRY_DAYS, TufRepository

__all__ = ["RolloutPolicy", "Aggregate", "Verdict", "RolloutError", "read_reports", "aggregate", "evaluate",
           "read_rollout", "set_rollout", "publish_staged", "start", "halt", "promote", "status", "auto_evaluate",
           "Collector"]


class RolloutError(ValueError):
    """A rollout command that cannot be done (no channel, halted rollout promoted, ...)."""


@dataclass(frozen=True)
class RolloutPolicy:
    max_abstain_increase: float = 0.10   # absolute increase of the pooled abstention rate
    max_ood_increase: float = 0.10       # absolute increase of the pooled OOD rate
    max_error_increase: float = 0.01     # absolute increase of errors per window
    min_devices: int = 3                 # updated devices reporting before any verdict
    min_windows: int = 60                # in-service windows on each side before any verdict

    def __post_init__(self) -> None:
        for k in ("max_abstain_increase", "max_ood_increase", "max_error_increase"):
            v = getattr(self, k)
            if not (isinstance(v, (int, float)) and 0 <= v <= 1):
                raise ValueError(f"RolloutPolicy.{k} must be in [0, 1], got {v!r}")
        for k in ("min_devices", "min_windows"):
            if not isinstance(getattr(self, k), int) or getattr(self, k) < 1:
                raise ValueError(f"RolloutPolicy.{k} must be an integer >= 1")


@dataclass(frozen=True)
class Aggregate:
    devices: int
    windows: int
    abstained: int
    ood: int
    errors: int
    abstain_rate: Optional[float]
    ood_rate: Optional[float]
    error_rate: Optional[float]
    latency_p50_ms: Optional[float]   # median over devices of their p50
    latency_p99_ms: Optional[float]   # worst device p99


@dataclass(frozen=True)
class Verdict:
    action: str                        # "halt", "continue" (healthy so far), "wait" (not enough data)
    reasons: Tuple[str, ...]
    new: Aggregate
    old: Aggregate

    def to_json(self) -> Dict[str, Any]:
        return {"action": self.action, "reasons": list(self.reasons), "new": asdict(self.new), "old": asdict(self.old)}


# -- reports -----------------------------------------------------------------------------------------
def read_reports(drop_dir: Path) -> Tuple[List[Dict[str, Any]], List[str]]:
    """Every well-formed report in ``drop_dir`` and, separately, one line per file refused."""
    reports, problems = [], []
    d = Path(drop_dir)
    for p in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            reports.append(validate_report(json.loads(p.read_text(encoding="utf-8"))))
        except (OSError, ValueError) as exc:
            problems.append(f"{p.name}: {exc}")
    return reports, problems


def _latest(reports: Sequence[Mapping[str, Any]]) -> List[Mapping[str, Any]]:
    """A device's reports are cumulative: keep its newest per (device, release digest, phase)."""
    best: Dict[Tuple[str, Any, str], Mapping[str, Any]] = {}
    for r in reports:
        k = (r["device_id"], r["sha256"], r["phase"])
        if k not in best or r.get("time", 0) >= best[k].get("time", 0):
            best[k] = r
    return list(best.values())


def aggregate(reports: Sequence[Mapping[str, Any]], select: Callable[[Mapping[str, Any]], bool],
              phase: str = "service") -> Aggregate:
    rows = [r for r in _latest(reports) if r["phase"] == phase and select(r)]
    w = sum(r["windows"] for r in rows)
    a, o, e = (sum(r[k] for r in rows) for k in ("abstained", "ood", "errors"))
    p50 = sorted(r["latency_p50_ms"] for r in rows if r["latency_p50_ms"] is not None)
    p99 = [r["latency_p99_ms"] for r in rows if r["latency_p99_ms"] is not None]
    return Aggregate(devices=len({r["device_id"] for r in rows}), windows=w, abstained=a, ood=o, errors=e,
                     abstain_rate=a / w if w else None, ood_rate=o / w if w else None, error_rate=e / w if w else None,
                     latency_p50_ms=p50[len(p50) // 2] if p50 else None, latency_p99_ms=max(p99) if p99 else None)


def evaluate(reports: Sequence[Mapping[str, Any]], spec: RolloutSpec, policy: RolloutPolicy = RolloutPolicy()) -> Verdict:
    """Compare the rollout's release with the previous one (NaN-safe; 'wait' until enough data)."""
    prev_sha = (spec.previous or {}).get("sha256")
    new = aggregate(reports, lambda r: r["sha256"] == spec.sha256)
    old = aggregate(reports, (lambda r: r["sha256"] == prev_sha) if prev_sha else (lambda r: r["sha256"] != spec.sha256))
    if new.devices < policy.min_devices or new.windows < policy.min_windows or old.windows < policy.min_windows:
        return Verdict("wait", (f"not enough data: new release {new.devices} devices / {new.windows} windows, "
                                f"previous {old.windows} windows (need {policy.min_devices} / {policy.min_windows})",),
                       new, old)
    reasons = []
    for what, n, o, limit in (("abstention rate", new.abstain_rate, old.abstain_rate, policy.max_abstain_increase),
                              ("OOD rate", new.ood_rate, old.ood_rate, policy.max_ood_increase),
                              ("error rate", new.error_rate, old.error_rate, policy.max_error_increase)):
        if not (n - o) <= limit:  # NaN-safe: a NaN rate halts
            reasons.append(f"{what} {n:.3f} on release {spec.release} vs {o:.3f} on the previous release "
                           f"(+{n - o:.3f} > {limit:g})")
    return Verdict("halt" if reasons else "continue", tuple(reasons), new, old)


# -- the signed rollout target ------------------------------------------------------------------------
def _channel(repo: TufRepository, board: str, model: str) -> Tuple[int, str, str]:
    cpath = core.channel_target_path(board, model)
    if cpath not in repo.targets.signed.targets:
        raise RolloutError(f"no channel {cpath!r} in the repository: publish a release for {board}/{model} first")
    obj = json.loads(repo.target_bytes(cpath))
    path = obj["target"]
    return int(obj["release"]), path, repo.targets.signed.targets[path].hashes["sha256"]


def _previous(repo: TufRepository, board: str, model: str, release: int) -> Optional[Dict[str, Any]]:
    prefix = core.bundle_target_path(board, model, 0).rsplit("/", 1)[0] + "/"
    older = {}
    for path, tf in repo.target_infos(prefix).items():
        m = re.fullmatch(r"r(\d+)\.tar", path[len(prefix):])
        if m and int(m.group(1)) < release:
            older[int(m.group(1))] = tf.hashes["sha256"]
    if not older:
        return None
    top = max(older)
    return {"release": top, "sha256": older[top]}


def read_rollout(repo: TufRepository, board: str, model: str) -> Optional[RolloutSpec]:
    rpath = rollout_target_path(board, model)
    if rpath not in repo.targets.signed.targets:
        return None
    return parse_rollout(repo.target_bytes(rpath))


def set_rollout(repo: TufRepository, board: str, model: str, percent: float, *, stages: Sequence[float] = (),
                groups: Sequence[str] = (), halted: bool = False) -> RolloutSpec:
    """Write the rollout target for the channel's current release (not yet signed)."""
    release, _, sha = _channel(repo, board, model)
    spec = RolloutSpec(release=release, sha256=sha, percent=float(percent), groups=tuple(groups), halted=bool(halted),
                       stages=tuple(float(s) for s in stages), previous=_previous(repo, board, model, release))
    data = json.dumps(spec.to_json(), sort_keys=True).encode()
    parse_rollout(data)  # the device's own parser validates what we sign
    repo.add_target(rollout_target_path(board, model), data)
    return spec


def _signed_change(repo_dir: Path, keydir: Path, change: Callable[[TufRepository], Any], passphrase: Any = None,
                   passphrase_file: Optional[Path] = None, expiry_days: Mapping[str, float] = EXPIRY_DAYS) -> Any:
    keys = keys_for_publish(keydir, repo_dir, passphrase=passphrase, passphrase_file=passphrase_file)
    repo = TufRepository.load(Path(repo_dir))
    repo.sync_keys(keys, expiry_days)
    out = change(repo)
    repo.publish(keys, expiry_days)
    repo.save(Path(repo_dir))
    return out


def publish_staged(bundle_dir: Path, repo_dir: Path, keydir: Path, board: str, *, percent: float,
                   stages: Sequence[float] = (), groups: Sequence[str] = (), passphrase: Any = None,
                   passphrase_file: Optional[Path] = None, expiry_days: Mapping[str, float] = EXPIRY_DAYS,
                   **release_kw: Any) -> Tuple[Any, RolloutSpec]:
    """Add a release *and* its rollout in one signed publish (no moment where it goes to 100 %)."""
    from .publish import add_release

    if not (Path(repo_dir) / "metadata" / "timestamp.json").exists():
        raise RolloutError(f"{repo_dir} has no repository yet: publish the first release with `edgeuq publish`")
    box: Dict[str, Any] = {}

    def change(repo: TufRepository) -> RolloutSpec:
        box["res"] = add_release(repo, Path(bundle_dir), board, **release_kw)
        model = box["res"].target.split("/")[2]
        return set_rollout(repo, board, model, percent, stages=stages, groups=groups)
    spec = _signed_change(repo_dir, keydir, change, passphrase, passphrase_file, expiry_days)
    return box["res"], spec


def start(repo_dir: Path, keydir: Path, board: str, model: str, percent: float, stages: Sequence[float] = (),
          groups: Sequence[str] = (), **kw: Any) -> RolloutSpec:
    return _signed_change(repo_dir, keydir, lambda r: set_rollout(r, board, model, percent, stages=stages,
                                                                   groups=groups), **kw)


def halt(repo_dir: Path, keydir: Path, board: str, model: str, **kw: Any) -> RolloutSpec:
    """Percent 0 and ``halted``: no new device installs it, updated devices roll back."""
    def change(repo: TufRepository) -> RolloutSpec:
        cur = read_rollout(repo, board, model)
        return set_rollout(repo, board, model, 0, stages=cur.stages if cur else (), groups=cur.groups if cur else (),
                           halted=True)
    return _signed_change(repo_dir, keydir, change, **kw)


def promote(repo_dir: Path, keydir: Path, board: str, model: str, to: Optional[float] = None, **kw: Any) -> RolloutSpec:
    """The next stage above the current percentage (or ``to``; 100 after the last stage)."""
    def change(repo: TufRepository) -> RolloutSpec:
        cur = read_rollout(repo, board, model)
        release, _, sha = _channel(repo, board, model)
        if cur is None or cur.release != release or cur.sha256 != sha:
            raise RolloutError(f"release {release} of {board}/{model} has no staged rollout (it goes to every device)")
        if cur.halted:
            raise RolloutError(f"the rollout of release {release} is halted (its devices rolled back and reject it); "
                               "publish a fixed release instead")
        nxt = to if to is not None else next((s for s in sorted(cur.stages) if s > cur.percent), 100.0)
        if not nxt > cur.percent:
            raise RolloutError(f"promote to {nxt:g} % is not above the current {cur.percent:g} %")
        return set_rollout(repo, board, model, nxt, stages=cur.stages, groups=cur.groups)
    return _signed_change(repo_dir, keydir, change, **kw)


def status(repo_dir: Path, board: str, model: str, drop_dir: Optional[Path] = None,
           policy: RolloutPolicy = RolloutPolicy()) -> Dict[str, Any]:
    repo = TufRepository.load(Path(repo_dir))
    spec = read_rollout(repo, board, model)
    release, path, sha = _channel(repo, board, model)
    out: Dict[str, Any] = {"channel": {"release": release, "target": path, "sha256": sha},
                           "rollout": spec.to_json() if spec else None,
                           "applies": bool(spec and spec.release == release and spec.sha256 == sha)}
    if drop_dir is not None and spec is not None:
        reports, problems = read_reports(Path(drop_dir))
        out["verdict"] = evaluate(reports, spec, policy).to_json()
        out["canary"] = asdict(aggregate(reports, lambda r: r["sha256"] == spec.sha256, phase="canary"))
        out["reports"], out["refused_reports"] = len(reports), problems
    return out


def auto_evaluate(repo_dir: Path, keydir: Path, board: str, model: str, drop_dir: Path,
                  policy: RolloutPolicy = RolloutPolicy(), **kw: Any) -> Verdict:
    """Evaluate the reports; on a ``halt`` verdict halt the rollout (once). Returns the verdict."""
    repo = TufRepository.load(Path(repo_dir))
    spec = read_rollout(repo, board, model)
    release, _, sha = _channel(repo, board, model)
    if spec is None or spec.release != release or spec.sha256 != sha:
        raise RolloutError(f"release {release} of {board}/{model} has no staged rollout to evaluate")
    reports, _ = read_reports(Path(drop_dir))
    verdict = evaluate(reports, spec, policy)
    if verdict.action == "halt" and not spec.halted:
        halt(repo_dir, keydir, board, model, **kw)
    return verdict


# -- the collector --------------------------------------------------------------------------------------
class Collector(LocalHTTPServer):
    """An HTTP collector on 127.0.0.1 (stdlib): ``POST /report`` with one JSON report; each
    accepted report is dropped into ``drop_dir`` (the same folder devices may write to directly),
    then ``on_report()`` runs (serialized), e.g. :func:`auto_evaluate`."""

    URL_PATH = "/report"

    def __init__(self, drop_dir: Path, on_report: Optional[Callable[[], Any]] = None, port: int = 0,
                 max_body: int = 64 * 1024) -> None:
        self.drop_dir = Path(drop_dir)
        self.on_report = on_report
        self.lock = threading.Lock()
        self.accepted = 0
        self.refused: List[str] = []
        self.callback_errors: List[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                if self.path.rstrip("/") != "/report":
                    return self.send_error(404)
                try:
                    n = int(self.headers.get("Content-Length", "-1"))
                except ValueError:
                    n = -1
                if not 0 <= n <= max_body:
                    return self.send_error(413 if n > max_body else 411)
                try:
                    rep = validate_report(json.loads(self.rfile.read(n).decode("utf-8")))
                except (UnicodeDecodeError, ValueError) as exc:
                    with outer.lock:
                        outer.refused.append(str(exc))
                    return self.send_error(400, str(exc)[:200])
                with outer.lock:
                    send_report(rep, str(outer.drop_dir))
                    outer.accepted += 1
                    if outer.on_report is not None:
                        try:
                            outer.on_report()
                        except Exception as exc:  # the device's report is stored; the evaluation failed
                            outer.callback_errors.append(f"{type(exc).__name__}: {exc}")
                self.send_response(204)
                self.end_headers()

        self._listen(Handler, port)
