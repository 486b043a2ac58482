"""Pareto fronts over candidate rows: the one definition the gate, the report and the Prefect artifacts share.

A row is a dict with a name and numbers; `minimize` / `maximize` name the criteria. Row A dominates B when
A is at least as good on every criterion and strictly better on one. Rows missing a criterion (None, NaN)
take no part: they are neither on the front nor dominate anything.

    pareto_front(rows, minimize=("latency_ms",), maximize=("accuracy",))      -> ["fast", "accurate"]
    dominated_by(rows, "slow", minimize=("latency_ms",), maximize=("accuracy",)) -> ["fast"]
"""
from __future__ import annotations

import math
from typing import Any, Iterable


def _measured(rows: Iterable[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    def ok(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    return [r for r in rows if all(ok(r.get(k)) for k in keys)]


def dominates(a: dict[str, Any], b: dict[str, Any], minimize: tuple[str, ...] = (),
              maximize: tuple[str, ...] = (), tolerance: dict[str, float] | None = None) -> bool:
    """a is at least as good as b on every criterion and strictly better on one. `tolerance` ({key: fraction},
    minimized keys): values within that fraction count as equal (timing noise), so a latency only makes a
    difference beyond it."""
    tol = tolerance or {}
    no_worse = all(a[k] <= b[k] * (1 + tol.get(k, 0.0)) for k in minimize) and all(a[k] >= b[k] for k in maximize)
    better = any(a[k] * (1 + tol.get(k, 0.0)) < b[k] for k in minimize) or any(a[k] > b[k] for k in maximize)
    return no_worse and better


def layers(rows: list[dict[str, Any]], minimize: tuple[str, ...] = (), maximize: tuple[str, ...] = (),
           tolerance: dict[str, float] | None = None) -> list[list[dict[str, Any]]]:
    """Non-dominated sorting: the Pareto front first, then the front of what remains, and so on."""
    pool, out = list(rows), []
    while pool:
        front = [r for r in pool if not any(dominates(o, r, minimize, maximize, tolerance) for o in pool
                                            if o is not r)]
        out.append(front)
        pool = [r for r in pool if all(r is not f for f in front)]
    return out


def pareto_front(rows: Iterable[dict[str, Any]], minimize: tuple[str, ...] = (), maximize: tuple[str, ...] = (),
                 name: str = "name") -> list[str]:
    """Names of the non-dominated rows, sorted by the first criterion (best first), then by name."""
    keys = (*minimize, *maximize)
    pts = _measured(rows, keys)
    front = [r for r in pts if not any(dominates(o, r, minimize, maximize) for o in pts)]
    first = keys[0] if keys else None
    sign = -1 if first in maximize else 1
    return [r[name] for r in sorted(front, key=lambda r: (sign * r[first] if first else 0, str(r[name])))]


def dominated_by(rows: Iterable[dict[str, Any]], target: str, minimize: tuple[str, ...] = (),
                 maximize: tuple[str, ...] = (), name: str = "name") -> list[str]:
    """Names of the rows that dominate `target` (empty when it is on the front or not measured)."""
    pts = _measured(rows, (*minimize, *maximize))
    me = next((r for r in pts if r[name] == target), None)
    if me is None:
        return []
    return sorted(str(o[name]) for o in pts if dominates(o, me, minimize, maximize))
