"""Compute targets, boards and compile recipes: descriptors kept as TOML data.

Three kinds of descriptor, one TOML file each, whose ``name`` equals the file
stem::

    kind      repo folder   in the wheel                       dataclass
    targets   targets/      edgeuq/_descriptors/targets/       ComputeTarget
    boards    boards/       edgeuq/_descriptors/boards/        Board
    recipes   compile/      edgeuq/_descriptors/recipes/       Recipe

Where they are found, in order:

1. the built-in descriptors: ``importlib.resources.files("edgeuq") /
   "_descriptors" / kind`` when that exists (an installed wheel), else the
   repository folder next to the package (a source or editable checkout);
2. every directory in ``$EDGEUQ_DESCRIPTORS_DIR`` (``os.pathsep``-separated),
   each with optional ``targets/``, ``boards/`` and ``compile/`` subfolders, for
   a user's own boards. A name defined twice, in any two places, is an error:
   nothing is silently shadowed.

Every problem raises :class:`DescriptorError` naming the file and the field.
Unknown keys are rejected. A board's targets must exist; a recipe's boards
must exist. A recipe's sections (``data``, ``model``, ...) stay plain dicts,
parsed and checked by the stage that owns them.

No code in the package names a particular board or target: adding one is
adding a TOML file.
"""
from __future__ import annotations

import copy
import importlib.resources
import os
import tomllib
from dataclasses import dataclass, field
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import edgeuq

__all__ = [
    "ENV_VAR",
    "DescriptorError",
    "UnknownDescriptorError",
    "ComputeTarget",
    "Budgets",
    "GraphPlacement",
    "PlacementPolicy",
    "BoardGraphs",
    "Board",
    "Recipe",
    "Catalog",
    "descriptor_dirs",
    "read_descriptor",
    "load_targets",
    "load_boards",
    "load_recipes",
    "get_target",
    "get_board",
    "get_recipe",
    "validate_all",
    "format_targets_table",
    "format_boards_table",
]

ENV_VAR = "EDGEUQ_DESCRIPTORS_DIR"
TARGET_KINDS = ("cpu", "gpu", "fpga")
GRAPH_ROLES = ("trunk", "head")
RECIPE_SECTIONS = ("data", "model", "train", "uq", "bundle")
# kind -> folder name in the repository and in $EDGEUQ_DESCRIPTORS_DIR
_FOLDERS = {"targets": "targets", "boards": "boards", "recipes": "compile"}

Source = Union[Path, Traversable]


class DescriptorError(ValueError):
    """A descriptor file is unreadable, malformed or inconsistent."""

    def __init__(self, source: Any, message: str, field: Optional[str] = None):
        self.source = str(source)
        self.field = field
        where = f"{self.source}: field '{field}'" if field else self.source
        super().__init__(f"{where}: {message}")


class UnknownDescriptorError(DescriptorError, LookupError):
    """A target, board or recipe name that no descriptor defines."""


# ----------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class ComputeTarget:
    """One compute target: a CPU family, a GPU arch or an FPGA part.

    ``tvm`` is a TVM JSON target dict (``{"kind": "llvm", "mtriple": ...}``),
    empty for FPGA targets. ``cross_compiler`` is None when the host compiles
    natively; ``qemu`` names the user-mode emulator that runs its binaries on
    this host (checks only, never timings). ``fpga_part`` and ``clock_mhz`` are
    set for, and only for, FPGAs. ``cuda_host`` (GPU targets, from ``[cuda]
    host``) names the CPU target that runs the host side (kernel launches).
    """

    name: str
    kind: str
    description: str
    arch: str
    tvm: dict = field(default_factory=dict)
    cross_compiler: Optional[str] = None
    onnxruntime_providers: tuple = ()
    fpga_part: Optional[str] = None
    clock_mhz: Optional[float] = None
    qemu: Optional[str] = None
    cuda_host: Optional[str] = None
    notes: str = ""
    source: str = field(default="", compare=False)


@dataclass(frozen=True)
class GraphPlacement:
    """Where one graph of the model runs on a board, and how it gets there.

    ``target``: one of the board's targets; ``executor``: the runtime executor
    named in the bundle manifest (``edgeuq_runtime.executors``); ``lowering``: the
    lowerer that produces it (``edgeuq.lower.LOWERERS``).
    """

    target: str
    executor: str
    lowering: str
    #: Other placements ``edgeuq compile`` may measure against this one (``candidates = [{target,
    #: executor, lowering, isa_variants}, ...]``); this placement is the board's default (kept when not measured).
    candidates: tuple = ()
    #: Higher ISA levels of the same CPU (other cpu targets of the board, e.g. ``["x86-64-avx2",
    #: "x86-64-avx512"]`` next to a generic ``x86-64`` placement) compiled as well and shipped with the graph:
    #: the executor runs the best library the board's CPU flags allow (run-time ISA dispatch), the
    #: placement's own target only where none of them runs. Only a lowering that declares the capability
    #: (``Lowerer.isa_dispatch``) accepts it.
    isa_variants: tuple = ()

    @property
    def key(self) -> tuple:
        """``(lowering, target)``: placements with one key are lowered together, once."""
        return (self.lowering, self.target)

    def options(self) -> tuple:
        """Every placement to consider: this one (the default) first, then the candidates."""
        return (GraphPlacement(self.target, self.executor, self.lowering, isa_variants=self.isa_variants),) + tuple(
            c for c in self.candidates if (c.target, c.executor, c.lowering) != (self.target, self.executor,
                                                                                   self.lowering))


@dataclass(frozen=True)
class PlacementPolicy:
    """How ``edgeuq compile`` measures a board's candidate placements (``[placement]``).

    ``measure_on_host``: the board *is* the machine that runs ``edgeuq compile`` (e.g. the
    development host used as a board), so candidates are timed here; otherwise only over TVM
    RPC to the board (``--remote``/``--tracker``), and without it the default is kept
    ("not measured"). ``warmup``/``repeats``: of the one latency harness.
    """

    measure_on_host: bool = False
    warmup: int = 3
    repeats: int = 20


@dataclass(frozen=True)
class BoardGraphs:
    """The placement of the trunk and the head graphs (``[graphs.trunk]``, ``[graphs.head]``)."""

    trunk: GraphPlacement
    head: GraphPlacement

    def items(self) -> tuple:
        return (("trunk", self.trunk), ("head", self.head))


@dataclass(frozen=True)
class Budgets:
    """What a board affords one input: latency (all samples), weights, samples."""

    latency_ms: float
    weight_bytes: int
    mc_samples: int


@dataclass(frozen=True)
class Board:
    """A board: its compute targets, memory, runtime executor and budgets.

    ``graphs`` says which target runs the trunk and which the head, with which
    executor and lowerer. Without a ``[graphs]`` table both graphs run on
    the first target with the board's ``executor``, lowered by the lowerer of
    the same name.
    """

    name: str
    description: str
    targets: tuple
    memory_mb: int
    executor: str
    budgets: Budgets
    graphs: BoardGraphs
    notes: str = ""
    placement: PlacementPolicy = field(default_factory=PlacementPolicy)
    source: str = field(default="", compare=False)


@dataclass(frozen=True)
class Recipe:
    """A compile recipe. Sections are plain dicts, each parsed by its stage."""

    name: str
    description: str
    task: str
    data: dict
    model: dict
    train: dict
    uq: dict
    bundle: dict
    boards: tuple
    #: optional ``[compress]`` table: ``[[compress.steps]]`` name = "<step>" + that step's options
    #: (read strictly by :func:`edgeuq.compress.chain.chain_from_table`); empty = no chain declared
    compress: dict = field(default_factory=dict)
    source: str = field(default="", compare=False)


@dataclass(frozen=True)
class Catalog:
    """Everything :func:`validate_all` loaded, keyed by name."""

    targets: dict
    boards: dict
    recipes: dict


# ------------------------------------------------------------- field checkers
# A checker takes (value, src, field) and returns the normalised value or raises.


def _fail(src, name, expected, value) -> DescriptorError:
    return DescriptorError(src, f"expected {expected}, got {type(value).__name__} {value!r}", name)


def _checker(expected: str, ok: Callable[[Any], Any], convert: Callable[[Any], Any] = lambda v: v) -> Callable:
    """A field checker: ``convert(value)`` when ``ok(value)``, else a DescriptorError that the field
    expected ``expected``."""
    def check(value, src, name):
        if not ok(value):
            raise _fail(src, name, expected, value)
        return convert(value)

    return check


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_str = _checker("a non-empty string", lambda v: isinstance(v, str) and bool(v.strip()))
_text = _checker("a string", lambda v: isinstance(v, str))  # may be empty (notes)
_pos_int = _checker("an integer > 0", lambda v: _is_int(v) and v > 0)
_pos_num = _checker("a finite number > 0",
                    lambda v: (_is_int(v) or isinstance(v, float)) and 0 < v < float("inf"), float)
_table = _checker("a table", lambda v: isinstance(v, dict), copy.deepcopy)


def _str_list(*, nonempty: bool) -> Callable:
    def check(value, src, name):
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise _fail(src, name, "a list of non-empty strings", value)
        if nonempty and not value:
            raise DescriptorError(src, "must list at least one entry", name)
        dup = sorted({v for v in value if value.count(v) > 1})
        if dup:
            raise DescriptorError(src, f"duplicate entries {dup}", name)
        return tuple(value)

    return check


_bool = _checker("true or false", lambda v: isinstance(v, bool))
_list = _checker("a list", lambda v: isinstance(v, list), copy.deepcopy)


def _one_of(choices) -> Callable:
    def check(value, src, name):
        if value not in choices:
            raise DescriptorError(src, f"must be one of {list(choices)}, got {value!r}", name)
        return value

    return check


def _tvm_dict(value, src, name):
    value = _table(value, src, name)
    if value and not (isinstance(value.get("kind"), str) and value["kind"]):
        raise DescriptorError(src, "a TVM target dict needs a string 'kind' (e.g. \"llvm\")", f"{name}.kind")
    for key, v in value.items():
        ok = isinstance(v, (str, int, float, bool)) or (
            isinstance(v, list) and all(isinstance(x, (str, int, float, bool)) for x in v)
        )
        if not ok:
            raise _fail(src, f"{name}.{key}", "a string, number, bool or list of them", v)
    return value


_REQUIRED = object()


def _parse(raw: dict, spec: dict, src, prefix: str = "") -> dict:
    """Check ``raw`` against ``spec`` {key: (checker, default or _REQUIRED)}."""
    unknown = sorted(set(raw) - set(spec))
    if unknown:
        raise DescriptorError(
            src, f"unknown key (allowed: {', '.join(sorted(spec))})", prefix + unknown[0]
        )
    out = {}
    for key, (check, default) in spec.items():
        if key in raw:
            out[key] = check(raw[key], src, prefix + key)
        elif default is _REQUIRED:
            raise DescriptorError(src, "missing required key", prefix + key)
        else:
            out[key] = default
    return out


_TARGET_SPEC = {
    "name": (_str, _REQUIRED),
    "kind": (_one_of(TARGET_KINDS), _REQUIRED),
    "description": (_str, _REQUIRED),
    "arch": (_str, _REQUIRED),
    "tvm": (_tvm_dict, {}),
    "cross_compiler": (_str, None),
    "onnxruntime_providers": (_str_list(nonempty=False), ()),
    "fpga_part": (_str, None),
    "clock_mhz": (_pos_num, None),
    "qemu": (_str, None),
    "cuda": (_table, None),
    "notes": (_text, ""),
}
_CUDA_SPEC = {"host": (_str, _REQUIRED)}
_PLACEMENT_SPEC = {
    "target": (_str, _REQUIRED),
    "executor": (_str, None),
    "lowering": (_str, None),
    "candidates": (_list, ()),
    "isa_variants": (_str_list(nonempty=False), ()),
}
_CANDIDATE_SPEC = {k: v for k, v in _PLACEMENT_SPEC.items() if k != "candidates"}
_POLICY_SPEC = {
    "measure_on_host": (_bool, False),
    "warmup": (_pos_int, 3),
    "repeats": (_pos_int, 20),
}
_BUDGET_SPEC = {
    "latency_ms": (_pos_num, _REQUIRED),
    "weight_bytes": (_pos_int, _REQUIRED),
    "mc_samples": (_pos_int, _REQUIRED),
}
_BOARD_SPEC = {
    "name": (_str, _REQUIRED),
    "description": (_str, _REQUIRED),
    "targets": (_str_list(nonempty=True), _REQUIRED),
    "memory_mb": (_pos_int, _REQUIRED),
    "executor": (_str, _REQUIRED),
    "budgets": (_table, _REQUIRED),
    "graphs": (_table, None),
    "placement": (_table, None),
    "notes": (_text, ""),
}
_RECIPE_SPEC = {
    "name": (_str, _REQUIRED),
    "description": (_str, _REQUIRED),
    "task": (_str, _REQUIRED),
    "boards": (_str_list(nonempty=True), _REQUIRED),
    **{section: (_table, _REQUIRED) for section in RECIPE_SECTIONS},
    "compress": (_table, None),
}


def _make_target(raw: dict, src) -> ComputeTarget:
    f = _parse(raw, _TARGET_SPEC, src)
    cuda = f.pop("cuda")
    if cuda is not None:
        if f["kind"] != "gpu" or f["tvm"].get("kind") != "cuda":
            raise DescriptorError(src, "only allowed for a gpu target whose tvm kind is \"cuda\"", "cuda")
        f["cuda_host"] = _parse(cuda, _CUDA_SPEC, src, prefix="cuda.")["host"]
    elif f["kind"] == "gpu" and f["tvm"].get("kind") == "cuda":
        raise DescriptorError(src, "a CUDA target needs [cuda] host = \"<cpu target>\" (the host-code CPU)", "cuda")
    if f["kind"] == "fpga":
        for key in ("fpga_part", "clock_mhz"):
            if f[key] is None:
                raise DescriptorError(src, "required when kind = \"fpga\"", key)
    else:
        if not f["tvm"]:
            raise DescriptorError(src, f"required (a TVM target dict) when kind = {f['kind']!r}", "tvm")
        for key in ("fpga_part", "clock_mhz"):
            if f[key] is not None:
                raise DescriptorError(src, f"only allowed when kind = \"fpga\", not {f['kind']!r}", key)
    return ComputeTarget(**f, source=str(src))


def _make_placement(raw: Any, board: dict, role: str, src) -> GraphPlacement:
    where = f"graphs.{role}"
    if raw is None:
        raw = {"target": board["targets"][0]}
    elif not isinstance(raw, dict):
        raise _fail(src, where, "a table", raw)
    p = _parse(raw, _PLACEMENT_SPEC, src, prefix=where + ".")
    if p["target"] not in board["targets"]:
        raise DescriptorError(src, f"{p['target']!r} is not one of the board's targets {list(board['targets'])}",
                              where + ".target")
    executor = p["executor"] or board["executor"]
    candidates = []
    for i, c in enumerate(p["candidates"]):
        at = f"{where}.candidates[{i}]"
        if not isinstance(c, dict):
            raise _fail(src, at, "a table {target, executor, lowering}", c)
        c = _parse(c, _CANDIDATE_SPEC, src, prefix=at + ".")
        if c["target"] not in board["targets"]:
            raise DescriptorError(src, f"{c['target']!r} is not one of the board's targets {list(board['targets'])}",
                                  at + ".target")
        ex = c["executor"] or board["executor"]
        cand = GraphPlacement(target=c["target"], executor=ex, lowering=c["lowering"] or ex,
                              isa_variants=_isa_variants(c, board, src, at))
        if any((cand.target, cand.executor, cand.lowering) == (k.target, k.executor, k.lowering) for k in candidates):
            raise DescriptorError(src, f"duplicate candidate {cand.target}:{cand.executor}", at)
        candidates.append(cand)
    return GraphPlacement(target=p["target"], executor=executor, lowering=p["lowering"] or executor,
                          candidates=tuple(candidates), isa_variants=_isa_variants(p, board, src, where))


def _isa_variants(p: dict, board: dict, src, where: str) -> tuple:
    """A placement's ``isa_variants``: other targets of the board (checked here); whether they are
    higher ISA levels of the placement's CPU is checked by its lowering (``edgeuq compile``)."""
    variants = p["isa_variants"]
    for v in variants:
        if v not in board["targets"]:
            raise DescriptorError(src, f"{v!r} is not one of the board's targets {list(board['targets'])}",
                                  where + ".isa_variants")
        if v == p["target"]:
            raise DescriptorError(src, f"{v!r} is the placement's own target: list only higher ISA levels",
                                  where + ".isa_variants")
    return variants


def _make_board(raw: dict, src) -> Board:
    f = _parse(raw, _BOARD_SPEC, src)
    f["budgets"] = Budgets(**_parse(f["budgets"], _BUDGET_SPEC, src, prefix="budgets."))
    graphs = f["graphs"] or {}
    unknown = sorted(set(graphs) - set(GRAPH_ROLES))
    if unknown:
        raise DescriptorError(src, f"unknown graph (allowed: {', '.join(GRAPH_ROLES)})", f"graphs.{unknown[0]}")
    f["graphs"] = BoardGraphs(**{role: _make_placement(graphs.get(role), f, role, src) for role in GRAPH_ROLES})
    seen: dict = {}
    for role, placement in f["graphs"].items():
        for i, p in enumerate(placement.options()):
            at = f"graphs.{role}" if i == 0 else f"graphs.{role}.candidates"
            if seen.setdefault(p.key, (p.isa_variants, at))[0] != p.isa_variants:
                raise DescriptorError(src, f"{p.lowering} on {p.target} is lowered once for the whole board, but "
                                      f"{seen[p.key][1]} declares isa_variants {list(seen[p.key][0])} and this "
                                      f"one {list(p.isa_variants)}", at + ".isa_variants")
    f["placement"] = PlacementPolicy(**_parse(f["placement"] or {}, _POLICY_SPEC, src, prefix="placement."))
    return Board(**f, source=str(src))


def _make_recipe(raw: dict, src) -> Recipe:
    f = _parse(raw, _RECIPE_SPEC, src)
    f["compress"] = f["compress"] or {}
    return Recipe(**f, source=str(src))


_MAKERS = {"targets": _make_target, "boards": _make_board, "recipes": _make_recipe}


# -------------------------------------------------------------------- reading


def _builtin_dir(kind: str, package_root: Optional[Source] = None,
                 repo_root: Optional[Path] = None) -> Optional[Source]:
    """The built-in folder for ``kind``: the wheel's package data, else the repo's."""
    pkg = importlib.resources.files("edgeuq") if package_root is None else package_root
    packaged = pkg / "_descriptors" / kind
    if packaged.is_dir():
        return packaged
    repo = Path(edgeuq.__file__).resolve().parents[1] if repo_root is None else Path(repo_root)
    local = repo / _FOLDERS[kind]
    return local if local.is_dir() else None


def descriptor_dirs(kind: str) -> list:
    """Folders searched for ``kind`` ("targets", "boards" or "recipes"), in order."""
    if kind not in _FOLDERS:
        raise ValueError(f"unknown descriptor kind {kind!r}; expected one of {sorted(_FOLDERS)}")
    dirs = []
    builtin = _builtin_dir(kind)
    if builtin is not None:
        dirs.append(builtin)
    for entry in os.environ.get(ENV_VAR, "").split(os.pathsep):
        if not entry:
            continue
        root = Path(entry).expanduser()
        if not root.is_dir():
            raise DescriptorError(root, f"{ENV_VAR} names a directory that does not exist")
        if (root / _FOLDERS[kind]).is_dir():
            dirs.append(root / _FOLDERS[kind])
    return dirs


def _read_toml(src: Source) -> dict:
    try:
        text = src.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DescriptorError(src, f"cannot read: {exc}") from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DescriptorError(src, f"not valid TOML: {exc}") from exc


def read_descriptor(kind: str, path: Union[str, Source]):
    """Parse and check one file on its own (no cross references)."""
    if kind not in _MAKERS:
        raise ValueError(f"unknown descriptor kind {kind!r}; expected one of {sorted(_MAKERS)}")
    src = Path(path) if isinstance(path, str) else path
    return _MAKERS[kind](_read_toml(src), src)


def _load(kind: str) -> dict:
    found: dict = {}
    for folder in descriptor_dirs(kind):
        for src in sorted(folder.iterdir(), key=lambda p: p.name):
            if not (src.name.endswith(".toml") and src.is_file()):
                continue
            item = read_descriptor(kind, src)
            stem = src.name[: -len(".toml")]
            if item.name != stem:
                raise DescriptorError(src, f"must equal the file name stem {stem!r}, got {item.name!r}", "name")
            if item.name in found:
                raise DescriptorError(src, f"{item.name!r} is already defined in {found[item.name].source}", "name")
            found[item.name] = item
    return dict(sorted(found.items()))


def _check_refs(item, field_name: str, known: Mapping, what: str) -> None:
    for ref in getattr(item, field_name):
        if ref not in known:
            raise DescriptorError(
                item.source, f"unknown {what} {ref!r}; known {what}s: {', '.join(known) or '(none)'}", field_name
            )


def load_targets() -> dict:
    """All compute targets, ``{name: ComputeTarget}`` sorted by name; a CUDA
    target's ``[cuda] host`` must name a cpu target."""
    targets = _load("targets")
    for t in targets.values():
        if t.cuda_host is not None and (t.cuda_host not in targets or targets[t.cuda_host].kind != "cpu"):
            cpus = [n for n, c in targets.items() if c.kind == "cpu"]
            raise DescriptorError(t.source, f"{t.cuda_host!r} is not a cpu target; cpu targets: {', '.join(cpus)}",
                                  "cuda.host")
    return targets


def load_boards(targets: Optional[Mapping] = None) -> dict:
    """All boards, ``{name: Board}``; every board's targets must exist."""
    targets = load_targets() if targets is None else targets
    boards = _load("boards")
    for board in boards.values():
        _check_refs(board, "targets", targets, "target")
    return boards


def load_recipes(boards: Optional[Mapping] = None) -> dict:
    """All compile recipes, ``{name: Recipe}``; every recipe's boards must exist."""
    boards = load_boards() if boards is None else boards
    recipes = _load("recipes")
    for recipe in recipes.values():
        _check_refs(recipe, "boards", boards, "board")
    return recipes


def _lookup(items: Mapping, name: str, what: str):
    if name not in items:
        raise UnknownDescriptorError(
            f"{what} {name!r}", f"not found; known {what}s: {', '.join(items) or '(none)'}"
        )
    return items[name]


def get_target(name: str) -> ComputeTarget:
    return _lookup(load_targets(), name, "target")


def get_board(name: str) -> Board:
    return _lookup(load_boards(), name, "board")


def get_recipe(name_or_path: Union[str, os.PathLike]) -> Recipe:
    """A recipe by name, or from a ``.toml`` file path (its boards must exist)."""
    text = os.fspath(name_or_path)
    if isinstance(name_or_path, os.PathLike) or text.endswith(".toml") or os.sep in text:
        path = Path(text)
        if not path.is_file():
            raise DescriptorError(path, "no such recipe file")
        recipe = read_descriptor("recipes", path)
        _check_refs(recipe, "boards", load_boards(), "board")
        return recipe
    return _lookup(load_recipes(), text, "recipe")


def validate_all() -> Catalog:
    """Load every descriptor and resolve every cross reference, or raise."""
    targets = load_targets()
    boards = load_boards(targets)
    recipes = load_recipes(boards)
    return Catalog(targets=targets, boards=boards, recipes=recipes)


# --------------------------------------------------------------------- tables


def _table_text(headers: list, rows: list) -> str:
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _tvm_text(t: ComputeTarget) -> str:
    if t.kind == "fpga":
        return f"part {t.fpga_part} @ {t.clock_mhz:g} MHz"
    opts = [f"-{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in t.tvm.items() if k != "kind"]
    if t.cuda_host:
        opts.append(f"(host {t.cuda_host})")
    return " ".join([str(t.tvm.get("kind", "-"))] + opts)


def format_targets_table(targets: Optional[Mapping] = None) -> str:
    """Plain-text table of compute targets (``edgeuq targets``)."""
    targets = load_targets() if targets is None else targets
    rows = [
        [t.name, t.kind, t.arch, _tvm_text(t), t.cross_compiler or "-", t.qemu or "-",
         ",".join(t.onnxruntime_providers) or "-", t.description]
        for t in targets.values()
    ]
    return _table_text(["NAME", "KIND", "ARCH", "TVM TARGET / FPGA", "CROSS COMPILER", "EMULATOR", "ORT PROVIDERS",
                        "DESCRIPTION"], rows)


def _placement_text(p: GraphPlacement) -> str:
    return f"{p.target}:{p.executor}" + (f"(+{','.join(p.isa_variants)})" if p.isa_variants else "")


def _graphs_text(b: Board) -> str:
    return " ".join(f"{role}={_placement_text(p)}" + "".join(f"|{_placement_text(c)}" for c in p.candidates)
                    for role, p in b.graphs.items())


def format_boards_table(boards: Optional[Mapping] = None) -> str:
    """Plain-text table of boards (``edgeuq boards``)."""
    boards = load_boards() if boards is None else boards
    rows = [
        [b.name, ",".join(b.targets), b.executor, _graphs_text(b), b.memory_mb, f"{b.budgets.latency_ms:g}",
         b.budgets.weight_bytes, b.budgets.mc_samples, b.description]
        for b in boards.values()
    ]
    return _table_text(["NAME", "TARGETS", "EXECUTOR", "GRAPHS", "MEMORY MB", "LATENCY MS", "WEIGHT BYTES",
                        "MC SAMPLES", "DESCRIPTION"], rows)
