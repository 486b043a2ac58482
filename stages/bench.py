"""Latency of every exported candidate in its runtime (batch 1, `bench` threads/streams) -> metrics/bench.json.

The timing itself is edgeopt.runtime (torch-free), the same code `edgeopt bench --model/--candidates` runs on
the device. Only the optional PyTorch eager reference needs torch; it is imported lazily and skipped without it.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from edgeopt.arrays import load_meta
from edgeopt.params import Params
from edgeopt.paths import Paths
from edgeopt.runtime import (RUNTIMES, RuntimeModelError, bench_report, targets_from_candidates,
                             time_calls)
from edgeopt.stage import StageError, stage

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
    report = bench_report(targets, profile=params.target.name, threads=b.threads, streams=b.streams,
                          warmup=b.warmup, runs=b.runs, time_budget_s=b.time_budget_s,
                          device=params.target.device, base_dir=paths.exported)
    report["candidates"].update(skipped)
    for name, r in report["candidates"].items():
        if r["status"] == "ok":
            log.info("%-30s %-12s p50 %.3f ms  p90 %.3f ms", name, r["runtime"], r["p50_ms"], r["p90_ms"])
        else:
            log.warning("%-30s %s: %s", name, r["status"], r["reason"])
    if b.pytorch_reference:
        report["pytorch_reference"] = {"baseline": pytorch_reference(params, paths)}
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
