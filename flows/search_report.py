"""The search's results, from its Optuna study (the one record of the trials): sweeps/<name>/search.json, the
winner as a complete params file (best_params.yaml), and the Prefect artifacts `edge-search` (a table of the
trials) and `edge-search-summary` (markdown: the winner, its test-split check, how to release it, the
optimization history and the Pareto fronts as data-URI PNGs). Names from files are escaped (edgeopt.markup).
"""
from __future__ import annotations

import io
import shlex
from pathlib import Path
from typing import Any, Callable

import yaml
from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from edgeopt import markup as mk
from edgeopt.io import atomic_write_bytes, write_json
from edgeopt.params import Params, Search, render_params_file
from edgeopt.pareto import pareto_front
from edgeopt.plots import pareto_png, plain
from flows.ui import png_data_uri

CANDIDATE_KEYS = ("val_accuracy", "macs", "latency_ms", "size_bytes")
FRONTS = (("macs", "MACs"), ("latency_ms", "latency (ms)"))  # the fronts: validation accuracy vs each cost


def trial_record(t: Any) -> dict[str, Any]:
    """One trial as search.json lists it."""
    attrs, result = t.user_attrs, t.user_attrs.get("result") or {}
    state = "interrupted" if attrs.get("interrupted") else t.state.name.lower()
    return {"trial": t.number, "state": state, "params": t.params, "overrides": attrs.get("overrides", []),
            "workdir": attrs.get("workdir"), "feasible": bool(result.get("feasible")),
            "objective": result.get("objective"), "pick": result.get("pick"),
            "infeasible_reason": result.get("infeasible_reason"), "violation": result.get("violation"),
            "pruned_after": result.get("pruned_after"), "pruned_step": result.get("step"),
            "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())},
            "reason": attrs.get("reason"), "rerun_of": attrs.get("rerun_of"),
            "duplicate_of": attrs.get("duplicate_of"), "wall_s": result.get("wall_s"), "cpu_s": result.get("cpu_s"),
            "candidates": result.get("candidates", [])}


def best_of(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The feasible trial with the highest objective (validation accuracy); ties: fewer MACs, faster, earlier."""
    def key(r: dict[str, Any]) -> tuple:
        c = next(c for c in r["candidates"] if c["name"] == r["pick"])
        return (-r["objective"], c["macs"] or 0, c["latency_ms"], r["trial"])

    ok = [r for r in records if r["state"] == "complete" and r["feasible"]]
    if not ok:
        return None
    r = min(ok, key=key)
    pick = next(c for c in r["candidates"] if c["name"] == r["pick"])
    return {"trial": r["trial"], "params": r["params"], "overrides": r["overrides"], "pick": r["pick"],
            "workdir": r["workdir"], **{k: pick[k] for k in (*CANDIDATE_KEYS, "runtime", "precision")}}


def candidate_rows(records: list[dict[str, Any]], best: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every measured compressed candidate of every complete trial, named trial-<n>/<candidate>."""
    chosen = f"trial-{best['trial']}/{best['pick']}" if best else None
    rows = []
    for r in records:
        for c in r["candidates"] if r["state"] == "complete" and r["duplicate_of"] is None else []:
            if c["baseline"] or not c["measured"]:
                continue
            name = f"trial-{r['trial']}/{c['name']}"
            rows.append({"name": name, "accuracy": c["val_accuracy"], "macs": c["macs"],
                         "latency_ms": c["latency_ms"], "size_bytes": c["size_bytes"], "feasible": c["feasible"],
                         "verdict": "pass" if c["feasible"] else "fail", "selected": name == chosen})
    return rows


def release_commands(best_file: Path, root: Path, overrides: list[str]) -> dict[str, str]:
    rel = best_file.relative_to(root) if best_file.is_relative_to(root) else best_file
    return {"cp": f"cp {shlex.quote(str(rel))} params.yaml && dvc repro",
            "dvc_exp_run": "dvc exp run " + " ".join(f"-S {shlex.quote(o)}" for o in overrides),
            "benchmark": f"python -m benchmarks --search-result {shlex.quote(str(rel.parent / 'search.json'))}"}


def best_params_text(root: Path, params_file: str, overrides: list[str]) -> str:
    """params.yaml with `params_file` (when another) and the overrides applied, comments kept."""
    target = root / "params.yaml"
    other = Path(params_file) if Path(params_file).is_absolute() else root / params_file
    base = None if other.resolve() == target.resolve() else yaml.safe_load(other.read_text()) or {}
    return render_params_file(target.read_text(), overrides, base)


def history_png(records: list[dict[str, Any]]) -> bytes:
    """Objective per trial: feasible (filled), infeasible at its best validation accuracy (hollow), pruned at its
    last intermediate value (x), and the best feasible value so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2))
    try:
        groups: dict[str, list[tuple[int, float]]] = {"feasible": [], "infeasible": [], "pruned": []}
        best, best_line = None, []
        for r in records:
            accs = [c["val_accuracy"] for c in r["candidates"] if not c["baseline"] and c["measured"]]
            if r["state"] == "complete" and r["feasible"]:
                groups["feasible"].append((r["trial"], r["objective"]))
                best = r["objective"] if best is None else max(best, r["objective"])
            elif r["state"] == "complete" and accs:
                groups["infeasible"].append((r["trial"], max(accs)))
            elif r["state"] == "pruned" and r["intermediate"]:
                groups["pruned"].append((r["trial"], list(r["intermediate"].values())[-1]))
            if best is not None:
                best_line.append((r["trial"], best))
        groups = {k: tuple(zip(*v)) or ((), ()) for k, v in groups.items()}
        ax.scatter(*groups["feasible"], color="tab:blue", zorder=3, label="feasible: best candidate")
        ax.scatter(*groups["infeasible"], facecolors="white", edgecolors="tab:gray", zorder=3,
                   label="infeasible (over a budget): most accurate candidate")
        ax.scatter(*groups["pruned"], marker="x", color="tab:orange", zorder=3, label="pruned: last reported value")
        if best_line:
            ax.step(*zip(*best_line), where="post", color="tab:red", alpha=0.7, label="best feasible so far")
        ax.set_xlabel("trial")
        ax.set_ylabel("validation accuracy (%)")
        ax.set_title("Search: optimization history")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        return buf.getvalue()
    finally:
        plt.close(fig)


def summarize_search(study: Any, settings: Search, params: Params, root: str, params_file: str, base: list[str],
                     check_winner: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """search.json, best_params.yaml and the artifacts; `check_winner(best)` runs the test-split check."""
    root_path = Path(root)
    out_dir = root_path / "sweeps" / study.study_name
    records = [trial_record(t) for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)]
    best = best_of(records)
    rows = candidate_rows(records, best)
    feasible = [r for r in rows if r["feasible"]]
    fronts = {key: pareto_front(feasible, minimize=(key,), maximize=("accuracy",)) for key, _ in FRONTS}
    doc: dict[str, Any] = {
        "name": study.study_name, "study": str(out_dir / "study"), "objective": (
            "maximise the validation accuracy of a trial's best candidate in its runtime (exported file in ONNX "
            "Runtime / OpenVINO), within the budgets"),
        "budgets": {"latency_ms": params.gate.max_latency_ms, "latency_percentile": params.gate.latency_percentile,
                    "size_bytes": params.gate.max_size_bytes, "macs": params.search.max_macs or None},
        "settings": settings.model_dump(), "overrides": base,
        "counts": {s: sum(r["state"] == s for r in records) for s in ("complete", "pruned", "fail", "interrupted")},
        "trials": records, "pareto_front": fronts,
        "pareto_points": [r for r in rows if any(r["name"] in f for f in fronts.values())],
        "best": best, "winner_check": None, "best_params": None, "release": None}
    if best:
        best_file = out_dir / "best_params.yaml"
        atomic_write_bytes(best_file, best_params_text(root_path, params_file, base + best["overrides"]).encode())
        doc.update(best_params=str(best_file), release=release_commands(best_file, root_path,
                                                                         base + best["overrides"]))
        doc["winner_check"] = check_winner(best)
    doc["status"], doc["message"] = _status(doc)
    write_json(out_dir / "search.json", doc)
    _publish(doc, rows, records)
    get_run_logger().info("search %s: %s", study.study_name, doc["message"])
    return doc


def _status(doc: dict[str, Any]) -> tuple[str, str]:
    best, check, n = doc["best"], doc["winner_check"], len(doc["trials"])
    if not best:
        reasons = sorted({r["infeasible_reason"] or r["reason"] or r["state"] for r in doc["trials"]
                          if r["state"] != "pruned"})
        return "none_feasible", f"no feasible configuration in {n} trials ({'; '.join(reasons)[:1500]})"
    head = (f"trial-{best['trial']} wins: {best['pick']} at {best['val_accuracy']:.2f} % validation accuracy, "
            f"{best['macs']:,} MACs, {best['latency_ms']:.3f} ms")
    if check["gate_status"] != "pass":
        return "winner_fails_gate", f"{head}; but on the test split its gate passes nothing: " \
                                    f"{check['stopped'] or check['gate_status']}"
    return "found", f"{head}; on the test split {mk.pct(check['search_pick_test_accuracy'])}, its gate picks " \
                    f"{check['gate_selected']}"


def _publish(doc: dict[str, Any], rows: list[dict[str, Any]], records: list[dict[str, Any]]) -> None:
    best = doc["best"]
    create_table_artifact(key="edge-search", description=doc["message"][:500], table=[
        {"trial": r["trial"], "state": r["state"], "feasible": r["feasible"],
         "objective (val %)": round(r["objective"], 3) if r["objective"] is not None else None,
         "pick": mk.md_cell(r["pick"]), "pruned after": r["pruned_after"] or "-",
         "why": mk.md_cell(r["infeasible_reason"] or r["reason"] or "-"),
         "params": mk.md_cell(" ".join(r["overrides"])), "best": bool(best and best["trial"] == r["trial"])}
        for r in records])
    md = [f"# Search {mk.md_text(doc['name'])}: {len(records)} trials", "",
          "Trials: " + ", ".join(f"{v} {k}" for k, v in doc["counts"].items() if v), "",
          f"**{mk.md_text(doc['message'])}**", ""]
    if best:
        check = doc["winner_check"]
        md += ["| | |", "|---|---|",
               f"| winner | trial-{best['trial']}, {mk.md_code(best['pick'], True)} |",
               f"| validation accuracy | {mk.pct(best['val_accuracy'])} |",
               f"| test accuracy (once, after the search) | {mk.pct(check['search_pick_test_accuracy'])} |",
               f"| MACs, latency, size | {mk.count(best['macs'])}, {mk.ms(best['latency_ms'])}, "
               f"{mk.size(best['size_bytes'])} |",
               f"| gate on the test split | {mk.md_cell(check['gate_status'])}, pick "
               f"{mk.md_code(check['gate_selected'] or '-', True)} |", "",
               "Release it:", "", "```bash", doc["release"]["cp"], doc["release"]["dvc_exp_run"], "```", "",
               "Benchmark it beside the baseline and the bare-script peer (test split, deployed runtime):", "",
               "```bash", doc["release"]["benchmark"], "```", ""]
    md += [f"![optimization history]({png_data_uri(history_png(records))})", ""]
    for key, label in FRONTS:
        front = doc["pareto_front"][key]
        md += [f"## Pareto front: validation accuracy vs {label}", "", ", ".join(mk.md_code(n) for n in front) or "-"]
        if front:
            png = pareto_png(rows, key, label, plain(f"Search: validation accuracy vs {label}"), front=front,
                             selected=next((r["name"] for r in rows if r["selected"]), None),
                             ylabel="validation accuracy (%)")
            md += ["", f"![validation accuracy vs {label}]({png_data_uri(png)})"]
        md.append("")
    md.append(f"Results: {mk.md_code(str(Path(doc['study']).parent / 'search.json'))}")
    create_markdown_artifact(key="edge-search-summary", markdown="\n".join(md), description="Search outcome")
