"""The registry is out of reach of pipeline checkouts: releases made by interleaved flow runs, `dvc repro`,
`dvc exp run` (workspace and --temp), `dvc exp apply` and a `git checkout` of an older commit all survive;
versions are unique, every git tag points at the commit its own release was built from, experiments are not
tagged. Also: releases travel through a DVC remote."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgeopt.registry import Registry

MODEL = "digits-classifier"
TINY = ["data.max_images_per_class=30", "validate.min_images_per_class=5", "train.epochs=1", "finetune.epochs=1",
        "distill.enabled=false", "sensitivity.enabled=false", "cluster.enabled=false", "quantize.source=finetuned",
        "quantize.modes=[ort_int8_dynamic]", "quantize.calibration_size=32", "export.parity_samples=32",
        "bench.runs=5", "bench.warmup=1", "bench.rounds=1", "bench.pytorch_reference=false",
        "gate.max_accuracy_drop=100", "gate.max_latency_ms=1000", "registry.allow_regression=true",
        "export.min_agreement_quantized=0"]


def sh(root: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    from tests.test_dvc_pipeline import run

    res = run(list(cmd), root, timeout=1200)
    if check:
        assert res.returncode == 0, f"{cmd}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def dvc(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh(root, sys.executable, "-m", "dvc", *args, check=check)


def git(root: Path, *args: str) -> str:
    return sh(root, "git", "-c", "user.name=t", "-c", "user.email=t@t", *args).stdout.strip()


def set_params(root: Path, *overrides: str) -> None:
    from edgeopt.params import render_params_file

    path = root / "params.yaml"
    path.write_text(render_params_file(path.read_text(), list(overrides)))


@pytest.fixture(scope="module", autouse=True)
def own_prefect_home(tmp_path_factory):
    """Flow runs here start their own temporary Prefect server: give them a database no other process uses."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFECT_HOME", str(tmp_path_factory.mktemp("prefect_home")))
        mp.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
        yield


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    from tests.test_dvc_pipeline import fresh_clone

    root = fresh_clone(tmp_path_factory.mktemp("safety") / "clone")
    set_params(root, *TINY)
    git(root, "commit", "-qam", "tiny params")
    return root


def flow_run(root: Path, *overrides: str) -> None:
    code = ("import sys; from flows.edge_release import main; sys.exit(main(sys.argv[1:]))")
    args = [a for o in overrides for a in ("--set", o)]
    sh(root, sys.executable, "-c", code, "--root", str(root), *args)


@pytest.mark.slow
def test_releases_survive_interleaved_orchestrators_experiments_and_checkouts(project, tmp_path):
    root = project
    flow_run(root, "finetune.lr=0.011")                                        # 0.0.1: a Prefect run
    git(root, "add", "-A")
    git(root, "commit", "-qm", "first results")                               # dvc.lock + metrics of 0.0.1
    first_commit = git(root, "rev-parse", "HEAD")
    set_params(root, "finetune.lr=0.012")
    git(root, "commit", "-qam", "lr 0.012")
    dvc(root, "repro")                                                        # 0.0.2: dvc repro
    dvc(root, "exp", "run", "-n", "exp-a", "-S", "finetune.lr=0.013")         # 0.0.3: an experiment
    dvc(root, "exp", "run", "--temp", "-n", "exp-b", "-S", "finetune.lr=0.014")  # 0.0.4: in a scratch copy
    dvc(root, "exp", "apply", "exp-a")                                       # an experiment's outputs back
    git(root, "add", "-A")
    git(root, "commit", "-qm", "results")
    git(root, "checkout", "-q", first_commit)                                # an older commit ...
    dvc(root, "checkout", "--force")                                         # ... and its outputs
    flow_run(root, "finetune.lr=0.015")                                        # 0.0.5: a flow run on it

    reg = Registry(root / "registry")
    assert reg.versions(MODEL) == ["0.0.1", "0.0.2", "0.0.3", "0.0.4", "0.0.5"]
    assert reg.verify() == []
    assert sh(root, sys.executable, "-m", "edgeopt.cli", "registry", "verify").returncode == 0
    lrs = {v: reg.manifest(MODEL, v)["lineage"]["params"]["finetune"]["lr"] for v in reg.versions(MODEL)}
    assert lrs == {"0.0.1": 0.011, "0.0.2": 0.012, "0.0.3": 0.013, "0.0.4": 0.014, "0.0.5": 0.015}
    tags = dict(line.split() for line in git(root, "for-each-ref", "--format=%(refname:strip=2) %(*objectname)",
                                             f"refs/tags/{MODEL}@v*").splitlines())
    assert set(tags) == {f"{MODEL}@v0.0.1", f"{MODEL}@v0.0.2", f"{MODEL}@v0.0.5"}  # experiments are not tagged
    for version in ("0.0.1", "0.0.2", "0.0.5"):
        assert tags[f"{MODEL}@v{version}"] == reg.manifest(MODEL, version)["lineage"]["git"]["commit"]
    for version, name in (("0.0.3", "exp-a"), ("0.0.4", "exp-b")):
        assert reg.manifest(MODEL, version)["lineage"]["experiment"]["name"] == name
    # `dvc exp show` compares the experiments: the pick's accuracy, drop, size, latency, and the params changed
    shown = json.loads(dvc(root, "exp", "show", "--json", "-A").stdout)
    exps = {e["name"]: e for e in _walk(shown) if e.get("name") in ("exp-a", "exp-b")}
    for name, lr in (("exp-a", 0.013), ("exp-b", 0.014)):
        data = exps[name]["data"]
        gate = data["metrics"]["metrics/gate.json"]["data"]
        assert {"selected_accuracy", "selected_drop", "selected_size_bytes", "selected_latency_ms"} <= set(gate)
        assert data["params"]["params.yaml"]["data"]["finetune"]["lr"] == lr
    assert reg.channel(MODEL, "staging") == "0.0.5"
    history = [e["version"] for e in reg.record(MODEL)["channels"]["staging"]["history"]]
    assert history == ["0.0.1", "0.0.2", "0.0.3", "0.0.4", "0.0.5"]


def _walk(node):
    """Every dict inside `dvc exp show --json` output (its nesting differs between DVC versions)."""
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


@pytest.mark.slow
def test_releases_travel_through_a_dvc_remote(project, tmp_path):
    """`edgeopt registry push/pull-remote` through the project's DVC remote (a local one here)."""
    root = project
    if not (root / "registry" / MODEL).is_dir():
        flow_run(root, "finetune.lr=0.011")
    remote = tmp_path / "remote"
    dvc(root, "remote", "add", "-f", "-d", "store", str(remote))
    pushed = sh(root, sys.executable, "-m", "edgeopt.cli", "registry", "push")
    assert "pushed" in pushed.stdout
    other = tmp_path / "other"
    other.mkdir()
    git(other, "init", "-q")
    sh(root, "cp", "-r", ".dvc", str(other / ".dvc"))  # another clone: the same DVC config, no registry
    (other / "params.yaml").write_text((root / "params.yaml").read_text())
    sh(other, sys.executable, "-m", "edgeopt.cli", "registry", "fetch")
    theirs, ours = Registry(other / "registry"), Registry(root / "registry")
    assert theirs.versions(MODEL) == ours.versions(MODEL) and theirs.verify() == []
    assert json.loads((other / "registry" / MODEL / "registry.json").read_text())["channels"] == \
        ours.record(MODEL)["channels"]
