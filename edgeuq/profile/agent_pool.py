"""Timing agents taken from a TVM RPC tracker's pool: ``--tracker HOST:PORT --key KEY``.

Boards run ``python -m edgeuq_runtime agent --tracker T --key K``; each agent joins the tracker's
pool ``edgeuq-agent.K`` (never ``K``, the pool of the TVM RPC servers of the same boards; see
:mod:`edgeuq_runtime.tracker`). :meth:`AgentPool.profile` asks the tracker for a free agent of
the key (waiting up to ``wait_s``), checks that what it was handed is an edgeuq timing agent of
that pool (``/v1/health``), sends the bundle with the tracker's matchkey, and returns the report
and the board that measured it. The agent goes back into the pool after that one request: a
measurement holds a board only while it is timed, so N workers share M boards whatever N and M.

Errors (each an :class:`~edgeuq.profile.agent_client.AgentError`, one line on the CLI):

* :class:`NoFreeBoard`: no agent of the key became free within ``wait_s`` (says how many the
  tracker lists, free and waiting);
* :class:`BoardLost`: the agent stopped answering mid-measurement (died, network gone), or the
  tracker dropped the request;
* :class:`NotAnAgent`: the tracker handed out something that is not an edgeuq timing agent of
  the pool (e.g. a TVM RPC server registered under an agent key);
* a wrong token or a refused bundle: the agent's own refusal (401 / 422), as with ``--agent``.

``NoFreeBoard`` and ``BoardLost`` carry ``retry_trial = True``: a search trial they end is failed
and run again with the same parameters (:func:`edgeuq.compress.search.run_search_with_failures`).
"""
from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from .agent_client import AgentError, agent_health, agent_profile, packed_bundle

__all__ = ["AgentPool", "NoFreeBoard", "BoardLost", "NotAnAgent", "DEFAULT_WAIT_S"]

DEFAULT_WAIT_S = 300.0
_STALE_TRIES = 3


class NoFreeBoard(AgentError):
    retry_trial = True


class BoardLost(AgentError):
    retry_trial = True


class NotAnAgent(AgentError):
    retry_trial = False


@dataclass(frozen=True)
class AgentPool:
    """The timing agents of board key ``key`` in the tracker at ``tracker`` (``HOST:PORT``)."""

    tracker: str
    key: str
    token: str
    wait_s: float = DEFAULT_WAIT_S
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        from edgeuq_runtime.tracker import agent_pool_key, parse_tracker

        try:
            parse_tracker(self.tracker)
            agent_pool_key(self.key)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        if not self.wait_s > 0:
            raise ValueError(f"the wait for a free board must be > 0 s, got {self.wait_s!r}")

    @property
    def pool_key(self) -> str:
        from edgeuq_runtime.tracker import agent_pool_key

        return agent_pool_key(self.key)

    @property
    def label(self) -> str:
        return f"the boards of key {self.key} through tracker {self.tracker}"

    def status(self) -> Dict[str, Any]:
        """``{"free", "pending", "agents": [HOST:PORT, ...]}`` of the pool, from the tracker's summary."""
        from edgeuq_runtime.tracker import TrackerConnection, TrackerError

        try:
            with TrackerConnection(self.tracker) as t:
                summary = t.summary()
        except (TrackerError, OSError) as exc:
            raise BoardLost(f"cannot read the tracker {self.tracker}'s summary: {exc}") from None
        queue = summary.get("queue_info", {}).get(self.pool_key, {})
        agents = [f"{s['addr'][0]}:{s['addr'][1]}" for s in summary.get("server_info", [])
                  if s.get("key") == "server:" + self.pool_key and isinstance(s.get("addr"), list)]
        return {"free": int(queue.get("free", 0)), "pending": int(queue.get("pending", 0)), "agents": agents}

    def _request(self, log: Callable[[str], None]) -> Tuple[str, str]:
        """A free agent from the tracker: ``(HOST:PORT, matchkey)``."""
        from edgeuq_runtime.tracker import TrackerConnection, TrackerError

        try:
            conn = TrackerConnection(self.tracker)
        except TrackerError as exc:
            raise BoardLost(str(exc)) from None
        with conn:
            try:
                conn.settimeout(1.0)  # a free board is handed out at once: no message when there is one
                host, port, matchkey = conn.request(self.pool_key, user=f"edgeuq@{socket.gethostname()}",
                                                    timeout_s=min(1.0, self.wait_s))
                return f"{host}:{port}", matchkey
            except socket.timeout:
                pass
            except (OSError, TrackerError, ValueError) as exc:
                raise BoardLost(f"the tracker {self.tracker} dropped the request for {self.pool_key}: {exc}") from None
        st = self.status()
        log(f"waiting up to {self.wait_s:g} s for a free board of key {self.key} at tracker {self.tracker} "
            f"({len(st['agents'])} agent(s) registered, {st['free']} free)")
        try:
            with TrackerConnection(self.tracker) as conn:
                host, port, matchkey = conn.request(self.pool_key, user=f"edgeuq@{socket.gethostname()}",
                                                    timeout_s=self.wait_s)
                return f"{host}:{port}", matchkey
        except socket.timeout:
            st = self.status()
            raise NoFreeBoard(
                f"no free board of key {self.key} at tracker {self.tracker} within {self.wait_s:g} s "
                f"(the tracker lists {len(st['agents'])} agent(s) of pool {self.pool_key}, {st['free']} free, "
                f"{st['pending']} request(s) waiting"
                + ("; start one: python -m edgeuq_runtime agent --tracker T --key K" if not st["agents"] else "")
                + ")") from None
        except (OSError, TrackerError, ValueError) as exc:
            raise BoardLost(f"the tracker {self.tracker} dropped the request for {self.pool_key}: {exc}") from None

    def _check_agent(self, agent: str) -> Dict[str, Any]:
        try:
            health = agent_health(agent, token=self.token, timeout_s=30.0)
        except AgentError as exc:
            if exc.status is not None:  # it answered HTTP: the agent's own refusal (e.g. the token)
                raise
            if isinstance(exc.cause, ConnectionRefusedError):  # nothing listens any more: it died
                raise BoardLost(f"the board {agent} (key {self.key}, tracker {self.tracker}) is gone: {exc}") from None
            raise NotAnAgent(f"{agent}, handed out by the tracker {self.tracker} for {self.pool_key}, did not answer "
                             f"as an edgeuq timing agent ({exc}): a TVM RPC server registered under an agent key?"
                             ) from None
        pool = health.get("pool") if isinstance(health, dict) else None
        if not isinstance(health, dict) or health.get("agent") != "edgeuq_runtime" or not isinstance(pool, dict) \
                or pool.get("key") != self.pool_key:
            raise NotAnAgent(f"{agent}, handed out by the tracker {self.tracker} for {self.pool_key}, is not an agent "
                             f"of that pool (it says agent {health.get('agent') if isinstance(health, dict) else '?'!r}"
                             f", pool {pool!r})")
        return health

    def profile(self, bundle: Any, *, samples: Sequence[int] = (1, 8, 32), warmup: int = 5, repeats: int = 50,
                seed: int = 0, raw: bool = False, exclude: Sequence[str] = (),
                log: Callable[[str], None] = print) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        """Time ``bundle`` on a free agent of the key: ``(agent report, board)``, where board is
        ``{"location": "agent", "key", "tracker", "agent": HOST:PORT, "hostname", "machine"}``.
        ``exclude``: agents (``HOST:PORT``) not to use; one the tracker hands out anyway is left
        unused (its matchkey lapses and it re-registers a few seconds later) and another is asked for."""
        packed = packed_bundle(bundle)  # before taking a board: it is held only while it times
        skipped: set = set()
        attempt = 0
        while attempt < _STALE_TRIES:
            agent, matchkey = self._request(log)
            if agent in set(exclude):
                if agent in skipped:  # the tracker has no other free agent of the key
                    raise NoFreeBoard(f"no free board of key {self.key} at tracker {self.tracker} other than "
                                      f"{sorted(set(exclude))}")
                skipped.add(agent)
                continue
            attempt += 1
            health = self._check_agent(agent)
            try:
                doc = agent_profile(agent, bundle, token=self.token, samples=samples, warmup=warmup,
                                    repeats=repeats, seed=seed, raw=raw, packed=packed, match_key=matchkey,
                                    timeout_s=self.timeout_s)
            except AgentError as exc:
                if exc.status == 409 and attempt < _STALE_TRIES:  # our ticket went stale: ask again
                    log(f"agent {agent}: {exc}; asking the tracker again")
                    continue
                if exc.status is None:
                    raise BoardLost(f"the board {agent} (key {self.key}, tracker {self.tracker}) stopped answering "
                                    f"mid-measurement: {exc}") from None
                raise
            board = {"location": "agent", "key": self.key, "tracker": self.tracker, "agent": agent,
                     "hostname": health.get("hostname"), "machine": health.get("machine")}
            return doc, board
        raise BoardLost(f"key {self.key} at {self.tracker}: {_STALE_TRIES} tickets in a row were stale")  # unreachable
