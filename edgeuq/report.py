"""Plain-text tables and the markdown demo report."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

from edgeuq_runtime.atomic import atomic_write

__all__ = ["format_table", "results_table", "write_markdown_report"]


def results_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], **extra: Any) -> Dict[str, Any]:
    """One results table in the form ``scripts/render_tables.py`` renders: ``{"headers", "rows",
    **extra}`` (extra: ``note``, ``command``, ``provenance``, raw data ...). The one builder every
    table of the package goes through: headers must be strings, every row a sequence as long as
    the headers (a ragged row is refused naming it, never padded)."""
    heads = list(headers)
    if isinstance(headers, str) or not all(isinstance(h, str) for h in heads):
        raise ValueError(f"table headers must be a list of strings, got {headers!r}"[:200])
    out_rows = []
    for i, r in enumerate(rows):
        if isinstance(r, (str, bytes)) or not isinstance(r, Sequence):
            raise ValueError(f"table row {i} must be a list of cells, got {type(r).__name__}")
        if len(r) != len(heads):
            raise ValueError(f"table row {i} has {len(r)} cells for {len(heads)} headers {heads}")
        out_rows.append(list(r))
    return {"headers": heads, "rows": out_rows, **extra}


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.3e}"
    return str(v)


def format_table(headers: Sequence[str], rows: Iterable[Sequence], markdown: bool = False) -> str:
    """Align a table for the terminal, or as a GitHub markdown table."""
    cells: List[List[str]] = [[_fmt(c) for c in r] for r in rows]
    heads = [str(h) for h in headers]
    if markdown:
        lines = ["| " + " | ".join(heads) + " |", "|" + "|".join("---" for _ in heads) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in cells]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(heads)]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(heads), "  ".join("-" * w for w in widths)] + [line(r) for r in cells])


def write_markdown_report(
    path: Path,
    title: str,
    sections: Mapping[str, str],
    images: Optional[Mapping[str, Path]] = None,
) -> Path:
    """Write ``sections`` (heading -> markdown body) and image links relative to the
    report's own folder (so they work wherever the folder is opened or moved)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}", ""]
    for heading, body in sections.items():
        parts += [f"## {heading}", "", body.rstrip(), ""]
    for caption, img in (images or {}).items():
        rel = Path(os.path.relpath(Path(img).resolve(), path.parent.resolve()))
        parts += [f"## {caption}", "", f"![{caption}]({rel.as_posix()})", ""]
    return atomic_write(path, "\n".join(parts))
