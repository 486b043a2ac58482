"""The whole-chain search's space and verdicts (params.yaml `search`), independent of any orchestrator.

- `knobs(params)`: `{"prune.ratio": Range, "prune.importance": [...], ...}`, the space flattened; `distributions`
  turns it into Optuna distributions (a range of an int knob samples ints).
- `trial_overrides(values)`: the `key=value` overrides a sampled point means (the `quantize.mode` knob sets
  quantize.modes and distill.quantize_modes to that one mode).
- `assess(rows, max_macs)`: a trial's candidates from the gate's rows, each feasible or not (the gate's latency
  and size budgets, search.max_macs), the best feasible one (highest validation accuracy) and by how much the
  closest candidate misses the budgets (Optuna's constraint: <= 0 is feasible).
"""
from __future__ import annotations

import math
from typing import Any

import yaml

from edgeopt.params import QUANT_MODE_KNOB, Params, Range

# intermediate values for the pruner, reported after these stages: the best PyTorch validation accuracy so far
INTERMEDIATE = (("finetune", "val_accuracy"), ("distill", "val_accuracy"))


def knobs(params: Params) -> dict[str, Any]:
    return {f"{section}.{key}": dim for section, ks in params.search.space.items() for key, dim in ks.items()}


def is_int_knob(key: str) -> bool:
    section, name = key.split(".", 1)
    sections = {(f.alias or n): f.annotation for n, f in Params.model_fields.items()}
    fields = getattr(sections.get(section), "model_fields", {})
    return name in fields and fields[name].annotation is int


def distributions(params: Params) -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for key, dim in knobs(params).items():
        if not isinstance(dim, Range):
            out[key] = CategoricalDistribution(dim)
        elif is_int_knob(key):
            out[key] = IntDistribution(int(dim.low), int(dim.high), step=int(dim.step or 1), log=dim.log)
        else:
            out[key] = FloatDistribution(dim.low, dim.high, step=dim.step or None, log=dim.log)
    return out


def value_text(value: Any) -> str:
    """A value as an override writes it (YAML; floats without binary noise: 0.30000000000000004 -> 0.3)."""
    if isinstance(value, float):
        value = float(f"{value:.10g}")
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


def trial_overrides(values: dict[str, Any]) -> list[str]:
    out = []
    for key, value in values.items():
        if key == QUANT_MODE_KNOB:
            out += [f"quantize.modes=[{value_text(value)}]", f"distill.quantize_modes=[{value_text(value)}]"]
        else:
            out.append(f"{key}={value_text(value)}")
    return out


def corner_overrides(params: Params) -> dict[str, list[str]]:
    """Every end of every range and every choice alone, as overrides to validate before the search runs."""
    out = {}
    for key, dim in knobs(params).items():
        values = [dim.low, dim.high] if isinstance(dim, Range) else list(dim)
        for v in values:
            v = int(v) if isinstance(dim, Range) and is_int_knob(key) else v
            out[f"search.space {key}={value_text(v)}"] = trial_overrides({key: v})
    return out


# the budgets a feasible candidate meets: (label, candidate key, format); a budget of 0 / None is no budget
BUDGETS = (("latency", "latency_ms", "{:.3f} ms"), ("size", "size_bytes", "{:,.0f} B"), ("MACs", "macs", "{:,.0f}"))


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def candidate(row: dict[str, Any], budgets: dict[str, float]) -> dict[str, Any]:
    """One gate row as a search candidate: `measured` (exported, evaluated and benched), `feasible` when within
    every budget; `violation`: its largest relative excess over a budget (<= 0: within all; None: unknown)."""
    c = {"name": row["name"], "runtime": row.get("runtime"), "precision": row.get("precision"),
         "baseline": bool(row.get("baseline")), "val_accuracy": row.get("accuracy"),
         "macs": (row.get("metrics") or {}).get("macs"), "latency_ms": row.get("latency_ms"),
         "p50_ms": (row.get("latency") or {}).get("p50_ms"), "size_bytes": row.get("size_bytes"),
         "measured": row.get("verdict") != "rejected" and _finite(row.get("accuracy")), "feasible": False,
         "violation": None, "reasons": []}
    if not c["measured"]:
        c["reasons"] = list(row.get("reasons") or ["not measured"])
        return c
    over = []
    for label, key, fmt in BUDGETS:
        limit = budgets.get(key)
        if not limit:
            continue
        if not _finite(c[key]):
            c["reasons"].append(f"{label} not measured")
            over.append(None)
        else:
            over.append(c[key] / limit - 1)
            if c[key] > limit:
                c["reasons"].append(f"{label} {fmt.format(c[key])} > budget {fmt.format(limit)}")
    c["feasible"] = not c["reasons"]
    c["violation"] = None if None in over else round(max(over, default=0.0), 6)
    return c


def assess(rows: list[dict[str, Any]], budgets: dict[str, float]) -> dict[str, Any]:
    """A trial's verdict from the gate's candidate rows (stages.gate.build_rows; in a trial the accuracy is
    validation accuracy). Baselines are the project's, not the trial's: listed, never picked. The pick is the
    most accurate feasible candidate (then fewer MACs, then faster); `violation` is the smallest excess over the
    budgets among the trial's candidates (Optuna's constraint: <= 0 feasible; 1.0 when none was measured)."""
    cands = [candidate(r, budgets) for r in rows]
    own = [c for c in cands if not c["baseline"]]
    measured = [c for c in own if c["measured"]]
    pick = max((c for c in measured if c["feasible"]), default=None,
               key=lambda c: (c["val_accuracy"], -(c["macs"] or 0), -c["latency_ms"]))
    misses = [c["violation"] for c in measured if c["violation"] is not None]
    why = "; ".join(f"{c['name']}: {', '.join(c['reasons'])}" for c in (measured or own))
    reason = (None if pick else f"no candidate within the budgets: {why}" if measured else
              f"no compressed candidate was measured: {why}" if own else "no candidates")
    return {"candidates": cands, "feasible": pick is not None, "pick": pick["name"] if pick else None,
            "objective": pick["val_accuracy"] if pick else None,
            "best_val_accuracy": max((c["val_accuracy"] for c in measured), default=None),
            "violation": min(misses, default=1.0), "infeasible_reason": reason}
