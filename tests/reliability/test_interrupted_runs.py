"""Issue 7, item 3: interrupted runs. A SIGKILL at any point leaves no partial output under a final name (the previous
version stays intact), and rerunning resumes from the last complete stage with the same result.

- every line of the atomic writers (files, directories, registry releases) is a kill point, each tried;
- `edgeopt train` killed mid-training keeps the previous checkpoint;
- under DVC: `dvc repro validate`, SIGKILL `dvc repro train` mid-training, `dvc repro train` again: prepare and
  validate are skipped and the result equals an uninterrupted run's (same data hash, same checkpoint bytes).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from edgeopt.io import sha256_file
from tests.conftest import REPO

KILLER = textwrap.dedent('''
    """For N = 1, 2, ...: set up a fresh case, fork, and in the child run one write with a SIGKILL at its N-th
    executed line, until a child completes. Prints how many kill points there were."""
    import json, os, signal, sys
    from pathlib import Path

    import edgeopt.io as eio
    import edgeopt.registry as ereg

    kind, base = sys.argv[1], Path(sys.argv[2])
    NEW = b"new version " * 50_000

    def prepare(case):
        target = case / ("registry" if kind == "release" else "out")
        case.mkdir(parents=True)
        if kind == "file":
            target.write_bytes(b"old version " * 50_000)
        elif kind == "dir":
            target.mkdir()
            for i in range(2):
                (target / f"old{i}.bin").write_bytes(b"old" * 1000)
        elif kind == "release":
            src = case / "src"
            src.mkdir()
            (src / "model.onnx").write_bytes(b"old model")
            ereg.Registry(target).publish("m", {"model.onnx": src / "model.onnx"}, {"candidate": "old"})
            (src / "model.onnx").write_bytes(b"new model " * 10_000)
            (src / "w.bin").write_bytes(b"new weights " * 10_000)
        return target

    def write(target):  # the write under test; its own lines (between the files of a tree) are kill points too
        if kind == "file":
            eio.atomic_write_bytes(target, NEW)
        elif kind == "dir":
            with eio.atomic_dir(target) as tmp:
                for i in range(3):
                    (tmp / f"part{i}.bin").write_bytes(NEW)
        elif kind == "release":
            src = target.parent / "src"
            ereg.Registry(target).publish("m", {"model.onnx": src / "model.onnx", "extra/w.bin": src / "w.bin"},
                                         {"candidate": "new"})

    # traced: the io primitives (and write()) for file/dir; Registry.publish itself for a release (the io
    # primitives it calls are covered by the file/dir kinds)
    def traced(code):
        if kind == "release":
            return code.co_filename == ereg.__file__ and code.co_name == "publish"
        return code.co_filename in (eio.__file__, __file__) and code.co_name != "prepare"

    def run_child(target, n):
        count = 0

        def line(frame, event, arg):
            nonlocal count
            if event == "line":
                count += 1
                if count == n:
                    os.kill(os.getpid(), signal.SIGKILL)
            return line

        sys.settrace(lambda frame, event, arg: line if traced(frame.f_code) else None)
        write(target)
        sys.settrace(None)

    prepare(base / "reference")  # the old state, never written
    n = 0
    while True:
        n += 1
        target = prepare(base / f"kill{n}")
        pid = os.fork()
        if pid == 0:
            try:
                run_child(target, n)
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            break  # completed before its N-th line: every kill point has been tried
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
    print(json.dumps({"completed": n}))
''')


def _state(kind: str, target: Path):
    """What a reader sees under the final name (hidden temp siblings are not visible outputs)."""
    if kind == "file":
        return target.read_bytes() if target.exists() else None
    if kind == "dir":
        return {p.name: p.read_bytes() for p in sorted(target.iterdir())} if target.exists() else None
    from edgeopt.registry import Registry

    reg = Registry(target)
    return (tuple(reg.versions("m")), tuple(sorted(reg.record("m")["releases"])), tuple(reg.verify()))


@pytest.mark.parametrize("kind", ["file", "dir", "release"])
def test_kill_at_every_line_of_an_atomic_write_leaves_old_or_new(tmp_path, kind):
    from edgeopt.registry import Registry

    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    proc = subprocess.run([sys.executable, str(script), kind, str(tmp_path / "cases")], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    completed = json.loads(proc.stdout)["completed"]
    name = "registry" if kind == "release" else "out"
    old = _state(kind, tmp_path / "cases" / "reference" / name)
    new = _state(kind, tmp_path / "cases" / f"kill{completed}" / name)
    assert new != old and new is not None
    outcomes = {}
    for n in range(1, completed):
        case = tmp_path / "cases" / f"kill{n}"
        state = _state(kind, case / name)
        if kind == "release":
            versions, recorded, problems = state
            # killed after the release directory was renamed into place but before the record was replaced: a
            # directory that `verify` reports as an interrupted promotion, never resolvable and never reused
            orphan = (versions == ("0.0.1", "0.0.2") and recorded == ("0.0.1",) and len(problems) == 1
                      and "not in the registry record (interrupted promotion?)" in problems[0])
            assert state in (old, new) or orphan, f"kill point {n}: {state}"
            outcomes[n] = "old" if state == old else "new" if state == new else "orphan"
            # rerunning the promotion completes it; a dead writer's temp copy is cleaned, an orphan's version skipped
            src = case / "src"
            res = Registry(case / name).publish("m", {"model.onnx": src / "model.onnx", "extra/w.bin": src / "w.bin"},
                                                {"candidate": "new"})
            reg = Registry(case / name)
            assert reg.manifest("m", res["version"])["candidate"] == "new" and reg.verify("m", res["version"]) == []
            assert res["version"] == {"old": "0.0.2", "new": "0.0.2", "orphan": "0.0.3"}[outcomes[n]]
            assert not list((case / name / "m").glob(".incoming-*"))
        else:
            assert state in (old, new), f"kill point {n}: partial or missing output under the final name"
            outcomes[n] = "old" if state == old else "new"
        hidden = sorted(p.name for p in case.iterdir() if p.name not in (name, "src"))
        assert all(h.startswith(".") for h in hidden), hidden  # only hidden temp siblings may be left over
    print(f"{kind}: {completed - 1} kill points: " + ", ".join(f"{k} {list(outcomes.values()).count(k)}"
                                                              for k in ("old", "orphan", "new")))
    assert completed > 8 and set(outcomes.values()) == {"old", "new"} | ({"orphan"} if kind == "release" else set())


def _cli(*args: str, cwd: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "EDGEOPT_NO_PROGRESS": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.Popen(list(args), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, **kw)


def _kill_after_first_epoch(proc: subprocess.Popen, project: Path, timeout: float = 400) -> float:
    """SIGKILL the whole process group as soon as the first epoch is logged (training has started)."""
    log = project / "dvclive" / "train" / "plots" / "metrics" / "train" / "loss.tsv"
    t0 = time.time()
    while time.time() - t0 < timeout:
        if log.exists() and len(log.read_text().splitlines()) >= 2:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
            return time.time() - t0
        assert proc.poll() is None, f"finished before it could be killed: {proc.stdout.read()[-2000:]}"
        time.sleep(0.05)
    raise AssertionError("training never started")


def test_killed_train_keeps_the_previous_checkpoint(tiny_project):
    models = tiny_project / "models"
    before = sha256_file(models / "baseline.pt")
    proc = _cli(sys.executable, "-m", "edgeopt.cli", "train", "--set", "train.epochs=20", cwd=tiny_project)
    _kill_after_first_epoch(proc, tiny_project)
    assert proc.returncode == -signal.SIGKILL
    assert sha256_file(models / "baseline.pt") == before  # the previous version, intact
    assert [p.name for p in models.iterdir() if not p.name.startswith(".")] == ["baseline.pt"]
    assert not (tiny_project / "metrics" / "train.json").exists()  # metrics are written only on success


def _dvc(clone: Path, *args: str, timeout: float = 600) -> str:
    proc = _cli(sys.executable, "-m", "dvc", *args, cwd=clone)
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def _lock_md5(clone: Path, stage: str, path: str) -> str:
    lock = yaml.safe_load((clone / "dvc.lock").read_text())["stages"][stage]
    return next(o["md5"] for o in lock["outs"] if o["path"] == path)


@pytest.mark.slow
def test_dvc_repro_after_a_killed_stage_resumes_and_matches_an_uninterrupted_run(tmp_path):
    from tests.test_dvc_pipeline import fresh_clone

    clone = fresh_clone(tmp_path / "clone")
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["train"]["epochs"] = 3
    params["data"]["max_images_per_class"] = 60  # 600 images: the stages take seconds, not minutes
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    first = _dvc(clone, "repro", "validate")
    assert "Running stage 'prepare'" in first and "Running stage 'validate'" in first
    data_md5 = _lock_md5(clone, "prepare", "data/prepared")
    content_hash = json.loads((clone / "data/prepared/meta.json").read_text())["content_hash"]

    killed = _cli(sys.executable, "-m", "dvc", "repro", "train", cwd=clone)
    waited = _kill_after_first_epoch(killed, clone)
    assert killed.returncode == -signal.SIGKILL
    print(f"dvc repro train killed {waited:.1f} s in, after epoch 1 of 3")
    assert not (clone / "models" / "baseline.pt").exists()  # no partial checkpoint under its final name
    assert not (clone / "metrics" / "train.json").exists()
    assert "train" not in yaml.safe_load((clone / "dvc.lock").read_text())["stages"]

    resumed = _dvc(clone, "repro", "train")
    assert "Stage 'prepare' didn't change, skipping" in resumed
    assert "Stage 'validate' didn't change, skipping" in resumed
    assert "Running stage 'prepare'" not in resumed and "Running stage 'validate'" not in resumed
    assert "Running stage 'train'" in resumed
    assert _lock_md5(clone, "prepare", "data/prepared") == data_md5
    assert json.loads((clone / "data/prepared/meta.json").read_text())["content_hash"] == content_hash
    ckpt = sha256_file(clone / "models" / "baseline.pt")
    metrics = json.loads((clone / "metrics" / "train.json").read_text())
    assert metrics["epochs_run"] == 3
    assert len((clone / "dvclive/train/plots/metrics/train/loss.tsv").read_text().splitlines()) == 4  # 3 epochs

    # the reference: the same stage run uninterrupted gives the very same checkpoint bytes and numbers
    _dvc(clone, "repro", "--single-item", "--force", "train")
    assert sha256_file(clone / "models" / "baseline.pt") == ckpt
    again = json.loads((clone / "metrics" / "train.json").read_text())
    assert (again["test_accuracy"], again["val_accuracy"], again["history"]) == \
        (metrics["test_accuracy"], metrics["val_accuracy"], metrics["history"])
    assert "Data and pipelines are up to date" in _dvc(clone, "repro", "train")
