"""What every stage shares: the run-function wrapper that times it and writes metrics/<stage>.json."""
from __future__ import annotations

import functools
import logging
import resource
import time
from pathlib import Path
from typing import Any, Callable

from edgeopt.io import write_json
from edgeopt.params import Params
from edgeopt.paths import Paths

log = logging.getLogger("edgeopt")

StageFn = Callable[..., dict[str, Any]]


class StageError(RuntimeError):
    """A stage could not do its job; the message says why and what to do. Exit code 1."""


def peak_rss_mb() -> float:
    """Peak resident memory of this process. On Linux VmHWM: ru_maxrss carries the parent's high-water mark across
    fork + exec, so a stage started by a big process (`dvc repro`, a test runner with torch loaded) reported the
    parent's size instead of its own."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def stage(name: str) -> Callable[[StageFn], StageFn]:
    """Wrap `fn(params, paths, **kw) -> metrics`: time it and write its metrics atomically.

    The wrapped function keeps the same signature, so the CLI (dvc.yaml) and the Prefect tasks call the very
    same function and produce the very same files.
    """
    def decorate(fn: StageFn) -> StageFn:
        @functools.wraps(fn)
        def run(params: Params, paths: Paths | None = None, **kwargs: Any) -> dict[str, Any]:
            paths = paths or Paths()
            t0 = time.perf_counter()
            metrics = fn(params, paths, **kwargs)
            metrics["cost"] = {"wall_s": round(time.perf_counter() - t0, 3), "peak_rss_mb": round(peak_rss_mb(), 1)}
            write_json(paths.metrics(name), metrics)
            return metrics

        run.stage_name = name  # type: ignore[attr-defined]
        return run

    return decorate
