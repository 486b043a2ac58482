"""Latency of every exported candidate in its runtime (batch 1, `bench` threads/streams) -> metrics/bench.json.

The timing itself is edgeopt.runtime (torch-free), the same code `edgeopt bench --model/--candidates` runs on
the device. Only the optional PyTorch eager reference needs torch; it is imported lazily and skipped without it.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any

import numpy as np

from edgeopt.arrays import load_meta
from edgeopt.errors import RuntimeModelError, StageError
from edgeopt.params import Params
from edgeopt.paths import Paths
from edgeopt.runtime import RUNTIMES, bench_report, targets_from_candidates, time_calls
from edgeopt.stage import stage, stage_main

log = logging.getLogger("edgeopt.bench")


@stage("bench")
def run(params: Params, paths: Paths) -> dict[str, Any]:
    b = params.bench
    allowed = RUNTIMES if params.target.runtime == "any" else (params.target.runtime,)
    try:
        targets, skipped = targets_from_candidates(paths.candidates, allowed)
    except RuntimeModelError as exc:
        raise StageError(f"{exc}; run `edgeopt export` first") from None
    if not targets:
        raise StageError(f"{paths.candidates}: no candidate passed export for runtimes {list(allowed)}; "
                         "nothing to benchmark (see the reasons in candidates.json)")
    report = quiet_report(targets, params, paths)
    report["candidates"].update(skipped)
    for name, r in report["candidates"].items():
        if r["status"] == "ok":
            log.info("%-30s %-12s p50 %.3f ms  p90 %.3f ms", name, r["runtime"], r["p50_ms"], r["p90_ms"])
        else:
            log.warning("%-30s %s: %s", name, r["status"], r["reason"])
    if b.pytorch_reference:
        report["pytorch_reference"] = {"baseline": pytorch_reference(params, paths)}
    return report


def _spread(entry: dict[str, Any]) -> float:
    return entry["p90_ms"] / entry["p50_ms"] if entry.get("status") == "ok" and entry.get("p50_ms") else 1.0


def quiet_report(targets: list, params: Params, paths: Paths) -> dict[str, Any]:
    """`bench.rounds` interleaved rounds over all candidates; each keeps its least disturbed round (lowest p90).
    A candidate whose best round still shows interference (p90/p50 > bench.max_spread: another process took
    the core) is measured again, up to `bench.retries` more rounds. Load averages before and after say how
    quiet the machine was; the Prefect flow runs no other stage meanwhile."""
    b = params.bench
    load_before = os.getloadavg()

    def one_round(subset: list) -> dict[str, Any]:
        return bench_report(subset, profile=params.target.name, threads=b.threads, streams=b.streams,
                            warmup=b.warmup, runs=b.runs, time_budget_s=b.time_budget_s,
                            device=params.target.device, base_dir=paths.exported)

    rounds = [one_round(targets) for _ in range(b.rounds)]
    report = rounds[-1]
    best: dict[str, dict[str, Any]] = {}
    for r in rounds:
        for name, entry in r["candidates"].items():
            if name not in best or (entry["status"] == "ok" and (best[name]["status"] != "ok"
                                                                 or entry["p90_ms"] < best[name]["p90_ms"])):
                best[name] = entry
    retried: dict[str, int] = {}
    for _ in range(b.retries):
        disturbed = [t for t in targets if _spread(best[t.name]) > b.max_spread]
        if not disturbed:
            break
        for name, entry in one_round(disturbed)["candidates"].items():
            retried[name] = retried.get(name, 0) + 1
            if entry["status"] == "ok" and entry["p90_ms"] < best[name]["p90_ms"]:
                best[name] = entry
    for name, entry in best.items():
        entry["spread_p90_p50"] = round(_spread(entry), 3)
        entry["disturbed"] = _spread(entry) > b.max_spread
    report["candidates"] = best
    report["measurement"] = {"rounds": b.rounds, "retried": retried, "max_spread": b.max_spread,
                             "load_average_before": [round(x, 2) for x in load_before],
                             "load_average_after": [round(x, 2) for x in os.getloadavg()],
                             "cores": os.cpu_count()}
    if any(e.get("disturbed") for e in best.values()):
        log.warning("bench: %s still show interference (p90/p50 > %s) after %d retries; load average %s",
                    sorted(n for n, e in best.items() if e.get("disturbed")), b.max_spread, b.retries,
                    report["measurement"]["load_average_after"])
    return report


def pytorch_reference(params: Params, paths: Paths) -> dict[str, Any]:
    """FP32 PyTorch eager latency of the baseline checkpoint, same protocol as the runtimes, 1 thread."""
    try:
        import torch
    except ImportError:
        return {"status": "skipped", "reason": "torch is not installed"}
    from edgeopt.models import load_checkpoint

    model, _, _ = load_checkpoint(paths.checkpoint("baseline"))
    meta = load_meta(paths.prepared)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(
        (1, meta["channels"], meta["image_size"], meta["image_size"])).astype(np.float32))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            timing = time_calls(lambda: model(x), warmup=params.bench.warmup, runs=params.bench.runs,
                                time_budget_s=params.bench.time_budget_s)
    finally:
        torch.set_num_threads(threads)
    return {"runtime": "pytorch", "version": torch.__version__, "threads": 1, **timing, "status": "ok", "reason": None}


if __name__ == "__main__":  # what dvc.yaml runs: python -m stages.<name>
    sys.exit(stage_main(run))
