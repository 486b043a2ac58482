"""Serve the deployments from this process: the nightly edge release and an on-demand sweep.

    prefect server start --host 127.0.0.1 &                 # UI on http://127.0.0.1:4200
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python -m flows.serve --root .                           # keeps running; Ctrl-C pauses the schedule
    prefect deployment run 'edge-release/nightly' -p overrides='["train.epochs=3"]'

The same two deployments are declared in prefect.yaml for `prefect deploy` with a process work pool.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from prefect import serve
from prefect.deployments.runner import EntrypointType
from prefect.schedules import Cron

from flows.edge_release import edge_release
from flows.sweep import sweep

NIGHTLY_CRON = "0 2 * * *"  # 02:00 every night


def deployments(root: str = ".", params_file: str = "params.yaml", cron: str = NIGHTLY_CRON,
                timezone: str = "UTC", overrides: list[str] | None = None) -> list:
    # runs start in a subprocess: pin the project dir, and name the flows by module, not by file path
    root = str(Path(root).resolve())
    common = {"params_file": params_file, "overrides": list(overrides or []), "root": root}
    nightly = edge_release.to_deployment(
        name="nightly", parameters=common, entrypoint_type=EntrypointType.MODULE_PATH, tags=["edgeopt", "release"],
        schedule=Cron(cron, timezone=timezone) if cron else None,
        description=f"Nightly edge release of {root}: train, compress, export, evaluate, bench, gate, promote.")
    grid = sweep.to_deployment(name="on-demand", parameters=common, tags=["edgeopt", "sweep"],
                               entrypoint_type=EntrypointType.MODULE_PATH,
                               description="Compression sweep on a local Dask cluster (or `address`).")
    return [nightly, grid]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=".", help="project directory (default: .)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--cron", default=NIGHTLY_CRON, help=f"schedule of the release (default {NIGHTLY_CRON!r}; '' = none)")
    ap.add_argument("--timezone", default="UTC")
    ap.add_argument("--limit", type=int, default=1, help="flow runs at a time (default 1: runs share the project)")
    args = ap.parse_args(argv)
    serve(*deployments(args.root, args.params, args.cron, args.timezone, args.overrides), limit=args.limit)


if __name__ == "__main__":
    main()
