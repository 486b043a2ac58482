"""The Prefect task that runs one pipeline stage, and helpers that submit stages in dvc.yaml order.

The task calls `stages/<name>.py:run(params, paths)`, the very function `edgeopt <name>` (and so `dvc repro`)
calls, so both orchestrators write the same files. The flows only decide which stages to submit and read the
resulting states.
"""
from __future__ import annotations

import importlib
import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from prefect import get_run_logger, task
from prefect.context import TaskRunContext
from prefect.futures import PrefectFuture, wait
from prefect.states import State
from prefect.tasks import exponential_backoff
from prefect.transactions import get_transaction

from edgeopt.params import Params
from edgeopt.paths import Paths
from edgeopt.stage import StageError
from flows.caching import StageInputsAndOutputs, results_dir, write_stamp
from flows.pipeline import load_pipeline, upstream

RETRIES = 2
# OSErrors that name a wrong or missing path: retrying cannot help, the message says what to run or fix
NOT_TRANSIENT = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
# stage errors whose message already says what happened and what to do: shown as they are
CLEAR_ERRORS = {"GateNonePassError", "StaleInputsError", "ValidationFailed", "DataError", "ParamsError",
                "StageError", "CheckpointError", "RegistryError"}


def is_transient_io_error(task: Any, task_run: Any, state: State) -> bool:
    """retry_condition_fn: retry I/O hiccups only, never bad params, bad data or a missing input."""
    exc = state.data
    return isinstance(exc, OSError) and not isinstance(exc, NOT_TRANSIENT)


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


@task(persist_result=True, cache_policy=StageInputsAndOutputs(), retries=RETRIES,
      retry_delay_seconds=exponential_backoff(backoff_factor=2), retry_jitter_factor=0.5,
      retry_condition_fn=is_transient_io_error, log_prints=True)
def run_stage(stage: str, params: Params, root: str) -> dict[str, Any]:
    """Run one stage in project `root`; its metrics dict is the task result."""
    logger = get_run_logger()
    forward_stage_logs()
    logger.info("%s: running stages/%s.py in %s", stage, stage, root)
    t0 = time.perf_counter()
    metrics = stage_function(stage)(params, Paths(Path(root)))
    txn = get_transaction()
    if txn is not None and txn.key:
        write_stamp(root, stage, txn.key)
    logger.info("%s: done in %.1f s: %s", stage, time.perf_counter() - t0, headline(metrics))
    return metrics


def stage_task(stage: str, root: str | Path, label: str | None = None):
    """`run_stage` named after the stage, persisting results (and cache records) under the project."""
    return run_stage.with_options(name=stage, task_run_name=f"{stage} [{label}]" if label else stage,
                                  result_storage=results_dir(root).resolve())


def submit_stages(stages: Iterable[str], params: Params, root: str | Path, label: str | None = None,
                  after: Iterable[PrefectFuture] = ()) -> dict[str, PrefectFuture]:
    """Submit `stages` (in execution order); each waits for the ones writing its deps and for `after`."""
    ups = upstream(load_pipeline(root))
    futures: dict[str, PrefectFuture] = {}
    for name in stages:
        wait_for = [futures[u] for u in sorted(ups[name]) if u in futures] + list(after)
        futures[name] = stage_task(name, root, label).submit(name, params, str(root), wait_for=wait_for)
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
        text = f"{name}: {exc}" if type(exc).__name__ in CLEAR_ERRORS else f"{name} failed: {type(exc).__name__}: {exc}"
    else:
        text = f"{name}: {states[name].message or states[name].name}"
    skipped = [n for n, s in states.items() if s.is_pending() or s.is_scheduled()]
    if failed[1:]:
        text += f" | also failed: {', '.join(failed[1:])}"
    if skipped:
        text += f" | not run: {', '.join(skipped)}"
    return text


def completed_result(states: dict[str, State], stage: str) -> dict[str, Any] | None:
    """The metrics a stage returned (also when taken from the cache), or None if it did not complete."""
    state = states.get(stage)
    return state.result() if state is not None and state.is_completed() else None
