"""The streaming loop feeding the live view: bundle info, OTA state (read-only), timed
decisions with class probabilities, a stats ticker, and a restartable source."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from .hub import Hub

__all__ = ["TimedDiagnoser", "bundle_info", "ota_summary", "LiveFeed"]


class TimedDiagnoser:
    """Wraps a :class:`~edgeuq_runtime.stream.Diagnoser`: times each ``decide`` and keeps
    the last decision (for its class probabilities). Everything else is delegated, except
    micro-batching: the stream loop decides window by window through :meth:`decide` here."""

    batched = False

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.last: Any = None
        self.last_compute: Optional[float] = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def decide(self, window):
        self.last, self.last_compute = None, None
        t0 = time.perf_counter()
        try:
            d = self._inner.decide(window)
        finally:
            self.last_compute = time.perf_counter() - t0
        self.last = d
        return d


def ota_summary(root: Optional[Path]) -> Optional[Dict[str, Any]]:
    """``slots.status`` of an OTA root, read-only (never ``boot``/``record_window``)."""
    if root is None:
        return None
    from ..ota.errors import OtaError
    from ..ota.slots import status

    try:
        st = status(Path(root))
    except (OtaError, OSError, ValueError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {k: st.get(k) for k in ("current", "good", "floor", "pending", "rejected", "serving", "slots", "error")}


def bundle_info(diagnoser: Any, source: Any, hop: int, ota: Optional[Dict[str, Any]] = None,
                bundle_path: Optional[Path] = None, normal: Optional[str] = None) -> Dict[str, Any]:
    rt = diagnoser.rt
    m = rt.manifest
    cal = getattr(diagnoser, "cal", None)
    thresholds: Dict[str, Any] = {}
    if cal is not None:
        ab = cal.cal.abstain
        thresholds = {"epistemic": ab.epistemic, "density": ab.density, "combined": ab.combined,
                      "false_alarm_rate": ab.false_alarm_rate}
    slot = None
    if ota and not ota.get("error"):
        serving = ota.get("serving")
        slot = ota.get("current")
        if serving and bundle_path is not None and Path(serving).resolve() != Path(bundle_path).resolve():
            slot = None   # the bundle being served is not the OTA root's current one
    rate = float(source.rate)
    return {"model": m.model_name, "version": m.model_version, "digest": getattr(diagnoser, "digest", None),
            "classes": list(rt.class_names),
            "normal": normal or ("normal" if "normal" in rt.class_names else rt.class_names[0]),
            "thresholds": thresholds, "slot": slot, "ota": ota, "source": getattr(source, "description", ""),
            "simulated": bool(getattr(source, "simulated", False)), "rate_hz": rate, "hop": int(hop),
            "window": int(rt.input_length), "hop_seconds": hop / rate,
            "adaptive": bool(getattr(diagnoser, "adaptive", False))}


class LiveFeed:
    """Runs ``run_stream`` into a hub: adds ``probs`` to decisions, feeds live stats, ticks
    stats every ``tick`` s, re-reads the OTA state when its state file changes. With
    ``reopen`` the source is re-opened after it ends (a replayed file, a restarted producer)."""

    def __init__(self, hub: Hub, diagnoser: Any, open_source: Callable[[], Any], hop: Optional[int] = None,
                 alarm: Any = None, ota_root: Optional[Path] = None, bundle_path: Optional[Path] = None,
                 reopen: bool = False, max_windows: Optional[int] = None, max_stalls: Optional[int] = None,
                 tick: float = 1.0) -> None:
        self.hub, self.diag = hub, TimedDiagnoser(diagnoser)
        self.open_source, self.alarm, self.reopen = open_source, alarm, reopen
        self.hop = int(hop or diagnoser.rt.input_length)
        self.ota_root, self.bundle_path = ota_root, bundle_path
        self.max_windows, self.max_stalls, self.tick = max_windows, max_stalls, float(tick)
        self.stop_event = threading.Event()
        self.source: Any = None
        self._signal_s = 0.0
        self._ota_mtime: Optional[float] = None
        self._prepared = False

    def _emit(self, rec: Dict[str, Any]) -> None:
        if rec.get("type") == "decision":
            d = self.diag.last
            probs = getattr(d, "probs", None) if d is not None else None
            if probs is not None:
                rec["probs"] = [round(float(p), 4) for p in probs]
            self.hub.publish(rec, self.diag.last_compute, self._signal_s)
        else:
            self.hub.publish(rec)
        if self.stop_event.is_set():
            raise _Stop()

    def _ota_changed(self) -> bool:
        if self.ota_root is None:
            return False
        try:
            mtime = os.stat(Path(self.ota_root) / "state.json").st_mtime
        except OSError:
            mtime = -1.0
        changed = mtime != self._ota_mtime
        self._ota_mtime = mtime
        return changed

    def refresh_info(self) -> None:
        ota = ota_summary(self.ota_root) if self.ota_root is not None else None
        self.hub.set_info(bundle_info(self.diag, self.source, self.hop, ota, self.bundle_path,
                                      getattr(self.alarm, "normal", None)))

    def _ticker(self) -> None:
        while not self.stop_event.wait(self.tick):
            self.hub.publish_stats()
            if self._ota_changed():
                self.refresh_info()

    def prepare(self) -> None:
        """Open the source and publish the bundle/OTA info (before the server answers, so the
        first page already shows them); :meth:`run` then starts with this source."""
        self.source = self.open_source()
        self._signal_s = self.hop / float(self.source.rate)
        self._ota_changed()
        self.refresh_info()
        self._prepared = True

    def run(self) -> None:
        """Blocking: stream until the source ends (and is not re-opened), ``max_windows`` or :meth:`stop`."""
        from ..stream.loop import run_stream

        ticker = threading.Thread(target=self._ticker, name="edgeuq-live-tick", daemon=True)
        started = False
        try:
            while not self.stop_event.is_set():
                if not self._prepared:
                    self.prepare()
                self._prepared = False
                if not started:
                    ticker.start()
                    started = True
                try:
                    run_stream(self.diag, self.source, self._emit, hop=self.hop, alarm=self.alarm,
                               max_windows=self.max_windows, max_stalls=self.max_stalls)
                except _Stop:
                    break
                finally:
                    self.source.close()
                if not self.reopen or self.max_windows is not None:
                    break
                self.hub.publish({"type": "status", "event": "restarted", "message": "source re-opened",
                                  "time": time.time()})
                self.stop_event.wait(0.5)
        finally:
            self.stop_event.set()

    def stop(self) -> None:
        self.stop_event.set()


class _Stop(Exception):
    pass
