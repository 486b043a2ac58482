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

from edgeopt.cliargs import add_params_args

# Exit codes a CI/CD pipeline can rely on.
EXIT_OK = 0
EXIT_FAILED = 1          # a stage failed (message says why)
EXIT_USAGE = 2           # bad params, bad arguments
EXIT_GATE_NONE_PASS = 3  # gate: no candidate passes
EXIT_GATE_STALE = 4      # gate / promote: inputs missing or stale

def pipeline_stages() -> list[tuple[str, str]]:
    """(name, description) of every dvc.yaml stage in execution order: the CLI has no stage list of its own."""
    try:
        from edgeopt.pipeline import PipelineError, execution_order, load_pipeline

        specs = load_pipeline(Path("."))
    except (ImportError, OSError, ValueError):  # PipelineError is a ValueError
        return []  # a device without a project: predict, bench --model, registry still work
    return [(name, specs[name].desc) for name in execution_order(specs)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeopt",
        description="Turn a trained CNN into a small, fast, verified edge release. Each pipeline stage is a "
                    "command; `dvc repro` and the Prefect flow call the same functions.",
        epilog="Exit codes: 0 ok, 1 stage failed, 2 bad params/arguments, 3 gate: no candidate passes, "
               "4 gate/promote: inputs missing or stale.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in pipeline_stages():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_params_args(p)
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
    p = sub.add_parser("evaluate-release", help="Accuracy, per-class table, confusion matrix and drift check of a "
                                                "release on a labelled folder (torch-free)",
                       description="Evaluate a release on DATA_DIR/<class>/<image> in its runtime; exit 3 when "
                                   "accuracy falls below the manifest's by more than --max-drop points.")
    from edgeopt import release_eval_cli

    release_eval_cli.add_arguments(p)
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
    # Our own logs at INFO; third-party libraries (GX, NNCF's own handler, warnings) only at WARNING unless -v.
    from edgeopt.logs import setup_logging

    setup_logging(args.verbose)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    from edgeopt.errors import describe, exit_code_for, safe_text

    try:
        if args.command in dict(pipeline_stages()):
            return _run_stage(args.command, args)
        if args.command == "registry":
            from edgeopt import registry_cli

            return int(registry_cli.main(args) or 0)
        if args.command == "predict":
            from edgeopt import predict_cli

            return int(predict_cli.main(args) or 0)
        if args.command == "evaluate-release":
            from edgeopt import release_eval_cli

            return int(release_eval_cli.main(args) or 0)
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
