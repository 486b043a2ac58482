"""What sweeps and searches share: the shared stages run once in the project through DVC, then many variants of
the remaining stages run in scratch work dirs `sweeps/<name>/<variant>/` on a Dask cluster.

A work dir links a snapshot (hard links) of the project's prepared data, baseline and dvc.yaml; its stages are the stage
functions (`flows.tasks.run_stage`), outside DVC: variants are measured and thrown away, never released.
"""
from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path
from typing import Any

from prefect import task
from prefect_dask import DaskTaskRunner

from edgeopt.errors import ParamsError, PipelineError, StageError
from edgeopt.io import atomic_dir
from edgeopt.params import Params, project_params
from edgeopt.pipeline import closure, load_pipeline
from flows.tasks import run_stages_with_dvc, stopped_because
from flows.workspace import ProjectBusy, project_run

SHARED = ["prepare", "validate", "train"]
SHARED_FILES = ["data/prepared", "models/baseline.pt", "dvc.yaml"]
# what stops a sweep or search before its variants run: bad params, a broken dvc.yaml, a busy project
SETUP_ERRORS = (ParamsError, StageError, PipelineError, ProjectBusy)


class SharedStagesFailed(StageError):
    """prepare, validate or train failed in the project: no variant can run."""


def dask_runner(address: str | None, n_workers: int) -> DaskTaskRunner:
    """The given scheduler, else a LocalCluster of `n_workers` processes x 1 thread on loopback (each stage sets
    its own torch threads; two stages sharing a process would compete for them)."""
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": n_workers, "threads_per_worker": 1, "processes": True,
                                          "host": "127.0.0.1", "dashboard_address": None})


def variant_stages(root: str | Path, last: list[str]) -> list[str]:
    """The stages a variant runs: `last` and what they need, after the shared ones, in dvc.yaml order."""
    return closure(load_pipeline(root), last, downstream_of=SHARED)


def validate_variants(params_file: str, overrides: list[str], variants: dict[str, list[str]],
                      root: str | Path) -> Params:
    """The project's params with `overrides`; each variant's overrides on top must validate too (before anything
    runs), else ParamsError naming the variant."""
    params = project_params(params_file, overrides, root)
    for label, extra in variants.items():
        try:
            project_params(params_file, overrides + extra, root)
        except ParamsError as exc:
            raise ParamsError(f"{label}: {exc}") from None
    return params


def run_shared_stages(root: Path, params_file: str, overrides: list[str], snapshot: Path) -> Path:
    """prepare, validate, train in the project through DVC, as a release runs them (dvc.lock records them, DVC's
    cache skips them when up to date), then, still under the project lock, their outputs linked into `snapshot`
    (returned): the variants read that, so a release rerunning prepare or train in the project meanwhile changes
    nothing under a sweep or search that runs for hours. SharedStagesFailed with the first failure's message."""
    shared = closure(load_pipeline(root), SHARED)
    with project_run(root, params_file, overrides):
        reason = stopped_because(run_stages_with_dvc(shared, root))
        if reason:
            raise SharedStagesFailed(f"shared stages: {reason}")
        with atomic_dir(snapshot) as tmp:
            for rel in SHARED_FILES:
                _link_tree(root / rel, tmp / rel)
    return snapshot


def _link_tree(src: Path, dst: Path) -> None:
    """Hard links of the files under src (a copy across file systems): DVC replaces an output's files, it never
    rewrites them in place, so a link keeps the content it had."""
    if not src.exists():
        return
    files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
    for f in files:
        target = dst if f == src else dst / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(f, target)
        except OSError:
            shutil.copy2(f, target)


@task(name="link-shared-inputs")
def link_shared_inputs(root: str, workdir: str) -> str:
    """A work dir whose data/prepared, models/baseline.pt and dvc.yaml are links to those under `root` (the
    shared-stage snapshot; nothing copied)."""
    for rel in SHARED_FILES:
        src, dst = Path(root) / rel, Path(workdir) / rel
        if not src.exists():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.is_symlink() and dst.resolve() == src.resolve():
            continue
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        os.symlink(src.resolve(), dst)
    return workdir


def lost_on_cluster(futures: dict[str, Any]) -> str | None:
    """Why a variant stopped when Dask itself gave up on a task: a worker lost mid-task is replaced by
    rescheduling the task elsewhere, but a task that took down `distributed.scheduler.allowed-failures` workers
    (default 3, e.g. each ran out of memory) ends in KilledWorker. Prefect then still shows the dead worker's last
    state (Running), so without this the variant would fail without a reason."""
    for stage, future in futures.items():
        dask_future = getattr(future, "wrapped_future", None)
        if getattr(dask_future, "status", None) == "error":
            exc = dask_future.exception()  # args[0]: KilledWorker's task key (its str() needs scheduler objects)
            return f"{stage}: lost on the Dask cluster ({type(exc).__name__}: {exc.args[0] if exc.args else ''})"
    return None


def run_title(what: str, params_file: str, overrides: list[str] | None, root: str) -> str:
    """A flow-run name: `<what>: <model> on <data> <size>px, <UTC time>` (without the model when params fail)."""
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    try:
        params = project_params(params_file, overrides, root)
    except (ParamsError, OSError):
        return f"{what}, {when}"
    return f"{what}: {params.model.arch} on {params.data.source} {params.data.image_size}px, {when}"
