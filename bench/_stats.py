"""Medians and ratios over the suite's runs (lists of flat dicts)."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from typing import Any

Runs = list[dict[str, Any]]


def select(runs: Runs, **match: Any) -> Runs:
    """The runs whose fields equal every keyword."""
    return [r for r in runs if all(r.get(k) == v for k, v in match.items())]


def median(runs: Runs, key: str, **match: Any) -> float | None:
    """Median of `key` over the matching runs; None when none matched."""
    values = [r[key] for r in select(runs, **match)]
    return statistics.median(values) if values else None


def count(runs: Runs, **match: Any) -> int:
    return len(select(runs, **match))


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing or b is zero."""
    return None if a is None or b is None or b == 0 else a / b


def distinct(runs: Runs, key: str) -> list[Any]:
    """Values of `key` in first-seen order."""
    seen: dict[Any, None] = {}
    for r in runs:
        seen.setdefault(r.get(key), None)
    return list(seen)


def ms(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds * 1e3:,.0f} ms" if seconds >= 0.1 else f"{seconds * 1e3:,.1f} ms"


def mib(nbytes: float | None) -> str:
    return "–" if nbytes is None else f"{nbytes / (1 << 20):,.1f} MiB"


def gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.2f} GB"


def times(r: float | None) -> str:
    if r is None:
        return "–"
    return f"{r:,.2f}×" if r < 10 else f"{r:,.0f}×"


def pct(fraction: float | None) -> str:
    return "–" if fraction is None else f"{100 * fraction:.0f}%"


def table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    """A markdown table."""
    head = list(header)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
