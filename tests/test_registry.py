"""The one registry mechanism (edgeuq/registry.py): decorator, lookup errors that list the known
names, package scan of built-ins, same-package lazy import, and ``edgeuq.<kind>`` entry points
found through importlib.metadata (a real dist-info on sys.path, no mock)."""
from __future__ import annotations

import sys
import textwrap

import pytest

from edgeuq.registry import Registry, RegistryError, scan_package


def test_decorator_lookup_and_a_clear_error():
    reg: Registry = Registry("toy_kind", instantiate=True)

    @reg.register("alpha")
    class Alpha:
        pass

    assert isinstance(reg.get("alpha"), Alpha) and Alpha.name == "alpha" and list(reg) == ["alpha"]
    assert reg.get("beta", None) is None and "beta" not in reg
    with pytest.raises(RegistryError, match=r"unknown toy_kind 'beta'; known: \['alpha'\]"):
        reg.get("beta")
    with pytest.raises(ValueError, match="already registered"):      # another class, same name
        reg.register("alpha")(type("Other", (), {}))
    reg.register("alpha")(Alpha)                                     # the same class again: fine
    with pytest.raises(ValueError, match="already registered"):
        reg.add("alpha", object())


def _write_pkg(root, name, modules):
    pkg = root / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "from edgeuq.registry import Registry, scan_package\nREG = Registry('toy_scan')\n"
        "BUILTINS = scan_package(__name__, __path__, skip=('base',))\n")
    for mod, body in modules.items():
        (pkg / f"{mod}.py").write_text(textwrap.dedent(body))
    return pkg


def test_package_scan_imports_every_module_of_the_package_itself(tmp_path, monkeypatch):
    body = "from . import REG\n@REG.register('{n}')\nclass P:\n    pass\n"
    _write_pkg(tmp_path, "toyscanpkg", {"one": body.format(n="one"), "two": body.format(n="two"),
                                         "_private": "raise RuntimeError('never imported')\n",
                                         "base": "raise RuntimeError('skipped')\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    import toyscanpkg

    assert toyscanpkg.BUILTINS == ("one", "two") and sorted(toyscanpkg.REG) == ["one", "two"]
    for m in [m for m in sys.modules if m.startswith("toyscanpkg")]:
        sys.modules.pop(m)


def test_same_package_lazy_import(tmp_path, monkeypatch):
    pkg = tmp_path / "toylazypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from edgeuq.registry import Registry\nREG = Registry('toy_lazy', "
                                     "package=__name__)\n")
    (pkg / "heavy.py").write_text("from . import REG\nREG.add('heavy', 42)\n")
    (pkg / "broken.py").write_text("import no_such_module_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import toylazypkg

    assert "heavy" not in toylazypkg.REG._items and "toylazypkg.heavy" not in sys.modules
    assert toylazypkg.REG.get("heavy") == 42                          # imported on first use
    with pytest.raises(ModuleNotFoundError, match="no_such_module_xyz"):   # broken plug-in: not hidden
        toylazypkg.REG.get("broken")
    with pytest.raises(RegistryError, match="unknown toy_lazy 'absent'"):
        toylazypkg.REG.get("absent")
    for m in [m for m in sys.modules if m.startswith("toylazypkg")]:
        sys.modules.pop(m)


def test_entry_points_of_group_edgeuq_kind_are_loaded(tmp_path, monkeypatch):
    """A third-party distribution declares ``[edgeuq.toy_ep] gamma = toyplugin_ep:Gamma``;
    the registry finds it through importlib.metadata on the first miss."""
    (tmp_path / "toyplugin_ep.py").write_text("class Gamma:\n    pass\n")
    dist = tmp_path / "toyplugin_ep-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toyplugin-ep\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[edgeuq.toy_ep]\ngamma = toyplugin_ep:Gamma\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg: Registry = Registry("toy_ep", instantiate=True)
    assert reg.group == "edgeuq.toy_ep"
    got = reg.get("gamma")
    assert type(got).__name__ == "Gamma" and type(got).__module__ == "toyplugin_ep"
    assert reg.names() == ("gamma",)
    sys.modules.pop("toyplugin_ep", None)


def test_the_host_registries_use_the_one_mechanism():
    from edgeuq.data.sources import DATA_SOURCES
    from edgeuq.lower import LOWERERS
    from edgeuq.schemes import SCHEMES

    assert {r.group for r in (SCHEMES, LOWERERS, DATA_SOURCES)} == {"edgeuq.scheme", "edgeuq.lowerer",
                                                                   "edgeuq.data_source"}
    assert all(isinstance(r, Registry) for r in (SCHEMES, LOWERERS, DATA_SOURCES))
