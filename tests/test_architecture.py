"""The architecture, enforced (docs/ARCHITECTURE.md): one direction of imports (the import-linter contracts in
pyproject.toml, each shown failing on a planted violation), no import cycle anywhere, every error class carrying
its exit code, and one home per fact (params defaults = params.yaml, the cron in prefect.yaml)."""
from __future__ import annotations

import copy
import importlib
import inspect
import os
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("edgeopt", "stages", "flows", "benchmarks")
LINT = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path, *contracts: str) -> subprocess.CompletedProcess:
    args = [str(LINT), "--no-cache", "--no-logo", *(a for c in contracts for a in ("--contract", c))]
    return subprocess.run(args, cwd=root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(root)})


def contract_names() -> dict[str, str]:
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["id"]: c["name"] for c in config["contracts"]}


def test_the_import_contracts_hold():
    res = lint_imports(REPO)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert set(contract_names()) == {"applications", "core", "stages", "acyclic"}
    assert f"Contracts: {len(contract_names())} kept, 0 broken." in res.stdout


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory) -> Path:
    """The code and the contracts, copied: violations are planted here, never in the checkout."""
    root = tmp_path_factory.mktemp("tree")
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, root / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


PLANTED = {  # contract id: (file, line appended): the violation each contract exists to catch
    "core": ("edgeopt/io.py", "import stages.train  # the library reaching into a stage"),
    "stages": ("stages/finetune.py", "from stages.prune import reduction  # a stage importing another"),
    "applications": ("stages/train.py", "import flows.tasks  # a stage importing the orchestration above it"),
    "acyclic": ("edgeopt/errors.py", "def _late():\n    from edgeopt.params import Params  # errors <-> params"),
}


@pytest.mark.parametrize("contract", sorted(PLANTED))
def test_each_contract_fails_on_a_planted_violation(tree_copy, contract):
    rel, line = PLANTED[contract]
    path = tree_copy / rel
    original = path.read_text()
    assert lint_imports(tree_copy, contract).returncode == 0  # the copy is clean
    path.write_text(original + "\n\n" + line + "\n")
    try:
        res = lint_imports(tree_copy, contract)
    finally:
        path.write_text(original)
    assert res.returncode == 1, res.stdout[-3000:]
    assert "BROKEN" in res.stdout and "0 kept, 1 broken" in res.stdout, res.stdout[-3000:]


def import_cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each one an import cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return cycles


@pytest.fixture(scope="module")
def import_graph():
    import grimp

    return grimp.build_graph(*PACKAGES, cache_dir=None)


def test_no_import_cycle_anywhere(import_graph):
    """Module by module across all four packages, lazy imports inside functions included (import-linter's
    acyclic contract looks at siblings; this is every module against every other)."""
    assert import_cycles(import_graph) == []


def test_the_cycle_check_finds_a_planted_cycle(import_graph):
    graph = copy.deepcopy(import_graph)
    graph.add_import(importer="edgeopt.errors", imported="edgeopt.params")  # params -> errors exists
    assert any({"edgeopt.errors", "edgeopt.params"} <= set(cycle) for cycle in import_cycles(graph))


def project_modules():
    for pkg in PACKAGES:
        yield importlib.import_module(pkg)
        for info in pkgutil.walk_packages(importlib.import_module(pkg).__path__, f"{pkg}."):
            if info.name.endswith("__main__"):
                continue
            yield importlib.import_module(info.name)


NOT_FOR_USERS = {"flows.tasks.DvcLockBusy"}  # a busy DVC lock is retried by the task, never shown as the reason


def test_every_error_class_carries_an_exit_code():
    """The CLI, stage_main, the Prefect tasks and the benchmark runner map errors with edgeopt.errors.exit_code_for:
    an error class outside the EdgeoptError family would end in a traceback (as ExportError once did)."""
    from edgeopt.errors import EdgeoptError, exit_code_for

    found = {}
    for module in project_modules():
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == module.__name__:
                found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    assert "edgeopt.errors.ExportError" in found and "flows.tasks.StageFailed" in found
    unmapped = sorted(n for n, c in found.items() if not issubclass(c, EdgeoptError) and n not in NOT_FOR_USERS)
    assert unmapped == [], f"error classes without an exit code (derive them from edgeopt.errors): {unmapped}"
    from edgeopt.errors import ExportError, GateNonePassError, ParamsError, PromotionRefused, StaleInputsError

    codes = {ExportError: 1, ParamsError: 2, GateNonePassError: 3, StaleInputsError: 4, PromotionRefused: 5}
    assert {cls: exit_code_for(cls("x")) for cls in codes} == codes
    assert exit_code_for(RuntimeError("a bug")) is None  # unexpected errors keep their traceback


def test_an_export_error_reaching_the_cli_is_one_line_and_exit_1(monkeypatch, capsys, tmp_path):
    from edgeopt import cli
    from edgeopt.errors import ExportError

    def fail(*_a, **_k):
        raise ExportError("model.onnx: OpenVINO could not convert the ONNX model: RuntimeError: unsupported op")

    monkeypatch.setattr(cli, "_run_stage", fail)
    assert cli.main(["export", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err == "edgeopt export: error: model.onnx: OpenVINO could not convert the ONNX model: RuntimeError: " \
                  "unsupported op\n"


def test_params_defaults_are_params_yaml():
    """params.yaml is the one home of every default: the typed models' defaults equal it, key by key."""
    from edgeopt.params import Params, flatten

    tree = yaml.safe_load((REPO / "params.yaml").read_text())
    # search.space is a mapping of knobs, each range with optional keys (log, step): compared as validated objects
    assert Params.model_validate(tree).search.space == Params().search.space
    outside_space = lambda flat: {k: v for k, v in flat.items() if not k.startswith("search.space.")}  # noqa: E731
    shipped = outside_space(flatten(tree))
    defaults = outside_space(flatten(Params().model_dump(by_alias=True)))
    assert sorted(defaults) == sorted(shipped)
    assert {k: v for k, v in defaults.items() if shipped[k] != v} == {}


def test_the_schedule_lives_in_prefect_yaml_only():
    deployments = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    crons = {s["cron"] for d in deployments for s in d.get("schedules") or [] if "cron" in s}
    assert crons, "prefect.yaml declares the nightly schedule"
    for path in REPO.glob("*/**/*.py"):
        if path.parts[len(REPO.parts)] in PACKAGES:
            assert not any(c in path.read_text() for c in crons), f"{path} repeats the cron of prefect.yaml"


def test_the_architecture_document_is_generated_from_the_code():
    """docs/ARCHITECTURE.md's pictures and tables (the DVC DAG, the layers, the core's levels, the quantization
    modes) are what docs/generate_architecture.py makes of the code now."""
    res = subprocess.run([sys.executable, str(REPO / "docs" / "generate_architecture.py"), "--check"], cwd=REPO,
                         capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr
