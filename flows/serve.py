"""Serve the deployments from this process: the nightly edge release and an on-demand sweep.

    prefect server start --host 127.0.0.1 &                 # UI on http://127.0.0.1:4200
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python -m flows.serve --root .                           # keeps running; Ctrl-C / SIGTERM stop it cleanly
    prefect deployment run 'edge-release/nightly' -p overrides='["train.epochs=3"]'

The schedule lives in prefect.yaml (one place: the work-pool deployments read it there, this module reads it
from there too); `--cron` / `--interval` override it. Runs of one project take turns (concurrency limit 1):
they share its files.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import signal
from pathlib import Path
from typing import Any

import yaml
from prefect.deployments.runner import EntrypointType
from prefect.schedules import Cron, Interval

from edgeopt.cliargs import add_params_args
from flows.edge_release import edge_release
from flows.sweep import sweep

PREFECT_YAML = Path(__file__).resolve().parents[1] / "prefect.yaml"


def nightly_schedule() -> dict[str, Any]:
    """The nightly deployment's schedule as prefect.yaml declares it (cron and timezone)."""
    doc = yaml.safe_load(PREFECT_YAML.read_text())
    nightly = next(d for d in doc["deployments"] if d["name"] == "nightly")
    return nightly["schedules"][0]


def deployments(root: str = ".", params_file: str = "params.yaml", cron: str | None = None,
                timezone: str | None = None, overrides: list[str] | None = None, interval: float = 0,
                targets: list[str] | None = None) -> list:
    # runs start in a subprocess: pin the project dir, and name the flows by module, not by file path
    root = str(Path(root).resolve())
    declared = nightly_schedule()
    cron = declared["cron"] if cron is None else cron
    timezone = timezone or declared.get("timezone", "UTC")
    common = {"params_file": params_file, "overrides": list(overrides or []), "root": root}
    schedule = (Interval(dt.timedelta(seconds=interval)) if interval else Cron(cron, timezone=timezone) if cron
                else None)
    nightly = edge_release.to_deployment(
        name="nightly", parameters={**common, "targets": targets}, entrypoint_type=EntrypointType.MODULE_PATH,
        tags=["edgeopt", "release"], schedule=schedule, concurrency_limit=1,
        description=f"Nightly edge release of {root}: train, compress, export, evaluate, bench, gate, promote.")
    grid = sweep.to_deployment(name="on-demand", parameters=common, tags=["edgeopt", "sweep"],
                               entrypoint_type=EntrypointType.MODULE_PATH, concurrency_limit=1,
                               description="Compression sweep on a local Dask cluster (or `address`).")
    return [nightly, grid]


async def serve_until_stopped(deps: list, limit: int) -> None:
    """Prefect's runner, stopped cleanly on SIGINT / SIGTERM (schedules paused, no half-awaited shutdown)."""
    from prefect.runner import Runner

    runner = Runner(limit=limit, pause_on_shutdown=True)
    for d in deps:
        await runner.add_deployment(d)
    serving = asyncio.create_task(runner.start())
    while not runner.started and not serving.done():  # start() installs its own SIGTERM handler: replace it after
        await asyncio.sleep(0.1)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({serving, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if not serving.done():
        await runner.astop()
        await serving
    stopper.cancel()
    print("flows.serve: stopped; the deployments' schedules are paused until served again")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.splitlines()[0])
    add_params_args(ap)
    ap.add_argument("--cron", default=None, help="schedule of the release (default: prefect.yaml's; '' = none)")
    ap.add_argument("--interval", type=float, default=0, help="seconds between scheduled runs instead of a cron")
    ap.add_argument("--timezone", default=None)
    ap.add_argument("--target", dest="targets", action="append", default=None, metavar="STAGE",
                    help="scheduled runs run only these stages and what they need (default: all)")
    ap.add_argument("--limit", type=int, default=1, help="flow runs at a time (default 1: runs share the project)")
    args = ap.parse_args(argv)
    deps = deployments(args.root, args.params, args.cron, args.timezone, args.overrides, args.interval, args.targets)
    asyncio.run(serve_until_stopped(deps, args.limit))


if __name__ == "__main__":
    main()
