"""Distributed ``edgeuq search``: optuna's shared storages and worker processes (no scheduler of
our own: optuna's storage is the queue).

* ``--storage postgresql+psycopg2://USER@HOST:PORT/DB`` (or any SQLAlchemy URL optuna's
  ``RDBStorage`` takes, e.g. ``sqlite:///PATH`` for one machine): workers anywhere share one
  study. Each running trial beats a heartbeat (``heartbeat_interval``); a trial whose worker
  died (no beat for ``grace_period`` seconds) is failed by the next worker that asks
  (``optuna.storages.fail_stale_trials``) and re-enqueued with the same parameters by
  ``RetryHeartbeatStaleTrialCallback`` (``max_retry``), so a worker's death costs only its trial's time.
* ``--storage journal:PATH`` (or a plain path): ``JournalStorage(JournalFileBackend(PATH))`` on a
  shared file system. optuna 5's journal storage has no heartbeat: a trial whose worker died
  stays RUNNING and is **not** retried (the search still finishes: the other workers count only
  finished trials); use the RDB storage when workers may die.

``--workers N`` starts N worker processes here (``spawn``: each imports and builds its own
evaluator; with the trials' latency measured on this host, N workers share its cores). Each worker
runs in its own session, as if started from its own shell: Linux's autogroup scheduling
(``kernel.sched_autogroup_enabled``, on by default) gives one CPU share to each session, so while
any other session is busy, N workers in the command's session would share one share and run
barely faster than one (two quick checks on 2 cores shared with other jobs: 2 busy processes in
one session 1.1x and 1.3x one, in sessions of their own 2.0x and 2.8x). The coordinating process stops them on the way
out (also when interrupted); a terminal's Ctrl-C reaches it, not them. Every
worker runs the same ask/tell loop until the study holds the requested number of finished trials,
so the total may overshoot by up to N-1 trials (trials already running when the count is reached
are finished, not thrown away).
"""
from __future__ import annotations

import multiprocessing
import os
import time
from typing import Any, Callable, List, Mapping, Optional, Sequence

__all__ = ["open_storage", "storage_label", "run_workers", "HEARTBEAT_S", "GRACE_S", "MAX_RETRY"]

HEARTBEAT_S = 5
GRACE_S = 20
MAX_RETRY = 2
_RDB_PREFIXES = ("postgresql", "mysql", "sqlite", "oracle", "mssql")


def _is_rdb(spec: str) -> bool:
    scheme = spec.split("://", 1)[0] if "://" in spec else ""
    return scheme.split("+", 1)[0] in _RDB_PREFIXES


def storage_label(spec: str) -> str:
    """The storage without credentials, for logs and provenance."""
    if _is_rdb(spec):
        scheme, rest = spec.split("://", 1)
        if "@" in rest:
            cred, host = rest.rsplit("@", 1)
            user = cred.split(":", 1)[0]
            rest = f"{user}@{host}"
        return f"{scheme}://{rest}"
    return f"journal {spec[len('journal:'):] if spec.startswith('journal:') else spec}"


def open_storage(spec: str, *, heartbeat_s: int = HEARTBEAT_S, grace_s: int = GRACE_S, max_retry: int = MAX_RETRY):
    """An optuna storage for ``spec``: an RDB URL (heartbeat + retry of a dead worker's trial) or
    ``journal:PATH`` / ``PATH`` (journal file)."""
    import optuna
    from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend

    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("--storage must be an RDB URL (postgresql+psycopg2://...) or journal:PATH")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if _is_rdb(spec):
        if heartbeat_s < 1 or grace_s <= heartbeat_s:
            raise ValueError(f"heartbeat {heartbeat_s} s must be >= 1 and below the grace period {grace_s} s")
        return RDBStorage(spec, heartbeat_interval=int(heartbeat_s), grace_period=int(grace_s),
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=int(max_retry)),
                          engine_kwargs={"pool_pre_ping": True})
    if "://" in spec:
        raise ValueError(f"--storage {storage_label(spec)!r}: unknown URL scheme (RDB URLs start with "
                         f"{', '.join(_RDB_PREFIXES)}; a journal file is journal:PATH)")
    path = spec[len("journal:"):] if spec.startswith("journal:") else spec
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return JournalStorage(JournalFileBackend(path))


def _stop(procs: Sequence[Any]) -> None:
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
            p.join(timeout=10)


def _in_own_session(target: Callable[..., Any], args: Sequence[Any]) -> Any:
    """A worker's entry point: a session (and scheduling autogroup) of its own, then ``target``."""
    os.setsid()
    return target(*args)


def run_workers(n: int, target: Callable[..., Any], args: Sequence[Any] = (), timeout_s: Optional[float] = None,
                log: Callable[[str], None] = print, env: Optional[Mapping[str, str]] = None,
                own_session: bool = True) -> List[int]:
    """Run ``target(*args, worker_index)`` in ``n`` spawned processes; wait for all (or ``timeout_s``,
    then stop them) and return their exit codes. Every process is stopped on the way out, also
    when this one is interrupted. ``env``: environment variables the workers start with where this
    process has none of that name (e.g. thread-pool sizes, read when a worker loads its libraries).
    ``own_session``: each worker in a session of its own (its own CPU share under autogroup
    scheduling; see the module's text)."""
    if isinstance(n, bool) or int(n) < 1:
        raise ValueError(f"--workers must be >= 1, got {n!r}")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_in_own_session, args=(target, (*args, i))) if own_session else
             ctx.Process(target=target, args=(*args, i)) for i in range(int(n))]
    for i, p in enumerate(procs):
        p.name = f"edgeuq-search-worker-{i}"
    added = {k: str(v) for k, v in (env or {}).items() if k not in os.environ}
    try:
        os.environ.update(added)  # a spawned child copies this process's environment when it starts
        try:
            for p in procs:
                p.start()
        finally:
            for k in added:
                os.environ.pop(k, None)
        log(f"search: {len(procs)} workers started (pids {[p.pid for p in procs]})")
        deadline = None if timeout_s is None else time.monotonic() + float(timeout_s)
        for p in procs:
            p.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        late = [p.pid for p in procs if p.is_alive()]
        if late:
            log(f"search: workers {late} still running after {timeout_s:g} s: stopped")
    finally:
        _stop(procs)
    return [int(p.exitcode if p.exitcode is not None else -1) for p in procs]
