"""The pipeline definition, read from dvc.yaml: the one list of stages, their deps, params and outs.

Every driver derives from it: `dvc repro` reads dvc.yaml itself; the CLI's stage commands, the Prefect flows and
the benchmark runner take stage names and order from here. DVC's `${key}` templating from params.yaml (its
default `vars`) is resolved the way DVC resolves it, so a dep such as `${data.root}` names the same path here.
"""
from __future__ import annotations

import functools
import graphlib
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from edgeopt.errors import PipelineError

REPO = Path(__file__).resolve().parents[1]
_TEMPLATE = re.compile(r"\$\{\s*([A-Za-z0-9_.\-]+)\s*\}")


@dataclass(frozen=True)
class StageSpec:
    name: str
    cmd: str
    deps: tuple[str, ...]
    params: tuple[str, ...]
    outs: tuple[str, ...]  # outs, metrics and plots: every file the stage writes
    desc: str = ""


def dvc_file(root: str | Path) -> Path:
    """The project's own dvc.yaml when it has one, else the one shipped with the code."""
    own = Path(root) / "dvc.yaml"
    return own if own.is_file() else REPO / "dvc.yaml"


def _names(entries: Any, where: str) -> tuple[str, ...]:
    """Paths of a dvc.yaml list whose items are `path` or `{path: {options}}`."""
    out = []
    for item in entries or []:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict) and len(item) == 1:
            out.append(next(iter(item)))
        else:
            raise PipelineError(f"{where}: expected a path or {{path: options}}, got {item!r}")
    return tuple(out)


def _defaults() -> dict[str, Any]:
    """params.yaml keys a file may leave out take their validated defaults (as the stages see them)."""
    try:
        from edgeopt.params import Params
    except ImportError:  # a device install without pydantic: only the file's own values
        return {}
    return Params().model_dump(by_alias=True)


def _merged(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: _merged(base.get(k), v) for k, v in over.items()}}
    return over


def _lookup(tree: Any, key: str, where: str) -> Any:
    node = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise PipelineError(f"{where}: ${{{key}}} is not a key of params.yaml")
        node = node[part]
    return node


def _render(value: str, variables: dict[str, Any], where: str) -> str:
    return _TEMPLATE.sub(lambda m: str(_lookup(variables, m.group(1), where)), value)


@functools.lru_cache(maxsize=16)
def _load(path: Path, mtime_ns: int, params_path: Path | None, params_mtime_ns: int) -> dict[str, StageSpec]:
    try:
        doc = yaml.safe_load(path.read_text()) or {}
        variables = _merged(_defaults(), (yaml.safe_load(params_path.read_text()) or {}) if params_path else {})
    except yaml.YAMLError as exc:
        raise PipelineError(f"{path}: not valid YAML ({str(exc).splitlines()[0]}); fix it or restore it from git") \
            from None
    stages = doc.get("stages") if isinstance(doc, dict) else None
    if not isinstance(stages, dict) or not stages:
        raise PipelineError(f"{path}: no 'stages' mapping; the pipeline needs its stage list")
    specs = {}
    for name, body in stages.items():
        where = f"{path}: stages.{name}"
        if not isinstance(body, dict):
            raise PipelineError(f"{where}: expected a mapping with cmd, deps, params, outs")
        params = body.get("params") or []
        if not all(isinstance(p, str) for p in params):
            raise PipelineError(f"{where}.params: only keys of params.yaml are supported, got {params!r}")

        def paths(key: str) -> tuple[str, ...]:
            return tuple(_render(p, variables, f"{where}.{key}") for p in _names(body.get(key), f"{where}.{key}"))

        specs[name] = StageSpec(name, str(body.get("cmd", "")), paths("deps"), tuple(params),
                                paths("outs") + paths("metrics") + paths("plots"), str(body.get("desc", "")))
    return specs


def load_pipeline(root: str | Path = ".") -> dict[str, StageSpec]:
    """Stage specs of the project's dvc.yaml, in file order, templates resolved from its params.yaml."""
    path = dvc_file(root)
    params = Path(root) / "params.yaml"
    params = params if params.is_file() else None
    return _load(path, path.stat().st_mtime_ns, params, params.stat().st_mtime_ns if params else 0)


def _overlaps(a: str, b: str) -> bool:
    pa, pb = PurePosixPath(a), PurePosixPath(b)
    return pa == pb or pb in pa.parents or pa in pb.parents


def upstream(specs: dict[str, StageSpec]) -> dict[str, set[str]]:
    """For each stage, the stages writing one of its deps (a file, the folder holding it or a file inside it)."""
    return {b.name: {a.name for a in specs.values() if a.name != b.name
                     and any(_overlaps(d, o) for d in b.deps for o in a.outs)} for b in specs.values()}


def execution_order(specs: dict[str, StageSpec]) -> list[str]:
    """Topological order; among stages that could run at the same point, dvc.yaml's order."""
    ups, position = upstream(specs), {name: i for i, name in enumerate(specs)}
    sorter = graphlib.TopologicalSorter(ups)
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        raise PipelineError(f"dvc.yaml: the stages form a cycle {exc.args[1]}; a stage cannot depend on its "
                            "own outputs") from None
    order: list[str] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=position.get)
        order += ready
        sorter.done(*ready)
    return order


def closure(specs: dict[str, StageSpec], targets: list[str], downstream_of: list[str] | None = None) -> list[str]:
    """`targets` and everything they need, in execution order; with `downstream_of`, only stages after those."""
    unknown = sorted((set(targets) | set(downstream_of or [])) - specs.keys())
    if unknown:
        raise PipelineError(f"unknown stage(s) {unknown}; dvc.yaml has {', '.join(specs)}")
    ups = upstream(specs)
    needed, todo = set(), list(targets)
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo.extend(ups[name])
    if downstream_of:
        needed -= set().union(*(set(closure(specs, [d])) for d in downstream_of))
    return [s for s in execution_order(specs) if s in needed]


def stage_names(root: str | Path = ".") -> list[str]:
    return execution_order(load_pipeline(root))
