"""`edgeopt gate` flags. Torch-free.

    edgeopt gate                                   # latency from metrics/bench.json
    edgeopt gate --latency-report device.json      # latency measured on the device (`edgeopt bench --out`)

Exit codes: 0 a candidate passes, 3 none passes (GateNonePassError), 4 inputs missing or stale
(StaleInputsError). reports/gate.json and metrics/gate.json are written in all three cases.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--latency-report", metavar="FILE",
                   help="latency measured on the target device (JSON of `edgeopt bench --out`, the format of "
                        "metrics/bench.json); replaces the latency numbers of metrics/bench.json")


def main(args: argparse.Namespace, params, paths) -> int:
    from stages.gate import run

    report = Path(args.latency_report).resolve() if args.latency_report else None
    metrics = run(params, paths, latency_report=report)
    print(json.dumps({"stage": "gate", "status": metrics["status"], "selected": metrics["selected"],
                      "passed": metrics["passed"], "candidates": metrics["candidates"]}))
    return 0
