"""The wheel carries every subpackage and the data files (descriptors, native sources)."""
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "edgeuq").rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert found - listed == set(), f"subpackages missing from pyproject [tool.setuptools] packages: {found - listed}"


@pytest.mark.slow
def test_wheel_contains_descriptors_and_native_sources(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("edgeuq-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for kind, folder in (("targets", "targets"), ("boards", "boards"), ("recipes", "compile")):
        for f in (ROOT / folder).glob("*.toml"):
            assert f"edgeuq/_descriptors/{kind}/{f.name}" in names
    toolchain = ROOT / "edgeuq" / "lower" / "toolchain"
    shipped = [f for f in toolchain.rglob("*") if f.is_file() and f.suffix in (".cc", ".h", ".sh")]
    assert len(shipped) >= 8, shipped          # the armv7 driver's sources, its headers and the set-up script
    for f in shipped:
        assert f.relative_to(ROOT).as_posix() in names, f
