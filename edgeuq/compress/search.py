"""``edgeuq search``: multi-objective compression search against measured latency.

Optuna's NSGA-II (ask/tell) over

* ``keep{i}``: the fraction of block i's heads and FFN neurons kept (Fisher-ranked
  within the block, least-squares mask tuning, physical removal — see :mod:`.kwon`);
* ``stochastic_from``: the first stochastic block (``depth`` = only the head is
  stochastic); MC dropout at inference needs no retraining, so every choice reuses
  the weights (MC-dropout checkpoints; other schemes keep their own stochastic part);
* ``bytes_fraction``: 1 = fp32, else the bytes budget (fraction of the fp32 graphs)
  handed to the exact multiple-choice knapsack of :mod:`edgeuq.quantize`;
* ``samples``: S.

Objectives: S-sample latency of one window measured through the device runtime on
this host (min), accuracy (max), OOD AUROC of mutual information (max), graph bytes
(min). Constraints (≤ 0 feasible): the board's ``latency_ms``, ``weight_bytes`` and
``mc_samples`` budgets. The journal file (``JournalFileBackend``) makes an interrupted
search resume where it stopped; Fisher-guided configurations (Kwon's global search at
a few MACs budgets) are enqueued first. Why optuna rather than pymoo: ask/tell with a
resumable journal and ``enqueue_trial`` are built in, and every variable here is
categorical. The Pareto set is recomputed from the trials with :func:`.pareto.non_dominated`.
"""
from __future__ import annotations

import math
import os
import socket
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..artifact import Artifact, ArtifactWriter
from .pareto import non_dominated

__all__ = ["SearchSpace", "SearchBudgets", "TrialRecord", "FailedTrial", "OBJECTIVES", "run_search",
           "run_search_with_failures", "pareto_trials",
           "choose_for_board", "SearchResult", "save_search_result", "plot_pareto"]

#: (metric, sense) in the order given to optuna.
OBJECTIVES: Tuple[Tuple[str, str], ...] = (("latency_ms", "min"), ("accuracy", "max"), ("ood_auroc", "max"),
                                           ("bytes", "min"))


@dataclass(frozen=True)
class SearchSpace:
    depth: int
    keep_ratios: Tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    stochastic_from: Tuple[int, ...] = ()
    bytes_fractions: Tuple[float, ...] = (1.0, 0.5, 0.3)
    samples: Tuple[int, ...] = (8, 16, 32)

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise ValueError("depth must be >= 1")
        if not self.stochastic_from:
            object.__setattr__(self, "stochastic_from", tuple(range(self.depth + 1)))
        for name in ("keep_ratios", "stochastic_from", "bytes_fractions", "samples"):
            if not getattr(self, name):
                raise ValueError(f"search space {name} is empty")
        if any(not 0 < r <= 1 for r in self.keep_ratios + self.bytes_fractions):
            raise ValueError("keep ratios and bytes fractions must be in (0, 1]")

    def suggest(self, trial) -> Dict[str, Any]:
        """Every variable in every trial (NSGA-II samples conditional parameters independently)."""
        p: Dict[str, Any] = {f"keep{i}": trial.suggest_categorical(f"keep{i}", list(self.keep_ratios))
                             for i in range(self.depth)}
        p["stochastic_from"] = trial.suggest_categorical("stochastic_from", list(self.stochastic_from))
        p["bytes_fraction"] = trial.suggest_categorical("bytes_fraction", list(self.bytes_fractions))
        p["samples"] = trial.suggest_categorical("samples", list(self.samples))
        return p


@dataclass(frozen=True)
class SearchBudgets:
    latency_ms: float = math.inf
    weight_bytes: float = math.inf
    mc_samples: float = math.inf

    def violations(self, m: Mapping[str, float]) -> List[float]:
        """≤ 0 where met (optuna's constraint convention); NaN metrics count as violated."""
        out = []
        for value, budget in ((m["latency_ms"], self.latency_ms), (m["bytes"], self.weight_bytes),
                              (m["samples"], self.mc_samples)):
            v = float(value) - float(budget)
            out.append(1e30 if math.isnan(v) else min(max(v, -1e30), 1e30))  # finite for optuna
        return out

    def met(self, m: Mapping[str, float]) -> bool:
        return all(v <= 0 for v in self.violations(m))


@dataclass(frozen=True)
class TrialRecord:
    number: int
    params: Mapping[str, Any]
    metrics: Mapping[str, float]
    feasible: bool
    artifact: str = ""
    #: where the latency objective was measured (``{"location": "host" | "agent", ...}``; for a
    #: tracker's pool also the board key, the tracker and the agent's HOST:PORT); None: not recorded
    latency_measured_on: Optional[Mapping[str, Any]] = None

    def objectives(self) -> List[float]:
        return [float(self.metrics[k]) for k, _ in OBJECTIVES]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FailedTrial:
    """A trial whose evaluation raised: counted and listed with its reason, never dropped silently."""

    number: int
    params: Mapping[str, Any]
    error: str

    def to_dict(self) -> dict:
        return asdict(self)


#: the UserWarning optuna's ``Study.ask`` gives on a heartbeat storage (silenced around our ask only)
_HEARTBEAT_ASK_WARNING = r"Heartbeat of storage is supposed to be used with Study\.optimize"

Evaluate = Callable[[int, Mapping[str, Any]], Tuple[Mapping[str, float], str]]


def _study(journal: Any, seed: int, population: int, budgets: SearchBudgets, name: str):
    """The study in ``journal``: a journal file path, or a storage spec / optuna storage from
    :func:`edgeuq.compress.distributed.open_storage` (RDB URL with heartbeat and retry)."""
    import optuna

    from .distributed import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.NSGAIISampler(population_size=population, seed=seed)  # constraints: set_constraint
    if isinstance(journal, (str, Path)):
        storage = open_storage(str(journal) if isinstance(journal, str) else f"journal:{journal}")
    else:
        storage = journal
    return optuna.create_study(study_name=name, storage=storage, sampler=sampler, load_if_exists=True,
                               directions=["minimize" if s == "min" else "maximize" for _, s in OBJECTIVES])


def _records(study) -> List[TrialRecord]:
    import optuna

    out = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        out.append(TrialRecord(t.number, dict(t.params), dict(t.user_attrs["metrics"]),
                               all(v <= 0 for v in t.user_attrs["constraints"]), t.user_attrs.get("artifact", ""),
                               t.user_attrs.get("latency_measured_on")))
    return out


def _failed(study) -> List[FailedTrial]:
    import optuna

    return [FailedTrial(t.number, dict(t.params), str(t.user_attrs.get("error", "unknown: no reason recorded")))
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))]


def run_search(space: SearchSpace, evaluate: Evaluate, budgets: SearchBudgets, n_trials: int, journal: Path,
               seed: int = 0, population: int = 8, enqueue: Sequence[Mapping[str, Any]] = (),
               study_name: str = "edgeuq-compress", log: Callable[[str], None] = print) -> List[TrialRecord]:
    """:func:`run_search_with_failures` without the failed trials (which it still logs)."""
    return run_search_with_failures(space, evaluate, budgets, n_trials, journal, seed=seed, population=population,
                                    enqueue=enqueue, study_name=study_name, log=log)[0]


def run_search_with_failures(space: SearchSpace, evaluate: Evaluate, budgets: SearchBudgets, n_trials: int,
                             journal: Path, seed: int = 0, population: int = 8,
                             enqueue: Sequence[Mapping[str, Any]] = (), study_name: str = "edgeuq-compress",
                             log: Callable[[str], None] = print,
                             max_retry: Optional[int] = None) -> Tuple[List[TrialRecord], List[FailedTrial]]:
    """Run until the journal holds ``n_trials`` finished trials (resuming a previous run); return them all,
    and every failed trial of the journal (this run's and earlier ones) with its reason.

    ``evaluate(number, params) -> (metrics, artifact path[, attrs])``; metrics need ``latency_ms``,
    ``accuracy``, ``ood_auroc``, ``bytes`` and ``samples``; ``attrs`` (optional): more user
    attributes of the trial (e.g. ``latency_measured_on``: the board that timed it). A trial whose
    evaluation raises is recorded as failed with its reason (in the journal, the log and the
    returned list) and does not count towards ``n_trials``; more than ``max(5, n_trials)``
    failures in one run end it. A failure whose exception says ``retry_trial = True`` (the board
    measuring it died, no board was free: not the configuration's fault) is also run again with
    the same parameters, by optuna's retry callback (``RetryHeartbeatStaleTrialCallback``, the one
    the RDB storage's heartbeat uses; at most ``max_retry`` times, default ``MAX_RETRY``).

    ``journal``: a journal file path, an RDB URL or ``journal:PATH`` (see
    :mod:`edgeuq.compress.distributed`), or an optuna storage. Several processes may run this
    on one storage at once (``edgeuq search --workers N``): each counts the finished trials of the
    shared study before asking for another. With a heartbeat storage (RDB), each trial beats
    while it is evaluated and stale trials of dead workers are failed (and re-enqueued by the
    storage's ``RetryHeartbeatStaleTrialCallback``) before every ask.
    """
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback, fail_stale_trials
    # optuna's own heartbeat thread, as study.optimize uses it; ask/tell has no public wrapper
    from optuna.storages._heartbeat import get_heartbeat_thread, is_heartbeat_enabled

    from .distributed import MAX_RETRY

    with warnings.catch_warnings():  # optuna marks its retry callback experimental (since 2.8): that is all
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY if max_retry is None else int(max_retry))
    study = _study(journal, seed, population, budgets, study_name)
    if not study.trials:
        for p in enqueue:
            study.enqueue_trial(dict(p))
    done = len(_records(study))
    if done:
        log(f"search: resuming, {done} trials already in {journal}")
    failures = 0
    beats = is_heartbeat_enabled(study._storage)
    while True:
        done = len(_records(study))  # other workers add trials to the same study
        if done >= n_trials:
            break
        if beats:
            fail_stale_trials(study)
        with warnings.catch_warnings():
            # optuna warns on every ask of a heartbeat storage that heartbeats are meant for
            # Study.optimize; this loop runs optuna's own heartbeat thread around each evaluation
            # (below), which is what optimize does: only that one message is silenced, here only
            warnings.filterwarnings("ignore", message=_HEARTBEAT_ASK_WARNING, category=UserWarning)
            trial = study.ask()
        params = space.suggest(trial)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        try:
            with get_heartbeat_thread(trial._trial_id, study._storage):
                metrics, artifact, *extra = evaluate(trial.number, params)
        except Exception as exc:  # noqa: BLE001 -- one bad configuration must not end the search; counted below
            failures += 1
            reason = f"{type(exc).__name__}: {exc}"
            again = bool(getattr(exc, "retry_trial", False))
            log(f"trial {trial.number} failed: {reason}" + ("; it runs again" if again else ""))
            trial.set_user_attr("error", reason)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            if again:  # optuna's retry: a WAITING copy with the same parameters, its retry history kept
                retry(study, study._storage.get_trial(trial._trial_id))
            if failures > max(5, n_trials):
                raise RuntimeError("search: too many failed trials") from exc
            continue
        metrics = {k: float(v) for k, v in metrics.items()}
        for name, value in (dict(extra[0]) if extra else {}).items():
            trial.set_user_attr(name, value)
        trial.set_user_attr("metrics", metrics)
        violations = budgets.violations(metrics)
        trial.set_user_attr("constraints", violations)
        for key, v in zip(("latency_ms", "weight_bytes", "mc_samples"), violations):
            trial.set_constraint(key, v)
        trial.set_user_attr("artifact", str(artifact))
        study.tell(trial, [metrics[k] for k, _ in OBJECTIVES])
        done = len(_records(study))
        log(f"trial {trial.number} ({done}/{n_trials}) {params}: " + ", ".join(
            f"{k} {metrics[k]:.4g}" for k, _ in OBJECTIVES) + ("" if budgets.met(metrics) else "  [over budget]"))
    records, failed = _records(study), _failed(study)
    log(f"search: {len(records)} trials finished, {len(failed)} failed"
        + (f" ({failures} in this run)" if failed else "")
        + "".join(f"\n  failed trial {f.number} {dict(f.params)}: {f.error}" for f in failed))
    return records, failed


def pareto_trials(records: Sequence[TrialRecord]) -> List[TrialRecord]:
    """The feasible trials no other feasible trial dominates."""
    feasible = [r for r in records if r.feasible]
    if not feasible:
        return []
    idx = non_dominated(np.array([r.objectives() for r in feasible]), [s for _, s in OBJECTIVES])
    return [feasible[i] for i in idx]


def choose_for_board(pareto: Sequence[TrialRecord]) -> Optional[TrialRecord]:
    """The board's pick: best OOD AUROC, then accuracy, then lowest latency."""
    if not pareto:
        return None
    return max(pareto, key=lambda r: (round(r.metrics["ood_auroc"], 3), round(r.metrics["accuracy"], 3),
                                      -r.metrics["latency_ms"]))


def plot_pareto(records: Sequence[TrialRecord], pareto: Sequence[TrialRecord], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    front = {r.number for r in pareto}
    for ax, key, label in ((axes[0], "ood_auroc", "OOD AUROC (MI)"), (axes[1], "accuracy", "accuracy")):
        for r in records:
            on = r.number in front
            ax.scatter(r.metrics["latency_ms"], r.metrics[key], s=18 + 40 * on,
                       c="tab:red" if on else ("tab:gray" if r.feasible else "lightgray"),
                       marker="o" if r.feasible else "x", zorder=3 if on else 2)
        ax.set_xscale("log")
        ax.set_xlabel("S-sample latency, one window (ms, measured)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_title(title, fontsize=9)
    axes[1].set_title("red: Pareto (feasible), grey: feasible, x: over budget", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@dataclass(frozen=True)
class SearchResult(Artifact):
    """Every trial, the Pareto set and the board's pick; ``pareto.png`` is hashed with it."""

    KIND: ClassVar[str] = "compress_search"
    FORMAT_VERSION: ClassVar[int] = 1
    META_FILE: ClassVar[str] = "search.json"

    board: str = ""
    budgets: Mapping[str, float] = field(default_factory=dict)
    trials: Tuple[Mapping[str, Any], ...] = ()
    pareto: Tuple[int, ...] = ()
    chosen: Optional[int] = None
    info: Mapping[str, Any] = field(default_factory=dict)
    failed: Tuple[Mapping[str, Any], ...] = ()   # trials whose evaluation raised, with the reason

    def payload_files(self) -> Tuple[str, ...]:
        return ("pareto.png",)

    def to_meta(self) -> dict:
        return {"board": self.board, "budgets": {k: (v if math.isfinite(v) else None) for k, v in self.budgets.items()},
                "trials": list(self.trials), "pareto": list(self.pareto), "chosen": self.chosen, "info": dict(self.info),
                "failed_count": len(self.failed), "failed_trials": list(self.failed)}

    @classmethod
    def from_meta(cls, meta, **base) -> "SearchResult":
        budgets = {k: (math.inf if v is None else float(v)) for k, v in meta["budgets"].items()}
        return cls(board=meta["board"], budgets=budgets, trials=tuple(meta["trials"]), pareto=tuple(meta["pareto"]),
                   chosen=meta["chosen"], info=meta.get("info", {}), failed=tuple(meta.get("failed_trials", ())),
                   **base)


def save_search_result(out_dir: Path, board: str, budgets: SearchBudgets, records: Sequence[TrialRecord],
                       pareto: Sequence[TrialRecord], chosen: Optional[TrialRecord], info: Mapping[str, Any],
                       title: str, failed: Sequence[FailedTrial] = ()) -> SearchResult:
    with ArtifactWriter(out_dir) as w:
        plot_pareto(records, pareto, w.path / "pareto.png", title)
        res = SearchResult(board=board, budgets=asdict(budgets), trials=tuple(r.to_dict() for r in records),
                           pareto=tuple(r.number for r in pareto), chosen=None if chosen is None else chosen.number,
                           info=dict(info), failed=tuple(f.to_dict() for f in failed))
        return w.commit(res)
