"""dvc.yaml declares everything each stage reads, so DVC (and the Prefect flow, which runs stages through DVC)
reruns a stage whenever something it reads changes: every project module it imports (transitively), every
params key it reads, the image folder outside the repository."""
from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

from edgeopt.pipeline import load_pipeline

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("edgeopt", "stages", "flows", "benchmarks")
STAGES = list(load_pipeline(REPO))


def module_file(name: str) -> Path | None:
    p = REPO / Path(*name.split("."))
    if (p / "__init__.py").exists():
        return p / "__init__.py"
    return p.with_suffix(".py") if p.with_suffix(".py").exists() else None


def imported_modules(path: Path, modname: str) -> set[str]:
    """Project modules imported anywhere in the file, lazy imports inside functions included."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = modname.rsplit(".", node.level)[0]
                mod = f"{base}.{mod}" if mod else base
            out |= {mod} | {f"{mod}.{a.name}" for a in node.names}
    return {m for m in out if m.split(".")[0] in PACKAGES}


def subpackage(name: str) -> Path | None:
    """The folder of a package inside a project package (edgeopt/quantizers), holding module `name`."""
    parts = name.split(".")
    folder = REPO / parts[0] / parts[1] if len(parts) > 1 else None
    return folder if folder is not None and (folder / "__init__.py").is_file() else None


def code_closure(stage: str) -> set[str]:
    """Files of every project module `stages.<stage>` imports, transitively (package __init__ files aside). A
    subpackage counts as its folder, every module in it included: edgeopt/quantizers finds its modes by listing
    the folder, so a mode added there is a change DVC must see."""
    seen, todo, deps = set(), [f"stages.{stage}"], set()
    while todo:
        mod = todo.pop()
        f = module_file(mod)
        if f is None or mod in seen:
            continue
        seen.add(mod)
        folder = subpackage(mod)
        if folder is not None:
            deps.add(folder.relative_to(REPO).as_posix())
            todo += [f"{mod.split('.')[0]}.{folder.name}.{p.stem}" for p in folder.glob("*.py")]
        elif f.name != "__init__.py":
            deps.add(f.relative_to(REPO).as_posix())
        todo += imported_modules(f, mod)
    return deps


def is_code(dep: str) -> bool:
    return dep.endswith(".py") or (REPO / dep / "__init__.py").is_file()


@pytest.mark.parametrize("stage", STAGES)
def test_code_deps_are_exactly_the_modules_the_stage_imports(stage):
    spec = load_pipeline(REPO)[stage]
    declared = {d for d in spec.deps if is_code(d)}
    needed = code_closure(stage)
    assert not needed - declared, f"dvc.yaml stages.{stage}.deps misses {sorted(needed - declared)}"
    assert not declared - needed, f"dvc.yaml stages.{stage}.deps lists modules it does not import: " \
                                  f"{sorted(declared - needed)}"


def params_read(stage: str) -> set[str]:
    """`params.<section>[.<key>]` chains in the stage module (the static part; ParamsView checks at run time)."""
    from edgeopt.training import FIT_OPTIONS

    keys = set()
    tree = ast.parse((REPO / "stages" / f"{stage}.py").read_text())
    inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}  # only whole chains count
    for call in ast.walk(tree):  # fit_options(params.train) reads the train.* knobs of fit, key by key
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "fit_options":
            inner |= {id(a) for a in call.args}
            keys |= {f"train.{k}" for k in FIT_OPTIONS}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in inner:
            chain, cur = [], node
            while isinstance(cur, ast.Attribute):
                chain.append(cur.attr)
                cur = cur.value
            if isinstance(cur, ast.Name) and cur.id == "params":
                chain.reverse()
                if chain[0] in ("section", "unrestricted", "model_dump", "dump"):
                    continue
                keys.add(".".join(["validate" if chain[0] == "validate_" else chain[0], *chain[1:2]]))
    return keys


@pytest.mark.parametrize("stage", STAGES)
def test_params_a_stage_reads_are_declared(stage):
    declared = load_pipeline(REPO)[stage].params
    covered = lambda key: any(key == d or key.startswith(d + ".") for d in declared)  # noqa: E731
    missing = sorted(k for k in params_read(stage) if not covered(k))
    assert not missing, f"stages/{stage}.py reads {missing}, not declared in dvc.yaml stages.{stage}.params"


def test_reading_an_undeclared_param_fails_and_names_it(tiny_project):
    from edgeopt.params import load_params
    from edgeopt.stage import ParamsView, UndeclaredParam

    view = ParamsView(load_params(tiny_project / "params.yaml"), ("seed", "train.augment", "quantize"), "demo")
    assert view.seed == 0 and view.train.augment == "auto" and view.quantize.source == "clustered"
    with pytest.raises(UndeclaredParam, match=r"stage 'demo' reads param 'train.epochs', which dvc.yaml does not "
                                              r"declare for it: add it to stages.demo.params"):
        view.train.epochs
    with pytest.raises(UndeclaredParam, match="'prune'"):
        view.prune
    assert view.declared_values() == {"seed": 0, "train.augment": "auto", "quantize": view.quantize.model_dump()}


@pytest.fixture()
def reproduced(reproduced_clone):
    """The session's clone after `dvc repro` (tests here put back every edit they make)."""
    return reproduced_clone[0]


def changed_stages(root: Path) -> set[str]:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {name.split(":")[-1] for name in repo.status()}


# one param each stage reads (declared), changed to another valid value
PARAM_EDIT = {"prepare": "data.val_fraction=0.11", "validate": "validate.max_class_imbalance=3.5",
              "train": "train.momentum=0.8", "prune": "prune.ratio=0.45", "finetune": "finetune.momentum=0.8",
              "cluster": "cluster.lr=0.003", "sensitivity": "sensitivity.max_samples=90",
              "distill": "distill.momentum=0.8", "quantize": "quantize.calibration_size=99",
              "export": "export.parity_samples=100", "evaluate": "evaluate.batch_size=100", "bench": "bench.runs=11",
              "gate": "gate.max_size_bytes=1999999", "promote": "registry.max_regression=0.6",
              "report": "target.name=other-board"}


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_editing_an_imported_module_or_a_read_param_reruns_the_stage(reproduced, stage):
    from edgeopt.params import render_params_file

    assert changed_stages(reproduced) == set()
    module = reproduced / "stages" / f"{stage}.py"
    saved = module.read_text()
    module.write_text(saved + "\n# edited\n")
    try:
        assert stage in changed_stages(reproduced)
    finally:
        module.write_text(saved)
    key = PARAM_EDIT[stage].split("=")[0]
    assert any(key == d or key.startswith(d + ".") for d in load_pipeline(reproduced)[stage].params)
    params = reproduced / "params.yaml"
    original = params.read_text()
    try:
        params.write_text(render_params_file(original, [PARAM_EDIT[stage]]))
        assert stage in changed_stages(reproduced)
    finally:
        params.write_text(original)
    assert changed_stages(reproduced) == set()


def test_an_image_folder_outside_the_repo_is_a_tracked_dependency(tmp_path):
    """data.root outside the repository (the README's CIFAR example): adding an image makes prepare stale."""
    import numpy as np
    from PIL import Image

    from edgeopt.params import render_params_file
    from tests.test_dvc_pipeline import fresh_clone, run

    images = tmp_path / "outside" / "images"
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (images / c).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(images / c / f"{i}.png")
    clone = fresh_clone(tmp_path / "clone")
    params = clone / "params.yaml"
    params.write_text(render_params_file(params.read_text(), [
        "data.source=imagefolder", f"data.root={Path('..') / 'outside' / 'images'}", "data.channels=3",
        "data.image_size=8"]))
    dvc = lambda *a: run([__import__("sys").executable, "-m", "dvc", *a], clone)  # noqa: E731
    assert dvc("repro", "prepare").returncode == 0
    assert "prepare" not in dvc("status", "prepare").stdout
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(images / "cat" / "new.png")
    status = dvc("status", "prepare")
    assert "prepare" in status.stdout and "modified" in status.stdout and "outside/images" in status.stdout
    shutil.rmtree(images / "dog")  # deleting a class too
    assert "prepare" in dvc("status", "prepare").stdout
