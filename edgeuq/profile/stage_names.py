"""The stages of one inference, in order (shared by the latency report and its plots)."""
from __future__ import annotations

from typing import Any, List

__all__ = ["STAGES", "ordered_stages"]

from edgeuq_runtime.profiling import STAGES  # noqa: E402  (one definition, in the runtime)


def ordered_stages(names: Any) -> List[str]:
    """Stage names in inference order (STAGES first, then others, "sum of stages" last)."""
    names = list(names)
    rank = {n: i for i, n in enumerate(STAGES)}
    return sorted(names, key=lambda n: (n == "sum of stages", rank.get(n, len(STAGES)), n))
