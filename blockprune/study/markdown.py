"""Markdown primitives of the study report: number formatting, short run ids, pipe tables."""

from __future__ import annotations

import math
from collections.abc import Sequence


def fmt(v: float | None, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def short(run_id: str | None) -> str:
    return run_id[:8] if run_id else "–"


def block_list(b: Sequence[int]) -> str:
    return " ".join(str(i) for i in b)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return out
