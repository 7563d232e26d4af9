"""The text student on a board: the chain student (``edgeuq text-student --out DIR``) compiled by
:func:`~edgeuq.lower.compile.compile_board`, with the two choices a board forces made here, each with
its reason. What is compiled is the *deployed* student network (``DIR/student``, the chain's last
checkpoint whose trunk also emits the student's own Avg-Avg density feature:
:data:`~edgeuq.text.student_chain.DEPLOY_DIR`), so every board bundle carries the density columns
(``density_columns`` in its manifest) and ``edgeuq calibrate`` can fit the density score on it; the
chain's last checkpoint only when the chain wrote no deploy checkpoint (``ood_features = "none"``).

head
    The board's head lowering declares the noise kinds it can build (``Lowerer.noise_kinds``; the
    FPGA head multiplies dropout masks in hardware). A student whose head draws another kind (the
    chain's Laplace last layer draws standard normals) is moved, over the same weights, onto the
    first registered scheme with a text head (``Scheme.text_head``) whose head draws kinds the lowering
    takes and needs no posterior fitted on data (``TextHead.post_hoc_posterior`` false): the
    compression step ``rehead`` through :func:`~edgeuq.compress.chain.run_chain` (recorded, cached,
    the tokenizer carried along). In this tree that is MC dropout at the head's two dropout sites, with
    the dropout rate the head was trained with (``head_dropout``). No scheme is named here.
weights
    fp32 when the exported graphs' weights fit ``budgets.weight_bytes``; otherwise int8 trunk
    weights (:func:`edgeuq.quantize.dynamic.dynamic_int8_trunk`: ONNX Runtime dynamic quantisation of
    every MatMul and Gather weight), whether or not that fits (the report then says "over"). The
    compiled int8 trunk is checked against ONNX Runtime's int8 graph by the lowerings' own rule, which
    admits the rare rounding flips of per-call activation quantisation and nothing more
    (:func:`edgeuq.lower.tvm.numerics.judge`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Tuple, Union

import numpy as np

from ..artifact import cached
from ..catalog import Board, get_board
from ..compress.chain import ChainStep, data_key, run_chain
from ..compress.steps import StepData, get_step, step_options
from ..export import OnnxArtifact, export_onnx
from ..lower.base import get_lowerer
from ..lower.compile import CompileResult, compile_board, head_noise_problem, weight_bytes
from ..quantize.dynamic import DYNAMIC_INT8, dynamic_int8_trunk
from ..training import Checkpoint, load_checkpoint
from .heads import text_head, text_scheme_names
from .student_chain import STUDENT_FILE

__all__ = ["StudentOnBoard", "student_checkpoint", "head_for_board", "weights_for_board", "compile_text_student"]

PathLike = Union[str, Path]


@dataclass(frozen=True)
class StudentOnBoard:
    """What :func:`compile_text_student` compiled for one board, and why in that form."""

    board: str
    result: CompileResult
    checkpoint: Checkpoint       # the checkpoint compiled (the student's, or its head moved for the board)
    export: OnnxArtifact         # the graphs compiled (fp32, or with int8 trunk weights)
    head_scheme: str
    head_reason: str
    weights: str                 # "fp32" or "int8"
    weights_reason: str
    fp32_weight_bytes: int
    #: trunk output columns [A, B) of the density feature (None: the network emits none)
    density_columns: Optional[Tuple[int, int]]


def student_checkpoint(path: PathLike) -> Checkpoint:
    """The student's checkpoint from the output folder of ``edgeuq text-student --out DIR`` /
    ``bench/text_student_cut.py --out DIR`` (its ``text_student.json`` names the deployed network,
    ``deploy_checkpoint`` = ``DIR/student``, the last chain step's checkpoint with the density feature;
    without one, the last chain step's folder under ``DIR/chain/``), or from a checkpoint folder itself.
    It must hold ``tokenizer.json``."""
    from ..training.checkpoint import TOKENIZER_FILE
    from .student_chain import DEPLOY_DIR

    path = Path(path)
    summary = path / STUDENT_FILE
    if summary.is_file():
        rec = json.loads(summary.read_text())
        deploy = rec.get("deploy_checkpoint")
        # a recorded path may be relative to where the chain ran: the folders are under DIR
        if deploy:
            recorded, beside = Path(deploy), path / DEPLOY_DIR
        else:
            recorded = Path(rec["checkpoint"])
            beside = path / "chain" / recorded.name
        where = recorded if (recorded / "checkpoint.json").is_file() else beside
    else:
        where = path
    ck = load_checkpoint(where)
    if not (Path(ck.directory) / TOKENIZER_FILE).is_file():
        raise FileNotFoundError(f"{ck.directory}: no {TOKENIZER_FILE} beside the checkpoint (the device tokenizer)")
    return ck


def head_for_board(ck: Checkpoint, board: Board, work: Path,
                   log: Callable[[str], None] = lambda m: None) -> Tuple[Checkpoint, str]:
    """(the checkpoint whose head the board's default head lowering can build, why). The student itself
    when its head's noise kinds suit the lowering; else the same weights under another scheme's text
    head (module docstring); a ValueError when no registered scheme fits."""
    lowering = board.graphs.head.options()[0].lowering
    lw = get_lowerer(lowering)
    model = ck.load_model()
    own = ck.config.scheme
    problem = head_noise_problem(lw, model.noise_specs())
    if problem is None:
        return ck, f"the student's own {own} head"
    tried = []
    for scheme in text_scheme_names():
        if text_head(scheme).post_hoc_posterior:  # its posterior would need fitting on data
            continue
        step = get_step("rehead")
        data = StepData(x=np.zeros((0, ck.config.input_length), np.int64))
        try:
            res = run_chain(ck, [ChainStep("rehead", step_options(step, {"scheme": scheme}))], data,
                            Path(work) / f"rehead-{scheme}", data_key(data, ck.digest), progress=False, log=log)
        except ValueError as exc:
            tried.append(f"{scheme}: {exc}")
            continue
        moved = res.checkpoint
        if head_noise_problem(lw, moved.load_model().noise_specs()) is None:
            return moved, (f"the student's weights under a {scheme} head (compression step 'rehead': {problem}, "
                           f"the {own} head's); dropout p = {moved.config.head_p:g} at its dropout sites, as trained")
        tried.append(f"{scheme}: its head draws a kind the {lowering} lowering cannot build either")
    raise ValueError(f"board {board.name!r}: {problem}; no registered scheme with a text head fits "
                     f"({'; '.join(tried) or 'none to try'})")


def _export(ck: Checkpoint, where: Path) -> OnnxArtifact:
    return cached(OnnxArtifact, where, ck.digest) or export_onnx(ck, where)


def weights_for_board(art: OnnxArtifact, board: Board, work: Path) -> Tuple[OnnxArtifact, str, str, int]:
    """(the graphs to compile, "fp32" or "int8", why, fp32 weight bytes): fp32 when they fit the board's
    weight budget, else int8 trunk weights (module docstring)."""
    fp32 = weight_bytes(art)
    budget = board.budgets.weight_bytes
    if fp32 <= budget:
        return art, "fp32", f"fp32 fits ({fp32:,} B <= {budget:,} B)", fp32
    where = Path(work) / f"int8-{art.digest[:16]}"
    int8 = cached(OnnxArtifact, where, art.digest) or dynamic_int8_trunk(art, where)
    return int8, "int8", f"fp32 {fp32:,} B over the {budget:,} B budget: trunk weights {DYNAMIC_INT8}", fp32


def compile_text_student(student: Union[PathLike, Checkpoint], board: Any, out_dir: PathLike, work: PathLike, *,
                         log: Callable[[str], None] = lambda m: None, **compile_options: Any) -> StudentOnBoard:
    """Compile the text student (a :class:`Checkpoint`, its folder, or the chain's output folder) for
    ``board``: the head the board's lowering builds, the weights its budget needs (module docstring),
    then :func:`compile_board` (``compile_options``: its keyword arguments, e.g. ``samples``,
    ``placement``, ``isa_variants``, ``progress``). ``work`` keeps the moved checkpoints and exports
    (reused across boards and runs)."""
    board = board if isinstance(board, Board) else get_board(str(board))
    ck = student if isinstance(student, Checkpoint) else student_checkpoint(student)
    work = Path(work)
    head_ck, head_reason = head_for_board(ck, board, work, log)
    art32 = _export(head_ck, work / f"onnx-{head_ck.digest[:16]}")
    art, weights, weights_reason, fp32 = weights_for_board(art32, board, work)
    log(f"[{board.name}] head: {head_reason}; weights: {weights_reason}; density columns "
        f"{list(art.density_columns) if art.density_columns else 'none'}")
    res = compile_board(board, art, Path(out_dir), overwrite=True, **compile_options)
    return StudentOnBoard(board.name, res, head_ck, art, head_ck.config.scheme, head_reason, weights,
                          weights_reason, fp32, art.density_columns)
