"""What every stage shares: the run-function wrapper that times it, restricts the params it may read to those
dvc.yaml declares for it, and writes metrics/<stage>.json with the params it ran with.

Reading a param that dvc.yaml does not list for the stage is an error (UndeclaredParam), so DVC (and through it
the Prefect flow) always reruns a stage when something it reads changes: a missing declaration cannot hide.
"""
from __future__ import annotations

import argparse
import functools
import logging
import time
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel

from edgeopt.cliargs import add_params_args
from edgeopt.errors import (EXIT_FAILED, EXIT_INTERRUPTED, StageError, UndeclaredParam, describe, error_line,
                            exit_code_for, first_line)
from edgeopt.io import write_json
from edgeopt.memory import peak_rss_mb
from edgeopt.params import Params
from edgeopt.paths import Paths

log = logging.getLogger("edgeopt")

StageFn = Callable[..., dict[str, Any]]


class ParamsView:
    """Read access to the params keys `declared` (dvc.yaml `params:` of one stage: sections or dotted keys)."""

    def __init__(self, model: BaseModel, declared: tuple[str, ...], stage: str, prefix: str = ""):
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_declared", declared)
        object.__setattr__(self, "_stage", stage)
        object.__setattr__(self, "_prefix", prefix)

    def _allowed(self, key: str) -> str:
        """'all' (the key or a section holding it is declared), 'part' (only keys inside it are), or ''."""
        if any(key == d or key.startswith(d + ".") for d in self._declared):
            return "all"
        return "part" if any(d.startswith(key + ".") for d in self._declared) else ""

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._model, name)  # AttributeError for a key that does not exist at all
        if name in ("dump", "model_dump", "model_dump_json", "section") and not self._prefix:
            raise UndeclaredParam(f"stage {self._stage!r} asks for all params ({name}); read the keys it declares "
                                  "in dvc.yaml instead")
        if name.startswith("_"):
            return value  # pydantic internals
        if callable(value) and not isinstance(value, BaseModel):
            if self._prefix and self._allowed(self._prefix.rstrip(".")) == "all":
                return value  # a method of a wholly declared section
            raise UndeclaredParam(f"stage {self._stage!r} calls {self._prefix}{name}(), which may read params dvc.yaml "
                                  "does not declare for it; read the keys one by one")
        key = f"{self._prefix}{'validate' if name == 'validate_' else name}"
        allowed = self._allowed(key)
        if allowed == "all":
            return value
        if allowed == "part" and isinstance(value, BaseModel):
            return ParamsView(value, self._declared, self._stage, key + ".")
        raise UndeclaredParam(f"stage {self._stage!r} reads param {key!r}, which dvc.yaml does not declare for it: "
                              f"add it to stages.{self._stage}.params (otherwise a change would not rerun it)")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"params are read-only inside stage {self._stage!r}")

    def section(self, name: str) -> dict[str, Any]:
        return getattr(self, "validate_" if name == "validate" else name).model_dump()

    def declared_values(self) -> dict[str, Any]:
        """{declared key: value}: what the stage ran with (the params part of its dvc.lock entry)."""
        out, tree = {}, self._model.model_dump(by_alias=True)
        for key in self._declared:
            node: Any = tree
            for part in key.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            out[key] = node
        return out

    def unrestricted(self) -> Params:
        """All params, for checks that compare recorded lineage with now (promote); never for computing outputs."""
        return self._model  # type: ignore[return-value]


def ran_with(view: ParamsView, paths: Paths) -> dict[str, Any]:
    """What a stage's outputs were made from, for lineage checks: its params, the data set, the code commit."""
    import json

    from edgeopt.gitinfo import git_state

    try:
        data_hash = json.loads(paths.meta.read_text()).get("content_hash")
    except (OSError, ValueError, AttributeError):
        data_hash = None
    git = git_state(paths.root)
    return {"params": view.declared_values(), "data_hash": data_hash,
            "git": {"commit": git.get("commit"), "dirty": git.get("dirty")}}


def recorded_params(paths: Paths, stages: list[str]) -> dict[str, Any]:
    """The params `stages` ran with (their metrics/<stage>.json `ran_with`), merged into one nested mapping: what
    built the artifacts, as dvc.lock records it. Stages without a record are left out."""
    import json

    merged: dict[str, Any] = {}
    for name in stages:
        try:
            ran = json.loads(paths.metrics(name).read_text()).get("ran_with") or {}
        except (OSError, ValueError, AttributeError):
            continue
        for key, value in (ran.get("params") or {}).items():
            node = merged
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
    return merged


def declared_params(stage_name: str, root: Path) -> tuple[str, ...]:
    from edgeopt.pipeline import load_pipeline

    specs = load_pipeline(root)
    if stage_name not in specs:
        raise StageError(f"stage {stage_name!r} is not in {root / 'dvc.yaml'}; every stage must be declared there")
    return specs[stage_name].params


def cost_since(t0: float) -> dict[str, float]:
    return {"wall_s": round(time.perf_counter() - t0, 3), "peak_rss_mb": round(peak_rss_mb(), 1)}


def failure_metrics(exc: Exception, t0: float) -> dict[str, Any]:
    """metrics/<stage>.json of a stage that raised: status failed, the error line and its exit code; an error
    carrying `metrics` (the gate's verdict when none passes) records those instead of status and error."""
    code = exit_code_for(exc)
    record = dict(getattr(exc, "metrics", None) or {}) or {
        "status": "failed", "error": describe(exc) if code is not None else first_line(exc, with_type=True)}
    record["exit_code"] = EXIT_FAILED if code is None else code
    record["cost"] = cost_since(t0)
    return record


def record_failure(path: Path, record: dict[str, Any]) -> None:
    """metrics/<stage>.json of a failed run: the latest run's record, as DVC sees it too (`dvc repro` removes a
    stage's outputs, metrics included, before running it; promote's own entry point does it for its persist one). The stage's other outputs are written atomically, so
    a failed run leaves them as they were; only this record says it failed."""
    try:
        write_json(path, record)
    except OSError:  # disk full, read-only: the original error is the one to report
        log.debug("could not write the failure metrics %s", path, exc_info=True)


def stage(name: str) -> Callable[[StageFn], StageFn]:
    """Wrap `fn(params, paths, **kw) -> metrics`: time it, give it only its declared params, write its metrics
    (with the params it ran with, `ran_with`, which promote compares with the params of the release) atomically.
    A stage that raises gets metrics too (`failure_metrics`: status failed, the error, the exit code), so
    `dvc metrics show` and the flows see why it stopped; they carry no `ran_with`, so nothing downstream takes
    them for a record of built outputs.

    The wrapped function keeps the same signature, so the CLI (dvc.yaml) and the Prefect tasks call the very
    same function and produce the very same files.
    """
    def decorate(fn: StageFn) -> StageFn:
        @functools.wraps(fn)
        def run(params: Params, paths: Paths | None = None, **kwargs: Any) -> dict[str, Any]:
            paths = paths or Paths()
            t0 = time.perf_counter()
            try:
                view = params if isinstance(params, ParamsView) else ParamsView(
                    params, declared_params(name, paths.root), name)
                metrics = fn(view, paths, **kwargs)
            except Exception as exc:
                record_failure(paths.metrics(name), failure_metrics(exc, t0))
                raise
            metrics["cost"] = cost_since(t0)
            metrics["ran_with"] = ran_with(view, paths)
            write_json(paths.metrics(name), metrics)
            return metrics

        run.stage_name = name  # type: ignore[attr-defined]
        return run

    return decorate


def stage_main(fn: StageFn, argv: list[str] | None = None, *, clear_metrics: bool = False) -> int:
    """`python -m stages.<name> [--params F] [--set k=v] [--root D] [-v]`: what dvc.yaml runs for a stage.

    clear_metrics: remove metrics/<stage>.json first, as `dvc repro` does for an output that is not `persist`
    (promote's is, see dvc.yaml): a run killed before writing must not leave the last run's record looking current.

    Exit codes as the CLI's: known errors print one line `edgeopt <stage>: error: ...` (the Prefect flow shows
    that line as the reason) and exit with their code; unknown ones keep their traceback."""
    import json
    import sys

    from edgeopt.params import load_params

    name = getattr(fn, "stage_name", fn.__name__)
    parser = argparse.ArgumentParser(prog=f"python -m stages.{name}", description=(fn.__doc__ or "").strip())
    add_params_args(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    if clear_metrics:
        Paths(Path(args.root)).metrics(name).unlink(missing_ok=True)
    from edgeopt.logs import setup_logging

    setup_logging(args.verbose)
    try:
        metrics = fn(load_params(args.params, args.overrides), Paths(Path(args.root)))
    except KeyboardInterrupt:
        print(f"edgeopt {name}: interrupted; outputs of the interrupted stage were not written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # known errors get one clear line, unknown ones a traceback
        code = exit_code_for(exc)
        if code is None:
            raise
        print(error_line(name, exc, one_line=True), file=sys.stderr)  # the line the Prefect tasks show
        return code
    summary = {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}
    print(json.dumps({"stage": name, **summary}, default=str))
    return 0
