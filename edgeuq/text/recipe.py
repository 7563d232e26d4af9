"""The text student's recipe (``compile/text-student.toml``, data like every recipe) ->
the student's :class:`~edgeuq.models.ModelConfig` and its
:class:`~edgeuq.compress.distill.DistillConfig`.

``[data] max_length`` is the student's input length (WordPiece ids), ``[model]``
its architecture (``embed = "token"``, ``vocab_size`` of the teacher's tokenizer),
``[train]`` the distillation settings. Overrides let a caller fit the recipe to
another tokenizer (vocabulary size, length) or class count.
"""
from __future__ import annotations

from typing import Any, Optional, Union

from ..catalog import Recipe, get_recipe
from ..data.sources import DATA_SOURCES

__all__ = ["TEXT_STUDENT_RECIPE", "text_recipe", "text_student_config", "text_distill_config"]

TEXT_STUDENT_RECIPE = "text-student"


def text_recipe(recipe: Union[str, Recipe] = TEXT_STUDENT_RECIPE) -> Recipe:
    """The recipe (name, ``.toml`` path or object), refused unless it describes a token model on text."""
    rec = recipe if isinstance(recipe, Recipe) else get_recipe(recipe)
    source = rec.data.get("source")
    if not (isinstance(source, str) and DATA_SOURCES.get(source, None) is not None and DATA_SOURCES[source].holds_text) \
            or rec.model.get("embed") != "token":
        raise ValueError(f"recipe {rec.name!r} is not a text recipe ([data] source = \"text\" and "
                         f"[model] embed = \"token\" expected, got {rec.data.get('source')!r} / "
                         f"{rec.model.get('embed')!r})")
    if "max_length" not in rec.data:
        raise ValueError(f"recipe {rec.name!r}: [data] needs max_length (token ids per text)")
    return rec


def text_student_config(recipe: Union[str, Recipe] = TEXT_STUDENT_RECIPE, *, vocab_size: Optional[int] = None,
                        max_length: Optional[int] = None, num_classes: Optional[int] = None, **overrides: Any):
    """The student's ModelConfig; ``vocab_size`` / ``max_length`` / ``num_classes`` replace the recipe's."""
    from ..models import ModelConfig

    rec = text_recipe(recipe)
    model = dict(rec.model)
    if vocab_size is not None:
        model["vocab_size"] = int(vocab_size)
    return ModelConfig.from_dict(model, input_length=int(max_length or rec.data["max_length"]),
                                 num_classes=int(num_classes or len(rec.data["classes"])), **overrides)


def text_distill_config(recipe: Union[str, Recipe] = TEXT_STUDENT_RECIPE, **overrides: Any):
    """The recipe's ``[train]`` (flat: loss and optimiser keys) as a DistillConfig (``overrides`` win)."""
    from ..compress.distill import DistillConfig

    return DistillConfig.from_flat({**text_recipe(recipe).train, **overrides})
