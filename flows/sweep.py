"""sweep: many compression configurations in parallel on Dask, ending with the Pareto front and the best one.

    python -m flows.sweep --ratio 0.25 --ratio 0.5 --ratio 0.75 --clusters 16 --clusters 64
    python -m flows.sweep --address tcp://scheduler:8786      # a running Dask cluster (shared filesystem)

The shared stages (prepare, validate, train) run once in the project, through DVC (dvc.lock records them, DVC's
cache skips them when up to date). Every configuration (prune.ratio x
cluster.n_clusters x quantize mode) then runs the compression stages and export/evaluate/bench/gate in its own
work dir `sweeps/<name>/<config>/`, which links the project's prepared data and baseline. The stages are the
stage functions as Prefect tasks (`flows.tasks.run_stage`, scratch work dirs outside DVC), submitted to a DaskTaskRunner: a local cluster (n_workers
processes, 1 thread each) by default, a remote scheduler with `address`. The result, `sweeps/<name>/sweep.json`
and a table artifact, lists every configuration, the Pareto front (accuracy vs p50 latency) over all their
compressed candidates, and the best configuration whose gate passed (ranked by gate.rank_by).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import Failed, State

from edgeopt.cliargs import add_params_args
from edgeopt.gating import forget_results, rank_key
from edgeopt.io import write_json
from edgeopt.params import project_params
from edgeopt.paths import Paths
from edgeopt.results import pareto_front, plot_pareto
from flows.scratch import (SETUP_ERRORS, dask_runner, link_shared_inputs, lost_on_cluster, run_shared_stages,
                           run_title, validate_variants, variant_stages)
from flows.tasks import final_states, stopped_because, submit_stages
from flows.ui import png_data_uri, release_rows

# Sweep defaults on top of params.yaml: short fine-tuning, no distillation or sensitivity scan, short benches.
SWEEP_OVERRIDES = ["finetune.epochs=2", "cluster.finetune_epochs=1", "distill.enabled=false",
                   "sensitivity.enabled=false", "quantize.calibration_size=128", "export.parity_samples=128",
                   "bench.runs=50", "bench.warmup=5", "bench.pytorch_reference=false", "train.threads=1"]
__all__ = ["lost_on_cluster", "sweep"]  # lost_on_cluster: flows.scratch, kept importable from here


def config_grid(prune_ratios: list[float], n_clusters: list[int], quantize_modes: list[str]) -> list[dict[str, Any]]:
    return [{"id": f"prune{r:g}-k{k}-{m}", "prune_ratio": r, "n_clusters": k, "quantize_mode": m,
             "overrides": [f"prune.ratio={r}", f"cluster.n_clusters={k}", f"quantize.modes=[{m}]"]}
            for r in prune_ratios for k in n_clusters for m in quantize_modes]


def sweep_run_name() -> str:
    from prefect.runtime import flow_run

    p = flow_run.parameters
    n = len(p.get("prune_ratios") or []) * len(p.get("n_clusters") or []) * len(p.get("quantize_modes") or [])
    return run_title(f"sweep of {n} configs", p.get("params_file", "params.yaml"), p.get("overrides"),
                     p.get("root", "."))


@flow(name="edge-sweep-configs")
def run_configs(configs: list[dict[str, Any]], params_file: str, overrides: list[str], root: str
                ) -> dict[str, str | None]:
    """Each configuration's stages in its work dir, all submitted at once; returns config -> why it stopped."""
    stages = variant_stages(root, ["gate"])
    futures = {}
    for cfg in configs:
        params = project_params(params_file, overrides + cfg["overrides"], root)
        futures[cfg["id"]] = submit_stages(stages, params, cfg["workdir"], label=cfg["id"])
    return {cid: stopped_because(final_states(f)) or lost_on_cluster(f) for cid, f in futures.items()}


def config_result(cfg: dict[str, Any], stopped: str | None) -> tuple[dict, list[dict], dict | None]:
    """One configuration's outcome (from its gate report) and its compressed candidates' report rows."""
    cand_rows, gate = release_rows(Paths(Path(cfg["workdir"])))
    gate_rows = {r["name"]: r for r in (gate or {}).get("rows", [])}
    rows = [{**r, "name": f"{cfg['id']}/{r['name']}", "config": cfg["id"]} for r in cand_rows
            if not gate_rows.get(r["name"], {}).get("baseline")]  # the shared baseline is in every config
    pick = gate_rows.get((gate or {}).get("selected") or "")
    result = {**{k: cfg[k] for k in ("id", "prune_ratio", "n_clusters", "quantize_mode", "overrides", "workdir")},
              "status": "pass" if pick else ("none_pass" if gate and gate.get("rows") else "failed"),
              "reason": stopped, "selected": pick["name"] if pick else None,
              **{k: (pick or {}).get(k) for k in ("accuracy", "drop", "latency_ms", "size_bytes")}}
    return result, rows, pick


def sweep_results(configs: list[dict[str, Any]], stopped: dict[str, str | None], rank_by: str
                  ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The sweep document (configs, Pareto front over all compressed candidates, best passing config) and
    the candidate rows it was computed from. The best is ranked like the gate ranks candidates."""
    results, rows, ranks = [], [], {}
    for cfg in configs:
        result, cand_rows, pick = config_result(cfg, stopped.get(cfg["id"]))
        results.append(result)
        rows += cand_rows
        if pick:
            ranks[cfg["id"]] = rank_key(pick, rank_by)
    front = pareto_front(rows, "p50_ms")
    best = min(ranks, key=ranks.get) if ranks else None
    for r in results:
        r["on_pareto_front"] = [n.split("/", 1)[1] for n in front if n.startswith(r["id"] + "/")]
        r["best"] = r["id"] == best
    best_doc = next(({k: r[k] for k in ("id", "overrides", "selected", "accuracy", "drop", "latency_ms",
                                        "size_bytes", "workdir")} for r in results if r["best"]), None)
    doc = {"rank_by": rank_by, "configs": results, "pareto_front": front,
           "pareto_points": [{k: r.get(k) for k in ("name", "accuracy", "p50_ms", "p90_ms", "size_kb", "verdict")}
                             for r in rows if r["name"] in front], "best": best_doc}
    return doc, rows


@task(name="summarize-sweep")
def summarize_sweep(configs: list[dict[str, Any]], stopped: dict[str, str | None], rank_by: str,
                    out_file: str) -> dict[str, Any]:
    """sweeps/<name>/sweep.json, the `edge-sweep` table and the `edge-sweep-summary` markdown artifact."""
    doc, rows = sweep_results(configs, stopped, rank_by)
    write_json(out_file, doc)
    best, front = doc["best"], doc["pareto_front"]
    create_table_artifact(
        key="edge-sweep", table=[{"config": r["id"], "status": r["status"], "selected": r["selected"],
                                  "accuracy %": r["accuracy"], "drop pt": r["drop"], "latency ms": r["latency_ms"],
                                  "size bytes": r["size_bytes"], "on Pareto front": ", ".join(r["on_pareto_front"]) or "-",
                                  "best": r["best"], "reason": r["reason"] or "-"} for r in doc["configs"]],
        description=f"{len(doc['configs'])} configurations; best (gate passed, rank_by={rank_by}): "
                    f"{best['id'] + ' / ' + best['selected'] if best else 'none'}")
    md = [f"# Sweep: {len(doc['configs'])} configurations", "",
          f"**Best**: `{best['id']}` with `{best['selected']}` ({best['accuracy']} %, {best['latency_ms']} ms, "
          f"{best['size_bytes']} B)" if best else "**No configuration passes the gates.**", "",
          "Pareto front (accuracy vs p50 latency): " + (", ".join(f"`{n}`" for n in front) or "-"), "",
          f"Results: `{out_file}`"]
    if front:
        png = plot_pareto(rows, "p50_ms", "p50 latency (ms)", "Sweep: accuracy vs latency")
        md += ["", f"![accuracy vs latency]({png_data_uri(png)})"]
    create_markdown_artifact(key="edge-sweep-summary", markdown="\n".join(md), description="Sweep outcome")
    get_run_logger().info("sweep: best %s; Pareto front %s", best and best["id"], front)
    return doc


@flow(name="edge-sweep", flow_run_name=sweep_run_name,
      description="Evaluate a grid of compression configurations in parallel on Dask; Pareto front and best config.")
def sweep(params_file: str = "params.yaml", overrides: list[str] | None = None, root: str = ".",
          prune_ratios: list[float] = [0.25, 0.5, 0.75], n_clusters: list[int] = [16, 64],  # noqa: B006
          quantize_modes: list[str] = ["ov_int8"], sweep_overrides: list[str] | None = None,  # noqa: B006
          address: str | None = None, n_workers: int = 2, name: str = "sweep") -> dict[str, Any] | State:
    """Args beyond edge_release's: the grid, `sweep_overrides` applied to every configuration (default
    SWEEP_OVERRIDES: short fine-tuning, small benches), `address` of a Dask scheduler (default: a local cluster of
    `n_workers` processes), `name` of the sweep (results in sweeps/<name>/)."""
    logger = get_run_logger()
    root_path = Path(root).resolve()
    base = list(overrides or [])
    per_config = SWEEP_OVERRIDES if sweep_overrides is None else list(sweep_overrides)
    out_dir = root_path / "sweeps" / name
    configs = config_grid(prune_ratios, n_clusters, quantize_modes)
    if not configs:
        return Failed(message="the sweep grid is empty: give at least one prune ratio, cluster count and mode")
    try:  # every configuration must validate before anything runs
        params = validate_variants(params_file, base, {f"sweep configuration {c['id']}": per_config + c["overrides"]
                                                       for c in configs}, root_path)
        shared = run_shared_stages(root_path, params_file, base, out_dir / "shared")
    except SETUP_ERRORS as exc:
        logger.error("%s", exc)
        return Failed(message=str(exc))
    for cfg in configs:
        cfg["workdir"] = link_shared_inputs(str(shared), str(out_dir / cfg["id"]))
        forget_results(Paths(Path(cfg["workdir"])))
    logger.info("sweep %s: %d configurations on %s", name, len(configs), address or f"a local Dask cluster "
                f"({n_workers} workers x 1 thread)")
    stopped = run_configs.with_options(task_runner=dask_runner(address, n_workers))(
        configs, params_file, base + per_config, str(root_path))
    return summarize_sweep(configs, stopped, params.gate.rank_by, str(out_dir / "sweep.json"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.sweep", description=sweep.description)
    add_params_args(ap)
    ap.add_argument("--ratio", dest="prune_ratios", type=float, action="append")
    ap.add_argument("--clusters", dest="n_clusters", type=int, action="append")
    ap.add_argument("--mode", dest="quantize_modes", action="append")
    ap.add_argument("--address", help="Dask scheduler address, e.g. tcp://10.0.0.5:8786 (default: local cluster)")
    ap.add_argument("--workers", dest="n_workers", type=int, default=2)
    ap.add_argument("--name", default="sweep")
    args = vars(ap.parse_args(argv))
    kwargs = {k: v for k, v in args.items() if v is not None}
    kwargs["params_file"] = kwargs.pop("params")
    state = sweep(**kwargs, return_state=True)
    if not state.is_completed():
        print(f"sweep: {state.message}", file=sys.stderr)
        return 1
    doc = state.result()
    best = doc["best"]
    if best:
        print(f"best: {best['id']} ({best['selected']})")
        return 0
    reached = [c for c in doc["configs"] if c["status"] != "failed"]
    print(f"no configuration passes the gates ({len(reached)} of {len(doc['configs'])} reached the gate)",
          file=sys.stderr)
    return 3 if reached else 1  # as `edgeopt gate`: 3 none passes; 1 none got that far (a stage failed)


if __name__ == "__main__":
    sys.exit(main())
