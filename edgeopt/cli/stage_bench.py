"""`edgeopt bench` flags. Torch-free and params-free in device mode, so it runs on the edge device:

    edgeopt bench --model model.xml [--model other.onnx] --threads 1 --runs 200 --out device.json
    edgeopt bench --candidates models/exported/candidates.json --out device.json

Without --model/--candidates it is the pipeline stage (params.yaml `bench`/`target`, writes metrics/bench.json).
The JSON is the same in every mode, so a device report can be fed to `edgeopt gate --latency-report`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEVICE_FLAGS = ("threads", "streams", "warmup", "runs", "time_budget", "device", "profile", "out",
                "inference_precision")


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("device mode (no params.yaml needed; torch not needed)")
    g.add_argument("--model", action="append", default=[], metavar="PATH",
                   help="model file to time: .onnx (ONNX Runtime) or .xml (OpenVINO IR); repeatable")
    g.add_argument("--candidates", metavar="PATH", help="time every ok candidate of a candidates.json "
                   "(models/exported/ or a pulled copy); file hashes are verified first")
    g.add_argument("--out", metavar="PATH", help="write the report here (default: print it)")
    g.add_argument("--threads", type=int, help="inference threads (default 1)")
    g.add_argument("--streams", type=int, help="OpenVINO streams (default 1)")
    g.add_argument("--warmup", type=int, help="untimed runs first (default 20)")
    g.add_argument("--runs", type=int, help="timed runs at batch 1 (default 200)")
    g.add_argument("--time-budget", type=float, help="seconds per model instead of a fixed run count")
    g.add_argument("--device", help="OpenVINO device (default CPU)")
    g.add_argument("--profile", help="name of this hardware profile in the report (default: device)")
    g.add_argument("--inference-precision", choices=["f32", "bf16", "f16", "auto"],
                   help="OpenVINO inference precision (default f32, as evaluated; auto = the runtime's choice)")


def needs_params(args: argparse.Namespace) -> bool:
    """Only the pipeline stage reads params.yaml; device mode must work where none exists."""
    return not (args.model or args.candidates)


def main(args: argparse.Namespace, params, paths) -> int:
    if needs_params(args):
        given = [f"--{f.replace('_', '-')}" for f in DEVICE_FLAGS if getattr(args, f, None) is not None]
        if given:
            from edgeopt.errors import ParamsError

            raise ParamsError(f"{', '.join(given)} apply with --model/--candidates; in the pipeline set "
                              "params instead, e.g. --set bench.threads=2 --set bench.runs=500")
        from stages.bench import run

        metrics = run(params, paths)
        print(json.dumps({"stage": "bench", "candidates": len(metrics["candidates"])}))
        return 0
    return device_main(args)


def device_main(args: argparse.Namespace) -> int:
    from edgeopt.io import write_json
    from edgeopt.runtime import bench_report, target_from_file, targets_from_candidates

    targets, skipped = [], {}
    if args.candidates:
        targets, skipped = targets_from_candidates(args.candidates)
    for m in args.model:
        t = target_from_file(m)
        taken = {x.name for x in targets} | set(skipped)  # a skipped row must never hide this one's result
        if t.name in taken:  # e.g. model.onnx and model.xml of one candidate: keep both rows
            t.name = f"{t.name}_{t.runtime}" if f"{t.name}_{t.runtime}" not in taken else str(t.path)
        targets.append(t)
    precision = args.inference_precision or "f32"
    report = bench_report(
        targets, profile=args.profile or "device", threads=_or(args.threads, 1), streams=_or(args.streams, 1),
        warmup=_or(args.warmup, 20), runs=_or(args.runs, 200), time_budget_s=_or(args.time_budget, 0.0),
        device=args.device or "CPU", inference_precision=None if precision == "auto" else precision,
        base_dir=Path(args.candidates).parent if args.candidates else None)
    report["candidates"].update(skipped)
    if args.out:
        write_json(args.out, report)
    for name, r in report["candidates"].items():
        line = (f"{name:32s} {r['runtime']:12s} p50 {r['p50_ms']:.3f} ms  p90 {r['p90_ms']:.3f} ms  "
                f"{r['throughput_fps']:.0f}/s" if r["status"] == "ok" else f"{name:32s} {r['status']}: {r['reason']}")
        print(line, file=sys.stderr)
    if args.out is None:
        print(json.dumps(report, indent=2))
    # failed here, or refused (a record naming a file outside its directory): both are failures for CI;
    # a candidate that failed at export or whose runtime is excluded was never this command's to time
    failed = [n for n, r in report["candidates"].items()
              if r["status"] == "failed" and (n not in skipped or skipped[n].get("refused"))]
    if failed:
        return 1
    if not any(r["status"] == "ok" for r in report["candidates"].values()):
        print("bench: nothing was timed (no candidate to benchmark)", file=sys.stderr)
        return 1
    return 0


def _or(value, default):
    return default if value is None else value
