"""What a run left out of its mode, where its time went, and the console summary at its end."""
from __future__ import annotations

import argparse
from typing import Any


def cuts(args: argparse.Namespace, profile) -> list[str]:
    """What this run leaves out of its mode, by the user's choice."""
    from benchmarks.profiles import PROFILES

    default = PROFILES[profile.name]
    out = [f"{profile.seeds} training seed(s) instead of the mode's {default.seeds}"
           + (" (no spread)" if profile.seeds == 1 else "")
           ] if profile.seeds < default.seeds else []
    if args.skip_digits and default.digits_chain:
        out.append("the default (digits) chain's cost run (--skip-digits)")
    if getattr(args, "no_probe", False) and default.probe_factor:
        out.append("the convergence probe (--no-probe): without it the baseline's convergence is not shown, so "
                   "the targets are not met")
    if args.skip_throughput:
        out.append("train stage vs bare loop (--skip-throughput)")
    if not args.search_result:
        out.append("the search's pick: `python -m flows.search` runs for hours on 2 cores (each trial fine-tunes "
                   "and distils), so the benchmark never runs it itself; benchmark its result with --search-result")
    return out


def budget(doc: dict[str, Any]) -> dict[str, Any]:
    """The mode's wall-time goal against what took the time: each chain, the peer's seeds, the rest (latency
    rounds, accuracy of every row), and the longest stages; `over_s` > 0 when the goal was missed. `met` is None
    (not judged) for a run under the goal that has errors or no compression table."""
    parts = {f"chain {k}": c.get("total_wall_s") or 0.0 for k, c in (doc.get("cost") or {}).items()}
    parts["external peer"] = sum(r.get("wall_s") or 0.0 for r in doc.get("reference") or [])
    parts.update({f"seed {k} (train .. evaluate)": c.get("total_wall_s") or 0.0
                  for k, c in ((doc.get("seeds") or {}).get("chains") or {}).items()})
    if doc.get("convergence_probe"):
        parts["convergence probe (seed 0 trained longer)"] = doc["convergence_probe"].get("wall_s") or 0.0
    if doc.get("training_throughput"):
        parts["training throughput"] = doc["training_throughput"].get("measured_in_s") or 0.0
    total, goal = doc.get("duration_s") or 0.0, doc["settings"]["budget_s"]
    side_by_side = (doc["settings"].get("jobs") or 1) > 1
    if not side_by_side:  # with --jobs the parts ran at the same time: no remainder to derive
        parts["measuring the rows and the rest"] = max(0.0, total - sum(parts.values()))
    stages = [(f"{label}: {name}", st.get("wall_s") or 0.0) for label, c in (doc.get("cost") or {}).items()
              for name, st in (c.get("stages") or {}).items()]
    # under the goal proves nothing when the run stopped early or skipped work after an error
    finished = not doc.get("errors") and bool((doc.get("compression") or {}).get("rows"))
    return {"goal_s": goal, "took_s": total, "over_s": round(total - goal, 1),
            "met": False if total > goal else True if finished else None,
            "parts_s": {k: round(v, 1) for k, v in parts.items() if v}, "parts_overlap": side_by_side,
            "longest_stages_s": {k: round(v, 1) for k, v in sorted(stages, key=lambda kv: -kv[1])[:3]}}


def print_summary(doc: dict[str, Any], say) -> None:
    comp = doc.get("compression") or {}
    t = comp.get("targets") or {}
    if t.get("candidate"):
        say(f"targets for {t['candidate']} ({t['selected_by']}): {'ALL MET' if t['all_met'] else 'NOT ALL MET'}")
        for it in t["items"]:
            say(f"  {it['name']}: {it['value']} (need {it['op']} {it['limit']}) -> "
                f"{ {True: 'met', False: 'NOT MET', None: 'not measured'}[it['met']]}")
    for label, c in (doc.get("cost") or {}).items():
        say(f"cost {label}: {c['total_wall_s']:.0f} s total, max peak RSS {c['max_peak_rss_mb']} MB")
    say(f"total benchmark time {doc['duration_s']:.0f} s")
