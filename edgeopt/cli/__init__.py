"""`edgeopt`: run any single stage, the gate, the registry, predictions and benchmarks. The application layer on
top of the library (docs/ARCHITECTURE.md): the only part of the `edgeopt` package that imports the project's
`stages` and `benchmarks`, which run from the project checkout (the wheel ships the `edgeopt` package only).

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
from edgeopt.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, error_line, exit_code_for

# Stage commands with a device mode, offered even where no project (dvc.yaml) is at hand
DEVICE_STAGES = {"bench": "Latency of model files on this device (--model / --candidates; no project needed)"}
# Commands other than the stages: (name, module in edgeopt.cli, help, description)
COMMANDS = (
    ("registry", "registry", "Edge release registry: list, show, promote, pull, verify, rollback",
     "Edge release registry: immutable, checksummed releases and channels."),
    ("predict", "predict", "Classify image files with a release (manifest + onnxruntime/openvino only)", None),
    ("evaluate-release", "release_eval", "Accuracy, per-class table, confusion matrix and drift check of a release "
                                         "on a labelled folder (torch-free)",
     "Evaluate a release on DATA_DIR/<class>/<image> in its runtime; exit 3 when accuracy falls below the "
     "manifest's by more than --max-drop points, 4 when the manifest records no accuracy to compare with "
     "(--report-only: no check, exit 0)."),
)


def pipeline_stages() -> list[tuple[str, str]]:
    """(name, description) of every dvc.yaml stage in execution order: the CLI has no stage list of its own."""
    try:
        from edgeopt.pipeline import execution_order, load_pipeline

        specs = load_pipeline(Path("."))
    except (ImportError, OSError, ValueError):  # PipelineError is a ValueError
        return []  # a device without a project: predict, bench --model, registry still work
    return [(name, specs[name].desc) for name in execution_order(specs)]


def stage_commands() -> list[tuple[str, str]]:
    """The pipeline stages, and the device-mode stage commands even where no project (dvc.yaml) is at hand."""
    stages = pipeline_stages()
    known = {name for name, _ in stages}
    return stages + [(name, text) for name, text in DEVICE_STAGES.items() if name not in known]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeopt",
        description="Turn a trained CNN into a small, fast, verified edge release. Each pipeline stage is a "
                    "command; `dvc repro` and the Prefect flow call the same functions.",
        epilog="Exit codes: 0 ok, 1 stage failed, 2 bad params/arguments, 3 gate: no candidate passes, "
               "4 gate/promote: inputs missing or stale.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in stage_commands():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_params_args(p)
        mod = _stage_flags(name)
        if mod is not None:
            mod.add_arguments(p)
    for name, module, help_text, description in COMMANDS:
        p = sub.add_parser(name, help=help_text, description=description)
        importlib.import_module(f"edgeopt.cli.{module}").add_arguments(p)
    p = sub.add_parser("benchmark", help="Compression and pipeline-cost benchmarks (JSON + Markdown)")
    p.add_argument("benchmark_args", nargs=argparse.REMAINDER, help="arguments for `python -m benchmarks`")
    return parser


def _stage_flags(name: str):
    """Stages with extra CLI arguments declare them in a torch-free module `edgeopt/cli/stage_<name>.py`."""
    try:
        return importlib.import_module(f"edgeopt.cli.stage_{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"edgeopt.cli.stage_{name}":
            raise
        return None


def use_project_code(root: str | Path) -> None:
    """Put the project checkout first on sys.path when it holds the stages (`stages/`, `benchmarks/`): they are
    not installed with the `edgeopt` package, and the project's own code is what dvc.yaml runs."""
    project = Path(root).resolve()
    if (project / "stages" / "__init__.py").is_file() and str(project) not in sys.path:
        sys.path.insert(0, str(project))


def _run_stage(name: str, args: argparse.Namespace) -> int:
    from edgeopt.paths import Paths

    use_project_code(args.root)
    paths = Paths(Path(args.root))
    flags = _stage_flags(name)
    params = None  # a flags module's needs_params(args) may say no: e.g. `bench --model` on a device
    if flags is None or getattr(flags, "needs_params", lambda _args: True)(args):
        from edgeopt.params import load_params

        params = load_params(args.params, args.overrides)
    if flags is not None and hasattr(flags, "main"):
        return int(flags.main(args, params, paths) or 0)
    metrics = importlib.import_module(f"stages.{name}").run(params, paths)
    summary = {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}
    print(json.dumps({"stage": name, **summary}, indent=None, default=str))
    return EXIT_OK


def _benchmark(argv: list[str]) -> int:
    use_project_code(".")
    from benchmarks.__main__ import main as bench_main

    return int(bench_main(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["benchmark"]:  # argparse's REMAINDER refuses leading flags (--quick): forward them as given
        return _benchmark(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    # Our own logs at INFO; third-party libraries (GX, NNCF's own handler, warnings) only at WARNING unless -v.
    from edgeopt.logs import setup_logging

    setup_logging(args.verbose)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    modules = {name: module for name, module, _, _ in COMMANDS}
    try:
        if args.command in modules:
            return int(importlib.import_module(f"edgeopt.cli.{modules[args.command]}").main(args) or 0)
        if args.command == "benchmark":
            return _benchmark(args.benchmark_args)
        return _run_stage(args.command, args)
    except KeyboardInterrupt:
        print("edgeopt: interrupted; outputs of the interrupted stage were not written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # known errors get one clear line, unknown ones a traceback
        code = exit_code_for(exc)
        if code is None:
            raise
        logging.getLogger("edgeopt").debug("error details", exc_info=True)  # the traceback with --verbose
        # escaped: a message may quote file names or record fields (ESC, CR, bidi characters must not act)
        print(error_line(args.command, exc), file=sys.stderr)
        return code
