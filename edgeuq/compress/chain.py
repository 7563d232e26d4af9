"""The compression stage as a data-driven chain of registered steps, each output a cached checkpoint.

A recipe declares the chain (or ``edgeuq compress --steps`` picks it)::

    [[compress.steps]]
    name = "prune"            # a registered step (edgeuq.compress.steps.COMPRESSION_STEPS)
    target_flops = 0.5        # ... and that step's own options, read strictly
    [[compress.steps]]
    name = "lowrank"
    rank_fraction = 0.5

:func:`chain_from_table` validates it (an unknown key, step or option is an error naming the
field, e.g. ``compress.steps[1].rank_fraction``, and an unknown step lists the registered ones);
:func:`run_chain` runs it through the registry only::

    checkpoint ─step 0─► checkpoint ─step 1─► ... ─► checkpoint   (OUT/<i>-<step>/, each a Checkpoint)

Each step's output is a :class:`~edgeuq.training.Checkpoint` whose ``inputs`` is
``digest_of(parent checkpoint, step, options, data)``; a rerun with the same inputs loads it
(``cached``) instead of recomputing, and everything after a changed step is recomputed because
its parent's digest changed. Each step loads its input from the checkpoint on disk, so what the
next step (and export) sees is exactly what was saved. A :class:`StageTimer` times every step.
"""
from __future__ import annotations

import dataclasses
import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from ..artifact import cached, digest_of
from ..profile.harness import StageTimer
from ..training import Checkpoint, save_checkpoint
from ..training.checkpoint import TOKENIZER_FILE
from .steps import COMPRESSION_STEPS, StepData, get_step, step_options

__all__ = ["ChainStep", "ChainResult", "chain_from_table", "chain_table", "data_key", "run_chain",
           "tokenizer_of", "data_in_vocabulary", "INPUT_FILES"]

#: files beside a checkpoint that describe its input (not part of it): carried from each step's input to
#: its output unless the step writes its own (``StepResult.files``)
INPUT_FILES = (TOKENIZER_FILE,)

_TABLE_KEYS = ("steps",)


@dataclass(frozen=True)
class ChainStep:
    """One declared step: its registry ``name`` and its ``Options`` instance."""

    name: str
    options: Any

    def options_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self.options)


@dataclass(frozen=True, eq=False)
class ChainResult:
    """The last step's checkpoint (the input checkpoint for an empty chain) and one record per
    step: step, index, options, info, seconds, cached, checkpoint folder and digest."""

    checkpoint: Checkpoint
    records: Tuple[Mapping[str, Any], ...]
    timer: StageTimer


def _registered() -> List[str]:
    return sorted(COMPRESSION_STEPS)


def chain_from_table(table: Optional[Mapping[str, Any]], where: str = "compress") -> Tuple[ChainStep, ...]:
    """The chain a ``[compress]`` table declares (``None`` or ``{}``: no steps), read strictly."""
    if table is None:
        return ()
    if not isinstance(table, Mapping):
        raise ValueError(f"{where}: expected a table with 'steps', got {type(table).__name__}")
    unknown = sorted(set(table) - set(_TABLE_KEYS))
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown key; allowed: {list(_TABLE_KEYS)}")
    steps = table.get("steps", [])
    if isinstance(steps, (str, bytes, Mapping)) or not isinstance(steps, Sequence):
        raise ValueError(f"{where}.steps: expected an array of tables ([[{where}.steps]]), got {steps!r}")
    out = []
    for i, entry in enumerate(steps):
        at = f"{where}.steps[{i}]"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{at}: expected a table with name = \"<step>\" and its options, got {entry!r}")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{at}.name: missing or not a string; registered steps: {_registered()}")
        if name not in COMPRESSION_STEPS:
            raise ValueError(f"{at}.name: unknown compression step {name!r}; registered steps: {_registered()}")
        step = get_step(name)
        given = {k: v for k, v in entry.items() if k != "name"}
        known = sorted(f.name for f in dataclasses.fields(step.Options))
        bad = sorted(set(given) - set(known))
        if bad:
            raise ValueError(f"{at}.{bad[0]}: unknown option of step {name!r}; its options: {known}")
        try:
            options = step_options(step, given)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{at} ({name}): {exc}") from exc
        out.append(ChainStep(name, options))
    return tuple(out)


def chain_table(recipe_table: Optional[Mapping[str, Any]], steps: Optional[Sequence[str]] = None,
                overrides: Sequence[Tuple[str, str, Any]] = ()) -> Dict[str, Any]:
    """The ``[compress]`` table a command line asks for: ``steps`` (names, in order) replaces the
    recipe's chain, each step taking its options from the recipe's first entry of that name (else
    its defaults); ``overrides`` are (step, option, value) set on every entry of that step. Not
    validated here: :func:`chain_from_table` reads the result."""
    table = dict(recipe_table or {})
    entries = [dict(e) if isinstance(e, Mapping) else e for e in table.get("steps", [])]
    if steps is not None:
        declared: Dict[str, dict] = {}
        for e in entries:
            if isinstance(e, Mapping) and isinstance(e.get("name"), str):
                declared.setdefault(e["name"], e)
        entries = [dict(declared.get(name, {"name": name})) for name in steps]
    for step, key, value in overrides:
        hits = [e for e in entries if isinstance(e, Mapping) and e.get("name") == step]
        if not hits:
            raise ValueError(f"option {step}.{key}: step {step!r} is not in the chain "
                             f"{[e.get('name') for e in entries if isinstance(e, Mapping)]}")
        for e in hits:
            e[key] = value
    table["steps"] = entries
    return table


def _array_digest(a: Optional[np.ndarray]) -> str:
    if a is None:
        return ""
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def data_key(data: StepData, teacher: str = "") -> str:
    """The digest of what the steps read: the windows and labels of ``data`` and the teacher
    (its digest, ``teacher``); part of every step's cache key."""
    return digest_of([_array_digest(a) for a in (data.x, data.y, data.x_val, data.y_val)], teacher)


def tokenizer_of(checkpoint: Checkpoint) -> Optional[Any]:
    """The tokenizer kept beside ``checkpoint`` (``tokenizer.json``), None when there is none."""
    from edgeuq_runtime.tokenizer import load_tokenizer

    path = Path(checkpoint.directory) / TOKENIZER_FILE
    return load_tokenizer(path) if path.is_file() else None


def data_in_vocabulary(data: StepData, tokenizer: Optional[Any]) -> StepData:
    """``data`` with its token ids in ``tokenizer``'s vocabulary (the model's after a step that
    changed it): ``x`` / ``x_val`` mapped token by token, and the teacher's callables (labels,
    features, hidden states) fed the ids mapped back into the vocabulary the teacher reads
    (``data.tokenizer``'s). Unchanged when either tokenizer is unknown or both vocabularies are the
    same. Every token of the windows must be in the new vocabulary (a ``vocab`` step keeps them), and
    every token of the new vocabulary in the old one: else a ValueError says which."""
    old = data.tokenizer
    if old is None or tokenizer is None:
        return data
    if tuple(tokenizer.vocab) == tuple(old.vocab):
        return dataclasses.replace(data, tokenizer=tokenizer)
    new_index = {t: i for i, t in enumerate(tokenizer.vocab)}
    old_index = {t: i for i, t in enumerate(old.vocab)}
    fwd = np.array([new_index.get(t, -1) for t in old.vocab], dtype=np.int64)
    inv = np.array([old_index.get(t, -1) for t in tokenizer.vocab], dtype=np.int64)
    if (inv < 0).any():
        raise ValueError(f"the model's vocabulary has tokens the data's tokenizer lacks, e.g. "
                         f"{tokenizer.vocab[int(np.flatnonzero(inv < 0)[0])]!r}: the teacher cannot read them")

    def forward(a: Optional[np.ndarray], what: str) -> Optional[np.ndarray]:
        if a is None:
            return None
        out = fwd[np.asarray(a, dtype=np.int64)]
        if (out < 0).any():
            missing = old.vocab[int(np.asarray(a).ravel()[int(np.flatnonzero(out.ravel() < 0)[0])])]
            raise ValueError(f"{what}: token {missing!r} is not in the model's vocabulary; tokenise the text with "
                             f"the model's tokenizer instead")
        return out

    back = torch.from_numpy(inv)
    t, f, h, g = data.teacher, data.features, data.teacher_hidden, data.teacher_density
    return dataclasses.replace(
        data, x=forward(data.x, "x"), x_val=forward(data.x_val, "x_val"), tokenizer=tokenizer,
        teacher=None if t is None else (lambda x, s, seed: t(inv[np.asarray(x, dtype=np.int64)], s, seed)),
        features=None if f is None else (lambda x: f(inv[np.asarray(x, dtype=np.int64)])),
        teacher_hidden=None if h is None else (lambda ids: h(back[ids])),
        teacher_density=None if g is None else (lambda ids: g(back[ids])))


def _input_files(parent: Path, where: Path, written: Sequence[str]) -> None:
    """Carry the parent's :data:`INPUT_FILES` that the step did not write into ``where``."""
    for name in INPUT_FILES:
        if name in written:
            continue
        src, dst = parent / name, where / name
        if src.is_file():
            shutil.copyfile(src, dst)
        elif dst.exists():
            dst.unlink()


def run_chain(checkpoint: Checkpoint, chain: Sequence[ChainStep], data: StepData, out_dir: Path, key: str,
              progress: bool = True, log: Callable[[str], None] = print,
              folders: Optional[Sequence[str]] = None) -> ChainResult:
    """Run ``chain`` on ``checkpoint``: step ``i`` reads the previous checkpoint and writes
    ``out_dir/<i>-<name>`` (a cached stored output is reused: same parent, step, options and data
    ``key``, see :func:`data_key`) and its companion artifacts ``out_dir/<i>-<name>-<companion>``.

    ``folders``: the checkpoint folder of each step instead (a command's own layout, e.g.
    ``edgeuq prune``: ``checkpoint``); companions then go to ``out_dir/<companion>``. A cached
    step does not rewrite its companions (they were written with its checkpoint)."""
    out_dir = Path(out_dir)
    if folders is not None and len(folders) != len(chain):
        raise ValueError(f"run_chain: {len(folders)} folders for {len(chain)} steps")
    timer, records, current = StageTimer(), [], checkpoint
    with tqdm(total=len(chain), desc="compress", disable=not progress, leave=False) as bar:
        for i, st in enumerate(chain):
            step, options = get_step(st.name), st.options_dict()
            inputs = digest_of(current, st.name, options, key)
            where = out_dir / (folders[i] if folders is not None else f"{i:02d}-{st.name}")
            label = f"{i}:{st.name}"
            bar.set_description(f"compress {label}")
            with timer.stage(label):
                hit = cached(Checkpoint, where, inputs)
                was_cached = hit is not None
                if hit is None:
                    res = step.apply(current.load_model(), data_in_vocabulary(data, tokenizer_of(current)),
                                     st.options)
                    companions = {}
                    for cname, write in res.companions.items():
                        cdir = out_dir / cname if folders is not None else where.with_name(f"{where.name}-{cname}")
                        art = write(cdir, current)
                        companions[cname] = {"directory": str(cdir), "digest": art.digest}
                    metrics = {"compress_step": {"step": st.name, "index": i, "options": options,
                                                 "info": dict(res.info), "parent_digest": current.digest,
                                                 "parent_sha256": current.sha256, "companions": companions}}
                    # the input files first: the checkpoint's envelope, written last, then vouches for them too
                    where.mkdir(parents=True, exist_ok=True)
                    for fname, write in res.files.items():
                        write(where / fname)
                    _input_files(Path(current.directory), where, tuple(res.files))
                    hit = save_checkpoint(res.model, where, current.class_names, current.sample_rate_hz,
                                          current.normalization, metrics=metrics, inputs=inputs)
            rec = {"step": st.name, "index": i, "options": options,
                   "info": dict(hit.metrics.get("compress_step", {}).get("info", {})),
                   "companions": dict(hit.metrics.get("compress_step", {}).get("companions", {})),
                   "seconds": timer.seconds[label], "cached": was_cached, "checkpoint": str(hit.directory),
                   "digest": hit.digest}
            records.append(rec)
            log(f"compress step {label}: {'cached' if rec['cached'] else 'ran'} in {rec['seconds']:.2f} s -> "
                f"{hit.directory}")
            current = hit
            bar.update(1)
    return ChainResult(current, tuple(records), timer)
