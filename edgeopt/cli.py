"""`edgeopt`: run any single stage, the gate, the registry, predictions and benchmarks.

Imports are lazy so that `edgeopt bench` and `edgeopt predict` run on a device with only onnxruntime /
openvino installed (no torch).
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path

# Exit codes a CI/CD pipeline can rely on.
EXIT_OK = 0
EXIT_FAILED = 1          # a stage failed (message says why)
EXIT_USAGE = 2           # bad params, bad arguments
EXIT_GATE_NONE_PASS = 3  # gate: no candidate passes
EXIT_GATE_STALE = 4      # gate / promote: inputs missing or stale

PIPELINE = [
    ("prepare", "Read the data source, make stratified seeded train/val/test splits -> data/prepared/"),
    ("validate", "Great Expectations checks on a per-image table; stops the pipeline on failure"),
    ("train", "Train the baseline model (model.*, train.*) -> models/baseline.pt, metrics/train.json"),
    ("prune", "Structured (Torch-Pruning) or unstructured pruning of the baseline -> models/pruned.pt"),
    ("finetune", "Recover accuracy of the pruned model (optionally with KD from the baseline)"),
    ("cluster", "k-means weight sharing per layer (+ cluster-preserving fine-tuning)"),
    ("sensitivity", "Quantize one layer at a time, rank layers by validation accuracy drop"),
    ("distill", "Hinton KD of a smaller student (and the same student without KD)"),
    ("quantize", "INT8/FP16 candidates: NNCF PTQ, accuracy-controlled INT8, ORT static/dynamic, FP16"),
    ("export", "Export every candidate to ONNX + OpenVINO IR with a parity check against PyTorch"),
    ("evaluate", "Test accuracy of each exported candidate in its runtime, size, params, MACs"),
    ("bench", "Latency (p50/p90/p99, throughput) of each candidate; torch-free, runs on the device"),
    ("gate", "Apply gate thresholds; exit 0 only if a candidate passes (3: none passes, 4: stale inputs)"),
    ("promote", "Copy the gate's pick into the edge release registry with a manifest and lineage"),
    ("report", "Markdown/HTML table of candidates, Pareto plots and the model card -> reports/"),
]


def _add_params_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a parameter, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--root", default=".", help="project directory holding data/, models/, metrics/ (default: .)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeopt",
        description="Turn a trained CNN into a small, fast, verified edge release. Each pipeline stage is a "
                    "command; `dvc repro` and the Prefect flow call the same functions.",
        epilog="Exit codes: 0 ok, 1 stage failed, 2 bad params/arguments, 3 gate: no candidate passes, "
               "4 gate/promote: inputs missing or stale.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in PIPELINE:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _add_params_args(p)
        mod = _stage_module_if_cli_args(name)
        if mod is not None:
            mod.add_arguments(p)
    p = sub.add_parser("registry", help="Edge release registry: list, show, promote, pull, verify, rollback",
                       description="Edge release registry: immutable, checksummed releases and channels.")
    from edgeopt import registry_cli

    registry_cli.add_arguments(p)
    p = sub.add_parser("predict", help="Classify image files with a release (manifest + onnxruntime/openvino only)")
    from edgeopt import predict_cli

    predict_cli.add_arguments(p)
    p = sub.add_parser("benchmark", help="Compression and pipeline-cost benchmarks (JSON + Markdown)")
    p.add_argument("benchmark_args", nargs=argparse.REMAINDER, help="arguments for `python -m benchmarks`")
    return parser


def _stage_module_if_cli_args(name: str):
    """Stages with extra CLI arguments declare them in a torch-free module `edgeopt/cli_<name>.py`."""
    try:
        return importlib.import_module(f"edgeopt.cli_{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"edgeopt.cli_{name}":
            raise
        return None


def _run_stage(name: str, args: argparse.Namespace) -> int:
    from edgeopt.paths import Paths

    paths = Paths(Path(args.root))
    cli_mod = _stage_module_if_cli_args(name)
    params = None  # a cli module's needs_params(args) may say no: e.g. `bench --model` on a device
    if cli_mod is None or getattr(cli_mod, "needs_params", lambda _args: True)(args):
        from edgeopt.params import load_params

        params = load_params(args.params, args.overrides)
    if cli_mod is not None and hasattr(cli_mod, "main"):
        return int(cli_mod.main(args, params, paths) or 0)
    module = importlib.import_module(f"stages.{name}")
    metrics = module.run(params, paths)
    summary = {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}
    print(json.dumps({"stage": name, **summary}, indent=None, default=str))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["benchmark"]:  # argparse's REMAINDER refuses leading flags (--quick): forward them as given
        from benchmarks.__main__ import main as bench_main

        return int(bench_main(argv[1:]) or 0)
    parser = build_parser()
    args = parser.parse_args(argv)
    # Our own logs at INFO; third-party libraries (GX, NNCF, ...) only at WARNING unless --verbose.
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("edgeopt").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    from edgeopt.errors import describe, exit_code_for, safe_text

    try:
        if args.command in dict(PIPELINE):
            return _run_stage(args.command, args)
        if args.command == "registry":
            from edgeopt import registry_cli

            return int(registry_cli.main(args) or 0)
        if args.command == "predict":
            from edgeopt import predict_cli

            return int(predict_cli.main(args) or 0)
        if args.command == "benchmark":
            from benchmarks.__main__ import main as bench_main

            return int(bench_main(args.benchmark_args) or 0)
    except KeyboardInterrupt:
        print("edgeopt: interrupted; outputs of the interrupted stage were not written", file=sys.stderr)
        return 130
    except Exception as exc:  # known errors get one clear line, unknown ones a traceback
        code = exit_code_for(exc)
        if code is None:
            raise
        logging.getLogger("edgeopt").debug("error details", exc_info=True)  # the traceback with --verbose
        # escaped: a message may quote file names or record fields (ESC, CR, bidi characters must not act)
        text = "\n".join(safe_text(line) for line in describe(exc).split("\n"))
        print(f"edgeopt {args.command}: error: {text}", file=sys.stderr)
        return code
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
