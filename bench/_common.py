"""Shared helpers for the benches: a cached EDGE_HOME with the default model, timing stats, tables."""

from __future__ import annotations

import os
import statistics
from pathlib import Path

CHAT_MODEL = "smollm2-135m-instruct-q4_1"


def bench_home() -> Path:
    """EDGE_HOME for benches (EDGE_HOME if set, else the test cache), with the default chat model pulled."""
    from edge.config import Settings
    from edge.registry import Catalog, Store

    home = Path(os.environ.get("EDGE_HOME") or Path.home() / ".cache" / "edge-run-tests" / "home")
    s = Settings.from_env(env={}, home=home)
    Store(s).pull(Catalog(None).get(CHAT_MODEL))
    return home


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in headers]] + [[f"{c:.3g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])
