"""`dvc repro` from a fresh clone runs the whole chain; a second `dvc repro` does nothing.

The clone is a copy of the repository's tracked files in a temp git repo, with short training (params edited the
way `dvc exp run -S` does) so the full chain fits the CI budget. This is the test the README's `make run` rests on.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
FAST = {"train": {"epochs": 3}, "finetune": {"epochs": 2}, "distill": {"epochs": 2},
        "cluster": {"finetune_epochs": 1}, "bench": {"runs": 20, "warmup": 2}, "sensitivity": {"max_samples": 100}}


def run(cmd, cwd, timeout=900):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "EDGEOPT_NO_PROGRESS": "1"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def source_files() -> list[str]:
    """The repository's files as a clone gets them (committed or new, not ignored), minus what a run of the
    pipeline writes (dvc.lock and every dvc.yaml output, git-tracked or not): so tests see the same project
    whether or not `make run` ran first in this checkout."""
    from edgeopt.pipeline import load_pipeline

    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    written = [o for spec in load_pipeline(REPO).values() for o in spec.outs] + ["dvc.lock"]
    return [f for f in files if not any(f == w or f.startswith(w.rstrip("/") + "/") for w in written)]


def fresh_clone(dst: Path) -> Path:
    for f in source_files():
        if (REPO / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dst / f)
    params = yaml.safe_load((dst / "params.yaml").read_text())
    for section, values in FAST.items():
        params[section].update(values)
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "clone"]):
        subprocess.run(cmd, cwd=dst, check=True)
    return dst


@pytest.mark.slow
def test_dvc_repro_twice_metrics_and_plots(reproduced_clone, tmp_path):
    clone, first = reproduced_clone
    assert first.returncode == 0 and "Running stage 'report'" in first.stdout
    train = json.loads((clone / "metrics/train.json").read_text())
    assert train["test_accuracy"] > 80
    for stage in ("prepare", "validate", "train", "prune", "finetune", "cluster", "sensitivity", "distill",
                  "quantize", "export", "evaluate", "bench", "gate", "promote", "report"):
        assert (clone / "metrics" / f"{stage}.json").exists(), stage

    second = run([sys.executable, "-m", "dvc", "repro"], clone)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "Data and pipelines are up to date" in second.stdout + second.stderr
    assert "Running stage" not in second.stdout

    shown = run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], clone)
    assert shown.returncode == 0, shown.stderr
    gate_metrics = json.loads(shown.stdout)[""]["data"]["metrics/gate.json"]["data"]
    assert gate_metrics["status"] == "pass" and gate_metrics["selected_accuracy"] > 80
    plots = run([sys.executable, "-m", "dvc", "plots", "show", "-o", str(tmp_path / "plots")], clone)
    assert plots.returncode == 0, plots.stderr[-2000:]
    assert (tmp_path / "plots" / "index.html").exists()
    # `edgeopt plots-offline` inlines Vega into DVC's page template (stand-in scripts here: no downloads in tests)
    from edgeopt.offline_plots import install

    install(clone, ["window.vegaStandIn = 1;", "/* vega-lite */", "/* vega-embed */"])
    plots = run([sys.executable, "-m", "dvc", "plots", "show", "-o", str(tmp_path / "offline")], clone)
    page = (tmp_path / "offline" / "index.html").read_text()
    assert plots.returncode == 0 and "window.vegaStandIn = 1;" in page and "cdn.jsdelivr" not in page
    assert "vegaEmbed(" in page  # DVC's plot divs, now served by the inlined scripts
