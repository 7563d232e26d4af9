"""The text student's recipe (``compile/text-student.toml``, data like every recipe): a text
recipe holds ``[data] source`` of a text data source, ``max_length`` (WordPiece ids) and
``[model] embed = "token"``; its ``[[compress.steps]]`` is the chain run over the text teacher
and its ``[train]`` the transfer set (:mod:`edgeuq.text.student_chain`).
"""
from __future__ import annotations

from typing import Union

from ..catalog import Recipe, get_recipe
from ..data.sources import DATA_SOURCES

__all__ = ["TEXT_STUDENT_RECIPE", "text_recipe"]

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
