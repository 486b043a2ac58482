"""The candidates' measured results as rows: accuracy, drop, size, latency, speed-ups and the gate's verdict,
from metrics/evaluate.json, metrics/bench.json and reports/gate.json. The one table the report, the Prefect
artifacts and the sweeps show, and its Pareto chart. Torch-free."""
from __future__ import annotations

from typing import Any

from edgeopt import markup as mk

COLUMNS = [  # (key, header, format): the verdict next to the name, it is what people look for
    ("name", "candidate", "{}"), ("verdict", "gate", "{}"), ("runtime", "runtime", "{}"),
    ("precision", "precision", "{}"), ("accuracy", "accuracy %", "{:.2f}"), ("drop", "drop pt", "{:+.2f}"),
    ("drop_se", "+- SE pt", "{:.2f}"),  # the drop's paired standard error over the evaluated images
    ("size_kb", "size KB", "{:,.1f}"), ("p50_ms", "p50 ms", "{:.3f}"), ("p90_ms", "p90 ms", "{:.3f}"),
    ("speedup_pytorch", "speed-up vs FP32 PyTorch", "{:.2f}x"),
    ("speedup_baseline", "speed-up vs FP32 runtime", "{:.2f}x"), ("params", "params", "{:,}"),
    ("macs", "MACs", "{:,}"), ("unique_weights", "unique weights", "{:,}"),
]
TEXT_COLUMNS = ("name", "verdict", "runtime", "precision")
TABLE = [("index", "#", "{}"), *COLUMNS]  # the report's tables: `#` is the point's number in the Pareto charts


def _ratio(num: float | None, den: float | None) -> float | None:
    return round(num / den, 3) if num and den else None


def candidate_rows(evaluate: dict[str, Any], bench: dict[str, Any], gate: dict[str, Any] | None = None,
                   percentile: str | None = None) -> list[dict[str, Any]]:
    """One dict per candidate: accuracy, drop, size, params, MACs, unique weights, p50/p90, speed-ups, verdict;
    `latency_ms` is the percentile the gate ranks by (gate.json thresholds, else `percentile`, else p50)."""
    lat = bench.get("candidates", {})
    ref = ((bench.get("pytorch_reference") or {}).get("baseline") or {}).get("p50_ms")
    verdicts = {r["name"]: r for r in (gate or {}).get("rows", [])}
    selected = (gate or {}).get("selected")
    pct = ((gate or {}).get("thresholds") or {}).get("latency_percentile") or percentile or "p50"
    rows = []
    for i, (name, ev) in enumerate(evaluate.get("candidates", {}).items(), 1):
        b = lat.get(name, {})
        ok = b.get("status", "ok") == "ok"
        p50 = b.get("p50_ms") if ok else None
        base = lat.get(ev.get("baseline") or "", {}).get("p50_ms")
        g = verdicts.get(name)
        verdict = "-" if g is None else g["verdict"] + (" (selected)" if name == selected else "")
        reasons = (g or {}).get("reasons") or ([] if ev.get("status") == "ok" else [ev.get("reason") or "failed"])
        rows.append({"index": i, "name": name, "runtime": ev.get("runtime"), "precision": ev.get("precision"),
                     "accuracy": ev.get("accuracy"), "drop": ev.get("drop"), "drop_se": ev.get("drop_se"),
                     "size_kb": ev["file_bytes"] / 1e3 if ev.get("file_bytes") is not None else None,
                     "params": ev.get("params"), "macs": ev.get("macs"), "unique_weights": ev.get("unique_weights"),
                     "p50_ms": p50, "p90_ms": b.get("p90_ms") if p50 is not None else None,
                     "latency_ms": b.get(f"{pct}_ms") if ok else None, "latency_percentile": pct,
                     "speedup_pytorch": _ratio(ref, p50), "speedup_baseline": _ratio(base, p50),
                     "verdict": verdict, "reasons": reasons, "selected": name == selected,
                     "status": ev.get("status", "ok")})
    return rows


def pareto_front(rows: list[dict[str, Any]], x_key: str, y_key: str = "accuracy") -> list[str]:
    """Names on the front of lower x and higher y (edgeopt.pareto, the one definition), sorted by x."""
    from edgeopt.pareto import pareto_front as front

    return front(rows, minimize=(x_key,), maximize=(y_key,))


def cell(row: dict[str, Any], key: str, fmt: str) -> str:
    v = row.get(key)
    return "-" if v is None else fmt.format(v)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = "| " + " | ".join(h for _, h, _ in TABLE) + " |"
    sep = "|" + "|".join("---" if k in TEXT_COLUMNS else "---:" for k, _, _ in TABLE) + "|"
    body = ["| " + " | ".join(mk.md_cell(cell(r, k, f)) for k, _, f in TABLE) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def plot_pareto(rows: list[dict[str, Any]], x_key: str, xlabel: str, title: str) -> bytes:
    """PNG: numbered candidates, the Pareto front, the gate's pick (edgeopt.plots.pareto_png)."""
    from edgeopt.pareto import dominated_by
    from edgeopt.plots import pareto_png

    selected = next((r["name"] for r in rows if r.get("selected")), None)
    return pareto_png(rows, x_key, xlabel, title, front=pareto_front(rows, x_key), selected=selected,
                      dominated_by=dominated_by(rows, selected, minimize=(x_key,), maximize=("accuracy",))
                      if selected else None)
