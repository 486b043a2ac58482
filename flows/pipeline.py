"""The stage graph and each stage's inputs and outputs, read from dvc.yaml.

dvc.yaml is the one source of truth: the Prefect flows take their task order from it (a stage waits for every
stage that writes one of its deps) and their cache keys from it (hashes of the deps, the params sections and the
code version), so the two orchestrators cannot drift apart.
"""
from __future__ import annotations

import functools
import graphlib
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from edgeopt.io import sha256_json, sha256_tree
from edgeopt.params import Params, load_params
from edgeopt.stage import StageError

REPO = Path(__file__).resolve().parents[1]
# deps under these folders are code: they are hashed from the installed source tree, not the project root
CODE_DIRS = ("stages", "edgeopt", "flows", "benchmarks")


@dataclass(frozen=True)
class StageSpec:
    name: str
    deps: tuple[str, ...]
    params: tuple[str, ...]
    outs: tuple[str, ...]  # outs, metrics and plots: every file the stage writes


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
            raise StageError(f"{where}: expected a path or {{path: options}}, got {item!r}")
    return tuple(out)


@functools.lru_cache(maxsize=8)
def _load(path: Path, mtime_ns: int) -> dict[str, StageSpec]:
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise StageError(f"{path}: not valid YAML ({exc}); fix it or restore it from git") from None
    stages = doc.get("stages")
    if not isinstance(stages, dict) or not stages:
        raise StageError(f"{path}: no 'stages' mapping; the flows need the pipeline definition")
    specs = {}
    for name, body in stages.items():
        where = f"{path}: stages.{name}"
        params = body.get("params") or []
        if not all(isinstance(p, str) for p in params):
            raise StageError(f"{where}.params: only keys of params.yaml are supported, got {params!r}")
        specs[name] = StageSpec(name, _names(body.get("deps"), f"{where}.deps"), tuple(params),
                                _names(body.get("outs"), f"{where}.outs") + _names(body.get("metrics"), f"{where}.metrics")
                                + _names(body.get("plots"), f"{where}.plots"))
    return specs


def load_pipeline(root: str | Path) -> dict[str, StageSpec]:
    """Stage specs in dvc.yaml order."""
    path = dvc_file(root)
    return _load(path, path.stat().st_mtime_ns)


def _overlaps(a: str, b: str) -> bool:
    pa, pb = PurePosixPath(a), PurePosixPath(b)
    return pa == pb or pb in pa.parents or pa in pb.parents


def upstream(specs: dict[str, StageSpec]) -> dict[str, set[str]]:
    """For each stage, the stages writing one of its deps (a file, the folder holding it or a file inside it)."""
    return {b.name: {a.name for a in specs.values() if a.name != b.name
                     and any(_overlaps(d, o) for d in b.deps for o in a.outs)} for b in specs.values()}


def execution_order(specs: dict[str, StageSpec]) -> list[str]:
    try:
        return list(graphlib.TopologicalSorter(upstream(specs)).static_order())
    except graphlib.CycleError as exc:
        raise StageError(f"dvc.yaml: the stages form a cycle {exc.args[1]}; a stage cannot depend on its own outputs") from None


def closure(specs: dict[str, StageSpec], targets: list[str], downstream_of: list[str] | None = None) -> list[str]:
    """`targets` and everything they need, in execution order; with `downstream_of`, only stages after those."""
    unknown = sorted((set(targets) | set(downstream_of or [])) - specs.keys())
    if unknown:
        raise StageError(f"unknown stage(s) {unknown}; dvc.yaml has {', '.join(specs)}")
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


def project_params(params_file: str | Path, overrides: list[str] | None, root: str | Path) -> Params:
    """params.yaml (a relative path is taken inside `root`) with `key=value` overrides, validated."""
    path = Path(params_file)
    return load_params(path if path.is_absolute() else Path(root) / path, list(overrides or []))


def resolve(path: str, root: str | Path) -> Path:
    return (REPO if PurePosixPath(path).parts[0] in CODE_DIRS else Path(root)) / path


def file_state(path: Path) -> str | None:
    """Content hash of a file or folder, None when absent."""
    return sha256_tree(path) if path.exists() else None


def param_value(params: Params, key: str) -> Any:
    node: Any = params.dump()
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise StageError(f"dvc.yaml names param {key!r}, which params.yaml does not have; fix dvc.yaml")
        node = node[part]
    return node


def code_version() -> str:
    return importlib.metadata.version("edgeopt")


def input_fingerprint(spec: StageSpec, params: Params, root: str | Path) -> str:
    """What decides whether a stage must run again: its deps' contents, its params and the code version."""
    return sha256_json({"stage": spec.name, "code": code_version(),
                        "deps": {d: file_state(resolve(d, root)) for d in spec.deps},
                        "params": {k: param_value(params, k) for k in spec.params}})


def outs_state(spec: StageSpec, root: str | Path) -> dict[str, str | None]:
    return {o: file_state(Path(root) / o) for o in spec.outs}
