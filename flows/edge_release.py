"""edge_release: the whole pipeline as one Prefect flow whose tasks are the dvc.yaml stages, run through DVC.

    python -m flows.edge_release --set train.epochs=3        # or: prefect deployment run 'edge-release/nightly'

Each task is `dvc repro --single-item <stage>` (flows/dvc_runner.py), in dvc.yaml's order, one at a time, so
dvc.lock is the one record of what ran whichever orchestrator ran it, DVC's cache is the one cache (a stage DVC
finds up to date ends `Cached`), and bench never times a machine busy with another stage. Overrides are
applied to params.yaml for the run, as `dvc exp run -S` applies them, and the file is restored afterwards
(flows/workspace.py). The run ends Completed with a summary, or Failed with the reason as its message: the
gate verdict when no candidate passes, the failed expectations when the data does not validate.
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.states import Failed, State

from edgeopt.cliargs import add_params_args
from edgeopt.errors import ParamsError, PipelineError
from edgeopt.logs import quiet_third_party
from edgeopt.params import project_params
from edgeopt.pipeline import closure, execution_order, load_pipeline
from flows.tasks import completed_result, run_stages_with_dvc, stopped_because
from flows.ui import Progress, publish_release
from flows.workspace import ProjectBusy, project_run


def release_run_name() -> str:
    """Flow-run name saying model, data set and date, e.g. `small_cnn on digits 16px, 2025-11-21 02:00 UTC`."""
    from prefect.runtime import flow_run

    when = (flow_run.scheduled_start_time or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc)
    when = when.strftime("%Y-%m-%d %H:%M UTC")
    p = flow_run.parameters
    try:
        params = project_params(p.get("params_file", "params.yaml"), p.get("overrides"), p.get("root", "."))
    except (ParamsError, OSError):
        return f"edge release, {when}"
    return f"{params.model.arch} on {params.data.source} {params.data.image_size}px, {when}"


@flow(name="edge-release", flow_run_name=release_run_name,
      description="Train, compress, export, evaluate, benchmark, gate and promote an edge release (dvc.yaml stages).")
def edge_release(params_file: str = "params.yaml", overrides: list[str] | None = None, root: str = ".",
                 targets: list[str] | None = None) -> dict[str, Any] | State:
    """Run the pipeline in project `root`.

    Args:
        params_file: params YAML; a relative path is taken inside `root`.
        overrides: `key=value` overrides validated like params.yaml, e.g. ["train.epochs=3"].
        root: project directory holding data/, models/, metrics/, reports/.
        targets: run only these stages and what they need (default: every stage), like `dvc repro <stage>`.
    """
    logger = get_run_logger()
    quiet_third_party()  # NNCF / GX / DVC internals at WARNING in this process; stages log their own lines
    root_path = Path(root).resolve()
    try:
        params = project_params(params_file, overrides, root_path)
        specs = load_pipeline(root_path)
        stages = closure(specs, targets) if targets else execution_order(specs)
        with project_run(root_path, params_file, overrides):
            logger.info("project %s: stages %s", root_path, " -> ".join(stages))
            states = run_stages_with_dvc(stages, root_path, on_done=Progress(root_path, stages).stage_done)
    except (ParamsError, PipelineError, ProjectBusy) as exc:
        logger.error("%s", exc)
        return Failed(message=str(exc))
    reason = stopped_because(states)
    publish_release(params, str(root_path), states, reason)
    if reason:
        logger.error("release stopped: %s", reason)
        return Failed(message=reason)
    gate, promote = completed_result(states, "gate") or {}, completed_result(states, "promote") or {}
    summary = {"stages": {n: s.name for n, s in states.items()}, "selected": gate.get("selected"),
               "release": {k: v for k, v in promote.items() if not isinstance(v, (dict, list))}}
    logger.info("release done: %s", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.edge_release", description=edge_release.description)
    add_params_args(ap)
    ap.add_argument("--target", dest="targets", action="append", default=None, metavar="STAGE")
    args = ap.parse_args(argv)
    state = edge_release(args.params, args.overrides, args.root, args.targets, return_state=True)
    if not state.is_completed():
        print(f"edge-release: {state.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
