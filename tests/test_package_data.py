"""Every non-Python file under ``edgeuq/`` ships in the wheel: its folder is a package listed in
pyproject's ``[tool.setuptools] packages`` (else setuptools warns that the folder is absent from
``packages``) and one of that package's ``package-data`` globs matches it. Independent of setuptools:
the globs are applied with ``pathlib`` to the tree as it is. (A real wheel build into /tmp, checked by
hand: ``pip wheel --no-deps --no-build-isolation -w /tmp/whl .`` lists the same files.)"""
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETUP = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _data_files():
    return sorted(p for p in (ROOT / "edgeuq").rglob("*")
                  if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts)


def _owner(path: Path) -> str:
    """The deepest folder above ``path`` whose dotted name is a valid package path (what setuptools
    treats as the data file's package)."""
    parts = path.parent.relative_to(ROOT).parts
    while parts and not all(p.isidentifier() for p in parts):
        parts = parts[:-1]
    return ".".join(parts)


def test_there_are_data_files_to_check():
    names = {p.name for p in _data_files()}
    assert {"setup_toolchains.sh", "tvm_vm_driver.cc", "database_workload.json"} <= names


def test_every_data_file_is_in_a_listed_package_and_matched_by_its_globs():
    packages = set(SETUP["packages"])
    data = SETUP.get("package-data", {})
    missing = []
    for f in _data_files():
        pkg = _owner(f)
        pkg_dir = ROOT.joinpath(*pkg.split("."))
        if pkg not in packages:
            missing.append(f"{f.relative_to(ROOT)}: package {pkg} not in [tool.setuptools] packages")
        elif f not in {m for pat in data.get(pkg, ()) for m in pkg_dir.glob(pat)}:
            missing.append(f"{f.relative_to(ROOT)}: no package-data glob of {pkg} matches it {data.get(pkg)}")
    assert not missing, "\n".join(missing)


def test_a_data_file_belongs_to_the_deepest_importable_folder():
    # setuptools names the package of a data file this way (hyphenated folders are not packages)
    f = ROOT / "edgeuq" / "lower" / "toolchain" / "native" / "tvm_vm_driver.cc"
    assert _owner(f) == "edgeuq.lower.toolchain.native"
    assert _owner(ROOT / "edgeuq" / "lower" / "tvm" / "tuning" / "x86-64" / "provenance.json") == "edgeuq.lower.tvm.tuning"
