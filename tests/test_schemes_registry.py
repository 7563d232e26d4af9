"""The scheme registry is the only place that tells schemes apart; every class is abstract or final."""
import ast
import importlib
import inspect
import io
import pkgutil
import tokenize
from pathlib import Path

import pytest
import torch

import edgeuq
from edgeuq.models import ModelConfig, build_model
from edgeuq.models.layers import TORCH_NOISE_DRAWS
from edgeuq.schemes import SCHEMES, get_scheme, register_scheme
from edgeuq.schemes.base import Scheme
from edgeuq_runtime.noise import NOISE_MEANS, NOISE_SAMPLERS

ROOT = Path(edgeuq.__file__).parent
REGISTRY = ROOT / "schemes" / "registry.py"
BUILTIN = {"mc_dropout", "variational", "hsa", "ensemble", "laplace"}
_COMPARE = {"==", "!="}


def scheme_comparisons(source: str, names, words=("scheme",)) -> list:
    """(line, text) of every comparison that tells schemes apart: ``<...scheme...> ==/!=/in/not in``,
    ``== <...scheme...>``, and a scheme-name string literal next to ``==``, ``!=`` or ``in``.
    Comments and docstrings are ignored (tokens); ``for scheme in ...`` is not a comparison."""
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING}
    toks = [t for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type not in skip]
    found = []

    def in_for_target(i: int) -> bool:
        for j in range(i - 1, -1, -1):
            if toks[j].type == tokenize.NEWLINE or toks[j].string in ("in", "if"):
                return False
            if toks[j].string == "for":
                return True
        return False

    for i, t in enumerate(toks):
        prv = toks[i - 1].string if i else ""
        nxt = toks[i + 1].string if i + 1 < len(toks) else ""
        hit = False
        if t.type == tokenize.NAME and any(w in t.string.lower() for w in words):
            hit = nxt in _COMPARE or prv in _COMPARE or (nxt in ("in", "not") and not in_for_target(i))
        elif t.type == tokenize.STRING:
            try:
                value = ast.literal_eval(t.string)
            except (ValueError, SyntaxError):
                value = None
            if isinstance(value, str) and value in names:
                hit = nxt in _COMPARE or prv in _COMPARE or nxt in ("in", "not")
        if hit and (t.start[0], t.line.strip()) not in found:
            found.append((t.start[0], t.line.strip()))
    return found


def test_the_scanner_finds_each_kind_of_scheme_switch():
    names = BUILTIN
    bad = [
        "if cfg.scheme == 'hsa':\n    pass\n",
        "x = model.cfg.scheme != \"laplace\"\n",
        "if scheme in ('mc_dropout', 'hsa'):\n    pass\n",
        "ok = 'ensemble' == name\n",
        "y = self.scheme not in allowed\n",
    ]
    for src in bad:
        assert scheme_comparisons(src, names), src
    good = [
        "for scheme in schemes:\n    pass\n",
        "s = get_scheme(cfg.scheme)\n",
        "# if cfg.scheme == 'hsa'\nx = 1\n",
        "def f():\n    '''cfg.scheme == \"hsa\" in a docstring'''\n",
        "ok = [k for k in schemes if k in text_schemes]\n",
    ]
    for src in good:
        assert not scheme_comparisons(src, names), src


#: the benches and scripts are scanned too (issue 20: bench/text_teacher.py told the text heads apart)
ALSO_SCANNED = ("bench", "scripts")


def test_no_scheme_comparison_outside_the_registry():
    names = set(SCHEMES) | BUILTIN
    offenders = []
    paths = sorted(ROOT.rglob("*.py")) + [p for top in ALSO_SCANNED for p in sorted((ROOT.parent / top).rglob("*.py"))]
    assert any(p.name == "text_teacher.py" for p in paths)
    for path in paths:
        if path == REGISTRY:
            continue
        for line, text in scheme_comparisons(path.read_text(), names):
            offenders.append(f"{path.relative_to(ROOT.parent)}:{line}: {text}")
    assert not offenders, "schemes told apart outside edgeuq/schemes/registry.py:\n" + "\n".join(offenders)


def _modules():
    for pkg in ("edgeuq.models", "edgeuq.schemes", "edgeuq.bayes"):
        mod = importlib.import_module(pkg)
        yield mod
        for info in pkgutil.iter_modules(mod.__path__):
            yield importlib.import_module(f"{pkg}.{info.name}")
    yield importlib.import_module("edgeuq.training.loop")
    yield importlib.import_module("edgeuq.training.config")


def test_every_class_is_abstract_or_final_and_no_final_class_is_subclassed():
    classes = {c for m in _modules() for _, c in inspect.getmembers(m, inspect.isclass)
               if c.__module__ == m.__name__}
    assert len(classes) > 20
    loose = sorted(c.__qualname__ for c in classes
                   if not inspect.isabstract(c) and not getattr(c, "__final__", False))
    assert not loose, f"classes neither abstract nor final: {loose}"
    for c in classes:
        for base in c.__mro__[1:]:
            assert not getattr(base, "__final__", False) or base.__module__.startswith(("torch", "builtins")), \
                f"{c.__qualname__} subclasses final {base.__qualname__}"


def test_registry_lists_the_builtin_schemes_and_refuses_unknown_names():
    assert BUILTIN <= set(SCHEMES)
    for name in BUILTIN:
        scheme = get_scheme(name)
        assert isinstance(scheme, Scheme) and scheme.name == name and SCHEMES[name] is scheme
    with pytest.raises(ValueError, match="unknown stochastic scheme 'bayes'"):
        get_scheme("bayes")
    with pytest.raises(ValueError, match="unknown stochastic scheme"):
        ModelConfig(input_length=64, num_classes=2, patch=8, scheme="bayes")
    with pytest.raises(ValueError, match="already registered"):
        register_scheme("hsa")(type("Other", (get_scheme("mc_dropout").__class__.__mro__[1],),
                                    {"problems": lambda self, cfg: []}))


def test_a_new_scheme_plugs_in_without_touching_the_model_code():
    """A scheme defined here (MC dropout at the head only, any p) builds, validates and
    names its noise inputs through the registry alone."""
    from dataclasses import dataclass

    from edgeuq.schemes.mc_dropout import MCDropout

    @dataclass(frozen=True)
    class HeadDropOptions:
        p: float = 0.3

    @register_scheme("test_head_drop")
    class HeadDrop(Scheme):
        options_type = HeadDropOptions

        def problems(self, cfg):
            return [] if 0 < cfg.scheme_options.p < 1 else ["p must be in (0, 1)"]

        def head_dropout(self, cfg, site, shape):
            return MCDropout(f"x_{site}", cfg.scheme_options.p, shape)

    cfg = ModelConfig(input_length=64, num_classes=2, patch=8, d_model=8, heads=2, depth=1, ffn=8,
                      stochastic_blocks=(), scheme="test_head_drop", scheme_options={"p": 0.4})
    model = build_model(cfg)
    assert [(s.name, s.params["p"]) for s in model.noise_specs()] == [("x_head_in", 0.4), ("x_head_hidden", 0.4)]
    with pytest.raises(ValueError, match="p must be in"):
        ModelConfig(input_length=64, num_classes=2, patch=8, scheme="test_head_drop", scheme_options={"p": 2.0})
    with pytest.raises(ValueError, match="unknown scheme_options"):
        ModelConfig(input_length=64, num_classes=2, patch=8, scheme="test_head_drop", scheme_options={"q": 1})
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_one_table_of_noise_kinds_matches_the_runtime():
    assert set(TORCH_NOISE_DRAWS) == set(NOISE_SAMPLERS) == set(NOISE_MEANS)
    like = torch.zeros(())
    torch.manual_seed(0)
    n = 20000
    drop = TORCH_NOISE_DRAWS["dropout_mask"]((n,), like, {"p": 0.25})
    assert set(torch.unique(drop).tolist()) <= {0.0, float(torch.tensor(1.0 / 0.75))}
    assert abs(float(drop.mean()) - 1.0) <= 0.03                    # mean 1 (NOISE_MEANS)
    normal = TORCH_NOISE_DRAWS["standard_normal"]((n,), like, {})
    assert abs(float(normal.mean())) <= 0.03 and abs(float(normal.std()) - 1.0) <= 0.03
    uni = TORCH_NOISE_DRAWS["uniform"]((n,), like, {})
    assert 0.0 <= float(uni.min()) and float(uni.max()) < 1.0 and abs(float(uni.mean()) - 0.5) <= 0.01
    cat = TORCH_NOISE_DRAWS["categorical"]((n, 4), like, {"k": 4})
    assert torch.equal(cat.sum(-1), torch.ones(n)) and float((cat.mean(0) - 0.25).abs().max()) <= 0.02
