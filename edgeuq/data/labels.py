"""Users' own label spellings -> a model's class names.

``normalize_label`` folds case and separators (``InnerRace``, ``inner-race``,
``Inner Race`` and ``INNER_RACE`` all become ``inner_race``); a label map
(``InnerRace=inner_race,Ball=ball`` or a JSON / TOML file of ``{"raw": "class"}``)
translates the rest. :class:`LabelMapper` applies both, and refuses labels it cannot
place with :class:`UnknownLabelsError`, which lists them and the classes.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from ._errors import DataError

__all__ = ["normalize_label", "parse_label_map", "LabelMapper", "UnknownLabelsError"]

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_SEPARATORS = re.compile(r"[\s\-./_]+")


def normalize_label(label: str) -> str:
    """Lower-case snake form: CamelCase split, runs of spaces, ``-``, ``.``, ``/``, ``_`` -> ``_``."""
    s = _CAMEL.sub("_", str(label).strip())
    return _SEPARATORS.sub("_", s).strip("_").lower()


class UnknownLabelsError(DataError):
    """Some labels are not among the classes and no label-map entry places them."""

    def __init__(self, where: str, labels: Sequence[str], class_names: Sequence[str]) -> None:
        self.labels = tuple(labels)
        self.class_names = tuple(class_names)
        example = ",".join(f"{lab}=<class>" for lab in self.labels[:2])
        super().__init__(
            f"{where}: labels {list(self.labels)[:8]} are not among the classes {list(self.class_names)}; "
            f"give a label map to translate them (e.g. {example})")


def parse_label_map(spec: Optional[str]) -> Dict[str, str]:
    """``"Raw=class,Other=class2"``, or the path of a ``.json`` / ``.toml`` file holding a
    table ``{raw: class}`` (TOML: top level or a ``[labels]`` table)."""
    if spec is None or not str(spec).strip():
        return {}
    spec = str(spec).strip()
    path = Path(spec)
    if path.suffix.lower() in (".json", ".toml"):
        if not path.is_file():
            raise DataError(f"label map file not found: {path}")
        try:
            if path.suffix.lower() == ".json":
                raw = json.loads(path.read_text(encoding="utf-8"))
            else:
                import tomllib

                raw = tomllib.loads(path.read_text(encoding="utf-8"))
                raw = raw.get("labels", raw)
        except ValueError as exc:
            raise DataError(f"label map {path}: {exc}") from None
        if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
            raise DataError(f"label map {path}: expected a table of label = class strings")
        return dict(raw)
    out: Dict[str, str] = {}
    for item in spec.split(","):
        if not item.strip():
            continue
        if item.count("=") != 1:
            raise DataError(f"label map entry {item.strip()!r}: expected RAW=CLASS (e.g. InnerRace=inner_race)")
        k, v = (s.strip() for s in item.split("="))
        if not k or not v:
            raise DataError(f"label map entry {item.strip()!r}: empty label or class")
        out[k] = v
    return out


@dataclass(frozen=True)
class LabelMapper:
    """Place raw labels among ``class_names``: exact name, then the label map (exact or
    normalized key), then a class whose normalized form matches."""

    class_names: Tuple[str, ...]
    label_map: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(self.class_names))
        bad = sorted({v for v in self.label_map.values() if v not in self.class_names})
        if bad:
            raise DataError(f"label map targets {bad} are not classes {list(self.class_names)}")

    def resolve(self, label: Optional[str]) -> Optional[str]:
        """The class for ``label``, or None when it cannot be placed."""
        if label is None:
            return None
        if label in self.class_names:
            return label
        if label in self.label_map:
            return self.label_map[label]
        norm = normalize_label(label)
        for k, v in self.label_map.items():
            if normalize_label(k) == norm:
                return v
        for c in self.class_names:
            if normalize_label(c) == norm:
                return c
        return None

    def unknown(self, labels: Iterable[Optional[str]]) -> List[str]:
        return sorted({lab for lab in labels if lab is not None and self.resolve(lab) is None})
