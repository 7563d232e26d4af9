"""A recipe's ``[uq]`` table is read strictly: an unknown key (a typo) is an error naming it
(issue 20: it was read with ``.get()``, so ``kl_wieght = 0`` silently trained with weight 1)."""
import numpy as np
import pytest

from edgeuq.catalog import load_recipes
from edgeuq.schemes.base import FitContext
from edgeuq.training import TrainConfig, UqConfig


def _ctx(uq):
    x = np.zeros((4, 8), np.float32)
    y = np.zeros(4, int)
    return FitContext(x, y, x, y, TrainConfig(), uq)


def test_an_unknown_uq_key_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"unknown \[uq\] settings \['kl_wieght'\]; known: .*kl_weight"):
        UqConfig.from_dict({"kl_wieght": 0.0})
    with pytest.raises(ValueError, match="kl_wieght"):
        _ctx({"kl_wieght": 0.0, "samples": 8})       # the fitting context every scheme reads


def test_bad_uq_values_are_refused():
    for bad in ({"samples": 0}, {"samples": 2.5}, {"val_samples": -1}, {"kl_weight": -1.0},
                {"kl_weight": float("nan")}, {"temperature_scaling": "yes"}, {"laplace_samples": True}):
        with pytest.raises(ValueError, match=r"\[uq\]"):
            UqConfig.from_dict(bad)


def test_the_fitting_context_sees_the_table_with_its_defaults():
    ctx = _ctx({"kl_weight": 0.5, "temperature_scaling": True})
    assert ctx.kl_weight == 0.5 and ctx.val_samples == 0
    assert dict(ctx.uq) == {"samples": 16, "kl_weight": 0.5, "val_samples": 0, "temperature_scaling": True,
                            "laplace_samples": 64}


def test_every_shipped_recipe_has_a_valid_uq_table():
    recipes = load_recipes()
    assert len(recipes) >= 5
    for name, r in recipes.items():
        cfg = UqConfig.from_dict(r.uq)             # raises naming the key and the recipe section
        assert set(r.uq) <= set(cfg.to_dict()), name
