"""Descriptors as data: every TOML file validates, references resolve, and a
bad file is reported by file and field."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

import edgeuq
from edgeuq import catalog
from edgeuq.catalog import DescriptorError, UnknownDescriptorError

REPO = Path(edgeuq.__file__).resolve().parents[1]
FOLDERS = {"targets": "targets", "boards": "boards", "recipes": "compile"}
FILES = [(kind, p) for kind, folder in FOLDERS.items() for p in sorted((REPO / folder).glob("*.toml"))]


def _names(folder: str) -> list:
    return [tomllib.loads(p.read_text())["name"] for p in sorted((REPO / folder).glob("*.toml"))]


@pytest.fixture(autouse=True)
def _no_user_dir(monkeypatch):
    monkeypatch.delenv(catalog.ENV_VAR, raising=False)


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """A user descriptor dir (targets/ boards/ compile/) on EDGEUQ_DESCRIPTORS_DIR."""
    monkeypatch.setenv(catalog.ENV_VAR, str(tmp_path))

    def write(folder: str, name: str, text: str) -> Path:
        path = tmp_path / folder / f"{name}.toml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        return path

    return write


def _a_builtin_target() -> str:
    return next(iter(catalog.load_targets()))


def _a_builtin_board() -> str:
    return next(iter(catalog.load_boards()))


# ------------------------------------------------------------ shipped files


@pytest.mark.parametrize("kind", list(FOLDERS))
def test_every_folder_has_descriptors(kind):
    assert [p for k, p in FILES if k == kind], f"{FOLDERS[kind]}/ holds no .toml file"


@pytest.mark.parametrize("kind,path", FILES, ids=[f"{FOLDERS[k]}/{p.name}" for k, p in FILES])
def test_file_parses_and_validates(kind, path):
    item = catalog.read_descriptor(kind, path)
    assert item.name == path.stem
    loaded = getattr(catalog, f"load_{kind}")()
    assert loaded[item.name] == item
    assert Path(loaded[item.name].source).resolve() == path.resolve()


def test_cross_references_resolve():
    cat = catalog.validate_all()
    assert set(cat.targets) == set(_names("targets"))
    assert set(cat.boards) == set(_names("boards"))
    assert set(cat.recipes) == set(_names("compile"))
    for board in cat.boards.values():
        assert board.targets and set(board.targets) <= set(cat.targets)
    for recipe in cat.recipes.values():
        assert recipe.boards and set(recipe.boards) <= set(cat.boards)
        for section in catalog.RECIPE_SECTIONS:
            assert isinstance(getattr(recipe, section), dict)


def test_get_by_name_and_recipe_by_path():
    cat = catalog.validate_all()
    for name, target in cat.targets.items():
        assert catalog.get_target(name) == target
    for name, board in cat.boards.items():
        assert catalog.get_board(name) == board
    for name, recipe in cat.recipes.items():
        assert catalog.get_recipe(name) == recipe
        assert catalog.get_recipe(Path(recipe.source)) == recipe
        assert catalog.get_recipe(str(recipe.source)) == recipe


def test_descriptors_are_frozen():
    board = catalog.get_board(_a_builtin_board())
    with pytest.raises(AttributeError):
        board.memory_mb = 1  # type: ignore[misc]


@pytest.mark.parametrize("getter,what", [("get_target", "target"), ("get_board", "board"), ("get_recipe", "recipe")])
def test_unknown_name_lists_known_ones(getter, what):
    known = list(getattr(catalog, f"load_{what}s")())
    with pytest.raises(UnknownDescriptorError) as err:
        getattr(catalog, getter)("no-such-thing")
    msg = str(err.value)
    assert "no-such-thing" in msg and what in msg
    for name in known:
        assert name in msg


def test_missing_recipe_path_is_reported(tmp_path):
    with pytest.raises(DescriptorError, match="no such recipe file"):
        catalog.get_recipe(tmp_path / "absent.toml")


# --------------------------------------------------------------- bad files

GOOD_TARGET = """name = "t-user"
kind = "cpu"
description = "user cpu"
arch = "x86_64"
[tvm]
kind = "llvm"
"""


def _board(name, target, extra="", budgets="latency_ms = 10\nweight_bytes = 1000\nmc_samples = 4\n",
           memory='memory_mb = 512\n'):
    return (f'name = "{name}"\ndescription = "user board"\ntargets = ["{target}"]\n{memory}'
            f'executor = "onnxruntime"\n{extra}[budgets]\n{budgets}')


def _recipe(name, board, drop=None):
    sections = "".join(f"[{s}]\nx = 1\n" for s in catalog.RECIPE_SECTIONS if s != drop)
    return f'name = "{name}"\ndescription = "r"\ntask = "bearing"\nboards = ["{board}"]\n{sections}'


def _expect(path: Path, field: str, *fragments: str):
    with pytest.raises(DescriptorError) as err:
        catalog.validate_all()
    msg = str(err.value)
    assert str(path) in msg, msg
    assert f"field '{field}'" in msg, msg
    assert err.value.field == field
    for fragment in fragments:
        assert fragment in msg, msg


def test_valid_user_descriptors_are_picked_up(user_dir):
    user_dir("targets", "t-user", GOOD_TARGET)
    user_dir("boards", "b-user", _board("b-user", "t-user"))
    user_dir("boards", "b-mixed", _board("b-mixed", _a_builtin_target()))
    user_dir("compile", "r-user", _recipe("r-user", "b-user"))
    cat = catalog.validate_all()
    assert {"t-user"} <= set(cat.targets) and {"b-user", "b-mixed"} <= set(cat.boards)
    assert cat.recipes["r-user"].boards == ("b-user",)
    assert cat.boards["b-user"].budgets == catalog.Budgets(latency_ms=10.0, weight_bytes=1000, mc_samples=4)
    assert "b-user" in catalog.format_boards_table() and "t-user" in catalog.format_targets_table()


def test_unknown_key_rejected(user_dir):
    path = user_dir("targets", "t-user", GOOD_TARGET.replace('arch =', 'colour = "red"\narch ='))
    _expect(path, "colour", "unknown key")


def test_unknown_key_in_budgets_rejected(user_dir):
    path = user_dir("boards", "b-user", _board("b-user", _a_builtin_target(),
                                               budgets="latency_ms = 1\nweight_bytes = 1\nmc_samples = 1\nwatts = 3\n"))
    _expect(path, "budgets.watts", "unknown key")


def test_missing_field_rejected(user_dir):
    path = user_dir("boards", "b-user", _board("b-user", _a_builtin_target(), memory=""))
    _expect(path, "memory_mb", "missing")


def test_missing_recipe_section_rejected(user_dir):
    path = user_dir("compile", "r-user", _recipe("r-user", _a_builtin_board(), drop="uq"))
    _expect(path, "uq", "missing")


@pytest.mark.parametrize("memory,budgets,field", [
    ('memory_mb = "lots"\n', None, "memory_mb"),
    ("memory_mb = true\n", None, "memory_mb"),
    ("memory_mb = 0\n", None, "memory_mb"),
    ("memory_mb = 512\n", "latency_ms = 1\nweight_bytes = 1\nmc_samples = 2.5\n", "budgets.mc_samples"),
    ("memory_mb = 512\n", 'latency_ms = "fast"\nweight_bytes = 1\nmc_samples = 1\n', "budgets.latency_ms"),
])
def test_wrong_type_rejected(user_dir, memory, budgets, field):
    kwargs = {"memory": memory} if budgets is None else {"memory": memory, "budgets": budgets}
    path = user_dir("boards", "b-user", _board("b-user", _a_builtin_target(), **kwargs))
    _expect(path, field, "expected")


def test_wrong_kind_rejected(user_dir):
    path = user_dir("targets", "t-user", GOOD_TARGET.replace('kind = "cpu"', 'kind = "tpu"'))
    _expect(path, "kind", "tpu")


def test_fpga_target_needs_part_and_clock(user_dir):
    text = 'name = "f-user"\nkind = "fpga"\ndescription = "d"\narch = "zynq"\nclock_mhz = 100\n'
    path = user_dir("targets", "f-user", text)
    _expect(path, "fpga_part", "fpga")
    user_dir("targets", "f-user", text + 'fpga_part = "xc7z020clg400-1"\n')
    assert catalog.load_targets()["f-user"].clock_mhz == 100.0


def test_cpu_target_rejects_fpga_fields(user_dir):
    path = user_dir("targets", "t-user", GOOD_TARGET.replace('arch =', 'fpga_part = "p"\narch ='))
    _expect(path, "fpga_part", "only allowed")


def test_board_naming_unknown_target(user_dir):
    path = user_dir("boards", "b-user", _board("b-user", "no-such-target"))
    _expect(path, "targets", "no-such-target", _a_builtin_target())


def test_recipe_naming_unknown_board(user_dir):
    path = user_dir("compile", "r-user", _recipe("r-user", "no-such-board"))
    _expect(path, "boards", "no-such-board")


def test_name_must_match_file_stem(user_dir):
    path = user_dir("targets", "other-stem", GOOD_TARGET)
    _expect(path, "name", "other-stem")


def test_duplicate_name_rejected(user_dir):
    builtin = catalog.get_target(_a_builtin_target())
    path = user_dir("targets", builtin.name, Path(builtin.source).read_text())
    _expect(path, "name", "already defined", builtin.source)


def test_invalid_toml_names_file(user_dir):
    path = user_dir("boards", "b-user", "name = \n")
    with pytest.raises(DescriptorError, match="not valid TOML") as err:
        catalog.validate_all()
    assert str(path) in str(err.value)


def test_missing_user_dir_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv(catalog.ENV_VAR, str(tmp_path / "absent"))
    with pytest.raises(DescriptorError, match=catalog.ENV_VAR):
        catalog.load_targets()


# ----------------------------------------------------------- where they live


def test_wheel_layout_preferred_over_repo(tmp_path):
    pkg = tmp_path / "site" / "edgeuq"
    (pkg / "_descriptors" / "recipes").mkdir(parents=True)
    repo = tmp_path / "repo"
    (repo / "compile").mkdir(parents=True)
    assert catalog._builtin_dir("recipes", package_root=pkg, repo_root=repo) == pkg / "_descriptors" / "recipes"
    # Source checkout: no package data, so the repository folder is used.
    assert catalog._builtin_dir("recipes", package_root=repo / "edgeuq", repo_root=repo) == repo / "compile"


def test_checkout_uses_repo_folders():
    for kind, folder in FOLDERS.items():
        dirs = catalog.descriptor_dirs(kind)
        assert dirs and Path(str(dirs[0])).resolve() in {
            (REPO / folder).resolve(), (Path(edgeuq.__file__).resolve().parent / "_descriptors" / kind)
        }


# ----------------------------------------------------- data, not code; tables


def _sources() -> list:
    return sorted((REPO / "edgeuq").rglob("*.py")) + sorted((REPO / "runtime").rglob("*.py"))


def test_no_python_source_names_a_board():
    boards = _names("boards")
    sources = _sources()
    assert boards and sources
    offenders = [f"{p.relative_to(REPO)} names board {b!r}"
                 for p in sources for b in boards if b in p.read_text(encoding="utf-8")]
    assert not offenders, offenders


def test_tables_list_everything():
    targets_table = catalog.format_targets_table()
    boards_table = catalog.format_boards_table()
    assert targets_table.splitlines()[0].startswith("NAME")
    assert boards_table.splitlines()[0].startswith("NAME")
    for name in _names("targets"):
        assert any(line.split()[0] == name for line in targets_table.splitlines()[2:]), name
    for name in _names("boards"):
        assert any(line.split()[0] == name for line in boards_table.splitlines()[2:]), name
    assert len(targets_table.splitlines()) == 2 + len(_names("targets"))
    assert len(boards_table.splitlines()) == 2 + len(_names("boards"))


# ------------------------------------------- the lowering issue: boards, targets, placement

REQUIRED_TARGETS = {"x86-64", "cortex-a72", "cortex-a53", "cortex-a57", "cortex-a78ae", "cortex-a9",
                    "cuda-sm53", "cuda-sm72", "cuda-sm87", "xc7z020", "xczu7ev", "xck26"}
REQUIRED_BOARDS = {"x86-host", "raspberry-pi-4", "jetson-nano", "jetson-orin-nano", "pynq-z2", "zcu104", "kv260"}


def test_required_targets_and_boards_exist():
    cat = catalog.validate_all()
    assert REQUIRED_TARGETS <= set(cat.targets) and REQUIRED_BOARDS <= set(cat.boards)


def test_target_semantics():
    cat = catalog.validate_all()
    for t in cat.targets.values():
        if t.kind == "cpu":
            assert t.tvm["kind"] == "llvm" and t.tvm.get("mtriple")
            assert (t.cross_compiler is None) == (t.arch == "x86_64")
            assert (t.qemu is None) == (t.arch == "x86_64")
        elif t.kind == "gpu":
            assert t.tvm == {"kind": "cuda", "arch": t.arch} and cat.targets[t.cuda_host].kind == "cpu"
        else:
            assert t.fpga_part and t.clock_mhz and not t.tvm
    assert cat.targets["cortex-a9"].tvm["mfloat-abi"] == "hard"   # else the link fails (VFP register args)


def test_board_placements_resolve():
    for board in catalog.validate_all().boards.values():
        for role, p in board.graphs.items():
            assert p.target in board.targets, (board.name, role)
            assert p.executor and p.lowering
        kinds = {catalog.get_target(p.target).kind for _, p in board.graphs.items()}
        if "fpga" in kinds:
            assert board.graphs.head.lowering == "hls4ml" and board.graphs.head.executor == "pynq"


def test_board_without_graphs_defaults_to_first_target(user_dir):
    user_dir("boards", "b-user", _board("b-user", _a_builtin_target()))
    b = catalog.get_board("b-user")
    assert b.graphs.trunk == b.graphs.head == catalog.GraphPlacement(_a_builtin_target(), "onnxruntime",
                                                                     "onnxruntime")


def test_board_graph_on_a_foreign_target_rejected(user_dir):
    extra = '[graphs.head]\ntarget = "cortex-a9"\n'
    path = user_dir("boards", "b-user", _board("b-user", "x86-64", extra=extra))
    _expect(path, "graphs.head.target", "not one of the board's targets")


def test_board_unknown_graph_rejected(user_dir):
    path = user_dir("boards", "b-user", _board("b-user", "x86-64", extra='[graphs.middle]\ntarget = "x86-64"\n'))
    _expect(path, "graphs.middle", "unknown graph")


def test_board_graph_unknown_key_rejected(user_dir):
    extra = '[graphs.trunk]\ntarget = "x86-64"\nspeed = "fast"\n'
    path = user_dir("boards", "b-user", _board("b-user", "x86-64", extra=extra))
    _expect(path, "graphs.trunk.speed", "unknown key")


def test_cuda_target_needs_a_cpu_host(user_dir):
    text = 'name = "g-user"\nkind = "gpu"\ndescription = "d"\narch = "sm_80"\n[tvm]\nkind = "cuda"\narch = "sm_80"\n'
    path = user_dir("targets", "g-user", text)
    _expect(path, "cuda", "needs [cuda] host")
    path = user_dir("targets", "g-user", text + '[cuda]\nhost = "xc7z020"\n')
    _expect(path, "cuda.host", "not a cpu target")
    user_dir("targets", "g-user", text + '[cuda]\nhost = "x86-64"\n')
    assert catalog.get_target("g-user").cuda_host == "x86-64"


def test_cuda_table_only_for_cuda_targets(user_dir):
    path = user_dir("targets", "t-user", GOOD_TARGET + '[cuda]\nhost = "x86-64"\n')
    _expect(path, "cuda", "only allowed for a gpu target")
