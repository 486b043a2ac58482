"""Prefect tasks that run pipeline stages.

- `dvc_stage`: one dvc.yaml stage in the project, through DVC (`flows.dvc_runner`), so dvc.lock records it and
  DVC's cache decides what is up to date; an unchanged stage ends `Cached`. The release flow uses it.
- `run_stage`: the stage function itself in a scratch work directory outside DVC (sweep and search trials,
  which are measured and thrown away, never released).
Both call the very code `edgeopt <stage>` runs. The flows only decide which stages to run and read the states.
"""
from __future__ import annotations

import importlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.futures import PrefectFuture, wait
from prefect.states import Completed, Pending, State

from edgeopt.errors import EXIT_FAILED, EdgeoptError, StageError, is_expected
from edgeopt.params import Params
from edgeopt.paths import Paths
from edgeopt.pipeline import load_pipeline, upstream
from flows import dvc_runner

RETRIES = 2
# OSErrors that name a wrong or missing path: retrying cannot help, the message says what to run or fix
NOT_TRANSIENT = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
NOT_RUN = "NotRun"


class StageFailed(EdgeoptError, RuntimeError):
    """A stage run through DVC failed; the message is the stage's own error line, `exit_code` its exit code."""

    def __init__(self, stage: str, message: str, exit_code: int | None = None):
        super().__init__(message)
        self.stage = stage
        self.exit_code = EXIT_FAILED if exit_code is None else exit_code


class DvcLockBusy(RuntimeError):
    """Another DVC process held the repository lock: worth a retry."""


def is_transient(task: Any, task_run: Any, state: State) -> bool:
    """retry_condition_fn: retry I/O hiccups and a busy DVC lock, never bad params, bad data or a failed gate."""
    exc = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    return isinstance(exc, DvcLockBusy) or (isinstance(exc, OSError) and not isinstance(exc, NOT_TRANSIENT))


def stage_function(stage: str) -> Callable[..., dict[str, Any]]:
    try:
        module = importlib.import_module(f"stages.{stage}")
    except ModuleNotFoundError as exc:
        if exc.name != f"stages.{stage}":
            raise
        raise StageError(f"stages/{stage}.py not found: dvc.yaml lists stage {stage!r} but the code does not "
                         "have it; update the code or dvc.yaml") from None
    return module.run


class _InTaskRun(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return TaskRunContext.get() is not None


def forward_stage_logs() -> None:
    """Show the stages' own `edgeopt.*` log records in the task run's log (once per process)."""
    from prefect.logging.handlers import APILogHandler

    logger = logging.getLogger("edgeopt")
    if not any(isinstance(h, APILogHandler) for h in logger.handlers):
        handler = APILogHandler()
        handler.addFilter(_InTaskRun())
        logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


def headline(metrics: dict[str, Any], limit: int = 8) -> str:
    flat = [(k, v) for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) or v is None]
    return ", ".join(f"{k}={round(v, 4) if isinstance(v, float) else v}" for k, v in flat[:limit]) or "-"


def stage_summary(root: str | Path, stage: str) -> dict[str, Any]:
    """The scalar part of metrics/<stage>.json (what the task shows as its result)."""
    try:
        metrics = json.loads(Paths(Path(root)).metrics(stage).read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))} if isinstance(metrics, dict) else {}


@task(cache_policy=NO_CACHE, retries=RETRIES, retry_delay_seconds=[5, 20], retry_condition_fn=is_transient)
def dvc_stage(stage: str, root: str) -> dict[str, Any] | State:
    """`dvc repro --single-item <stage>` in `root`; Cached when DVC found it up to date (or in its run cache)."""
    logger = get_run_logger()
    t0 = time.perf_counter()
    outcome = dvc_runner.run_stage(root, stage, on_line=lambda line: logger.info("%s", line) if line else None)
    if outcome.status == "failed":
        if outcome.lock_busy:
            raise DvcLockBusy(f"{stage}: {outcome.message}")
        raise StageFailed(stage, outcome.message, outcome.exit_code)
    summary = stage_summary(root, stage)
    if outcome.cached:
        why = "up to date in dvc.lock" if outcome.status == "skipped" else "restored from DVC's run cache"
        logger.info("%s: %s, not run", stage, why)
        return Completed(data=summary, name="Cached", message=why)
    logger.info("%s: done in %.1f s: %s", stage, time.perf_counter() - t0, headline(summary))
    return summary


def run_stages_with_dvc(stages: list[str], root: str | Path,
                        on_done: Callable[[str, State], None] | None = None) -> dict[str, State]:
    """Run `stages` one after another (dvc.yaml order, one CPU-heavy stage at a time: bench must time a quiet
    machine); after a failure the rest are NotRun. `on_done(name, state)` after each stage that ran."""
    states: dict[str, State] = {}
    for name in stages:
        if states and not all(s.is_completed() for s in states.values()):
            states[name] = Pending(name=NOT_RUN, message="an upstream stage failed")
            continue
        states[name] = dvc_stage.with_options(name=name, task_run_name=name)(name, str(root), return_state=True)
        if on_done is not None:
            on_done(name, states[name])
    return states


@task(cache_policy=NO_CACHE, retries=RETRIES, retry_delay_seconds=[2, 4], retry_condition_fn=is_transient,
      log_prints=True)
def run_stage(stage: str, params: Params, root: str) -> dict[str, Any]:
    """Run one stage function in work directory `root` (no DVC); its metrics dict is the task result."""
    logger = get_run_logger()
    forward_stage_logs()
    logger.info("%s: running stages/%s.py in %s", stage, stage, root)
    t0 = time.perf_counter()
    metrics = stage_function(stage)(params, Paths(Path(root)))
    logger.info("%s: done in %.1f s: %s", stage, time.perf_counter() - t0, headline(metrics))
    return metrics


def submit_stages(stages: Iterable[str], params: Params, root: str | Path, label: str | None = None,
                  after: Iterable[PrefectFuture] = ()) -> dict[str, PrefectFuture]:
    """Submit `stages` (in execution order) as `run_stage` tasks; each waits for the ones writing its deps."""
    ups = upstream(load_pipeline(root))
    futures: dict[str, PrefectFuture] = {}
    for name in stages:
        wait_for = [futures[u] for u in sorted(ups[name]) if u in futures] + list(after)
        futures[name] = run_stage.with_options(name=name, task_run_name=f"{name} [{label}]" if label else name).submit(
            name, params, str(root), wait_for=wait_for)
    return futures


def final_states(futures: dict[str, PrefectFuture]) -> dict[str, State]:
    wait(list(futures.values()))
    return {name: f.state for name, f in futures.items()}


def stopped_because(states: dict[str, State]) -> str | None:
    """Why a run stopped, in one message (first failed stage, the error, the stages not run); None if none."""
    failed = [n for n, s in states.items() if s.is_failed() or s.is_crashed() or s.is_cancelled()]
    if not failed:
        return None
    name = failed[0]
    exc = states[name].result(raise_on_failure=False)
    if isinstance(exc, BaseException):
        text = f"{name}: {exc}" if is_expected(exc) else f"{name} failed: {type(exc).__name__}: {exc}"
    else:
        text = f"{name}: {states[name].message or states[name].name}"
    skipped = [n for n, s in states.items() if s.is_pending() or s.is_scheduled()]
    if failed[1:]:
        text += f" | also failed: {', '.join(failed[1:])}"
    if skipped:
        text += f" | not run: {', '.join(skipped)}"
    return text


def completed_result(states: dict[str, State], stage: str) -> dict[str, Any] | None:
    """The metrics a stage returned (also when DVC found it up to date), or None if it did not complete."""
    state = states.get(stage)
    return state.result() if state is not None and state.is_completed() else None
