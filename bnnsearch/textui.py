"""Plain-text tables and number formatting for the terminal (no dependencies)."""
from __future__ import annotations

import math


def fmt(v, digits: int = 4) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        if v != 0 and (abs(v) >= 1e6 or abs(v) < 1e-3):
            return f"{v:.3e}"
        return f"{v:.{digits}g}"
    return str(v)


def table(rows: list[list], headers: list[str], align_right: set[int] | None = None, markdown: bool = False) -> str:
    cells = [[fmt(c) for c in r] for r in rows]
    right = align_right if align_right is not None else set(range(1, len(headers)))
    if markdown:  # a GitHub table (write-ups): right-aligned columns get "---:"
        esc = [[c.replace("|", "\\|") for c in r] for r in [headers, *cells]]
        rule = ["---:" if i in right else "---" for i in range(len(headers))]
        return "\n".join("| " + " | ".join(r) + " |" for r in [esc[0], rule, *esc[1:]])
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]

    def line(vals):
        return "  ".join(v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in enumerate(zip(vals, widths)))

    out = [line(headers), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    return "\n".join(out)


def pct(v: float) -> str:
    return f"{100 * v:6.2f}%" if math.isfinite(v) else "   n/a"
