"""Placement by measurement on the board's timing agent (``edgeuq compile --agent HOST:PORT``).

TVM RPC times only CPU TVM libraries, so an ONNX Runtime candidate is "not measured" over RPC
and the board's default wins by absence. The agent (``python -m edgeuq_runtime agent``) runs
any bundle with the runtime's own executors, so every candidate is timed on the board: each
candidate graph goes into a small verified bundle (the candidate in its role, the exported
ONNX graph in the other role, which is not read), the agent times the stages, and the
candidate's figure is that role's stage (the trunk on one window, the head on S rows, as
:func:`edgeuq.lower.placement.graph_feeds`). Candidates are interleaved: ``rounds`` passes, each
in a seeded random order, each with ``repeats / rounds`` timed calls; a candidate's statistics
are over the calls of all its rounds (``raw=1``: the agent returns every timed call).

Before timing, the agent is asked for the board's CPU (``/v1/health``: machine and
``/proc/cpuinfo`` flags); a candidate whose library needs another architecture or a flag the
board lacks is excluded, named in the placement evidence (never sent, never timed).
"""
from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from ..profile.harness import LatencyStats
from .placement import BoardCpu, Measurer, Option, Timing, isa_unknown

__all__ = ["AgentMeasurer"]


class AgentMeasurer(Measurer):
    location = "remote"

    def __init__(self, art: Any, agent: str, token: str, samples: int, warmup: int = 3, repeats: int = 20,
                 rounds: int = 4, seed: int = 0) -> None:
        self.art, self.agent, self.token, self.samples = art, agent, token, int(samples)
        self.warmup, self.repeats, self.rounds, self.seed = int(warmup), int(repeats), max(1, int(rounds)), seed
        self.where = f"timing agent {agent}"
        self._board: Optional[BoardCpu] = None

    def board_cpu(self) -> BoardCpu:
        """The board's CPU as its agent reports it (``/v1/health``, asked once)."""
        if self._board is None:
            from ..profile.agent_client import AgentError, agent_health

            source = f"timing agent {self.agent} /v1/health"
            try:
                doc = agent_health(self.agent, token=self.token)
            except AgentError as exc:
                self._board = BoardCpu(None, None, f"{source} not answered: {exc}")
            else:
                flags = doc.get("cpu_flags")
                vendor = doc.get("cpu_vendor")
                self._board = BoardCpu(doc.get("machine") or None,
                                       None if flags is None else frozenset(map(str, flags)),
                                       source if flags is not None else f"{source}: no cpu_flags (an older agent?)",
                                       vendor=str(vendor) if isinstance(vendor, str) and vendor else None)
        return self._board

    def _bundle(self, role: str, option: Option, root: Path) -> Path:
        from ..bundle.build import BundleGraph, default_graphs, write_artifact_bundle

        graphs = dict(default_graphs(self.art))
        g = option.graph
        graphs[role] = BundleGraph(g.bundle_file(role), g.file, g.executor, dict(g.options))
        other = "head" if role == "trunk" else "trunk"
        if graphs[other].file == graphs[role].file:
            raise ValueError(f"bundle file names collide: {graphs[role].file}")
        backend = graphs[other].backend or "onnxruntime"
        write_artifact_bundle(self.art, root, "placement-candidate", "0", self.samples, graphs=graphs,
                              backend=backend, overwrite=True)
        return root

    def measure(self, role: str, options: Sequence[Option], feeds: Mapping[str, np.ndarray]) -> Dict[tuple, Timing]:
        from ..profile.agent_client import AgentError, agent_profile

        out: Dict[tuple, Timing] = {}
        with tempfile.TemporaryDirectory(prefix="edgeuq-placement-agent-") as tmp:
            bundles: Dict[tuple, Path] = {}
            board = self.board_cpu()
            for i, o in enumerate(options):
                unknown = isa_unknown(o, board)
                if unknown:
                    out[o.key] = unknown
                    continue
                try:
                    bundles[o.key] = self._bundle(role, o, Path(tmp) / f"c{i}")
                except (ValueError, OSError) as exc:
                    out[o.key] = f"not measured: no bundle for the agent ({type(exc).__name__}: {exc})"
            per_round = max(1, self.repeats // self.rounds)
            calls: Dict[tuple, List[float]] = {k: [] for k in bundles}
            order = random.Random(self.seed)
            env: Dict[str, Any] = {}
            for _ in range(self.rounds):
                keys = list(bundles)
                order.shuffle(keys)
                for k in keys:
                    if k in out:
                        continue
                    try:
                        doc = agent_profile(self.agent, bundles[k], token=self.token, samples=(self.samples,),
                                            warmup=self.warmup, repeats=per_round, raw=True)
                    except AgentError as exc:
                        out[k] = f"not measured: {exc}"
                        continue
                    env = doc.get("environment", env)
                    calls[k] += doc["stages"][str(self.samples)][role]["samples_ms"]
            if env:
                self.where = f"timing agent {self.agent} ({env.get('hostname')}, {env.get('machine')}, 1 thread)"
            for k, ms in calls.items():
                if k not in out:
                    out[k] = LatencyStats.from_samples(ms, f"{role} {'/'.join(k)}")
        return out
