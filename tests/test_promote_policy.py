"""Promotion policy: a release records what really built it and never silently regresses its channel; its
version is never reused and its git tag points at no other release."""
from __future__ import annotations

import json
import subprocess

import pytest
from tests.release_helpers import release_project, release_template, run_cli  # noqa: F401

from edgeopt.registry import Registry

MODEL_NAME = "digits-classifier"


def cli(root, *args):
    return run_cli(root, *args)


@pytest.fixture()
def gated(release_project):
    assert cli(release_project, "gate").returncode == 0
    return release_project


def git(root, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root,
                          capture_output=True, text=True, check=True).stdout.strip()


def test_changed_params_after_the_gate_are_refused_naming_the_keys(gated):
    params = gated / "params.yaml"
    params.write_text(params.read_text().replace("epochs: 15", "epochs: 20", 1))
    res = cli(gated, "promote")
    assert res.returncode == 4, res.stderr
    assert "train.epochs: built with 15, now 20" in res.stderr and "rerun `dvc repro`" in res.stderr
    assert not (gated / "registry").exists()  # nothing released


def test_re_prepared_data_after_the_gate_is_refused(gated):
    meta = gated / "data" / "prepared" / "meta.json"
    doc = json.loads(meta.read_text())
    doc["content_hash"] = "another-data-set"
    meta.write_text(json.dumps(doc))
    res = cli(gated, "promote")
    assert res.returncode == 4 and "data/prepared is now another-data" in res.stderr


def test_a_regression_of_the_channel_is_refused_with_both_figures(gated):
    from tests.release_helpers import write_measurements

    assert cli(gated, "promote").returncode == 0  # 0.0.1: the real model, measured now on the test split
    # the gate's next pick claims 90 % (its evaluate record): below the channel's release, measured now
    write_measurements(gated, accuracy={"finetuned_ov_fp16": 90.0, "finetuned_ort_int8_dynamic": 94.0},
                       latency={"finetuned_ort_int8_dynamic": 0.2})  # now the fastest: the pick
    assert cli(gated, "gate", "--set", "gate.max_accuracy_drop=10").returncode == 0
    res = cli(gated, "promote", "--set", "gate.max_accuracy_drop=10")
    assert res.returncode == 5, res.stderr
    assert "finetuned_ort_int8_dynamic scores 94.00 %" in res.stderr and "scores 98." in res.stderr
    assert "registry.allow_regression" in res.stderr
    assert Registry(gated / "registry").versions(MODEL_NAME) == ["0.0.1"]
    ok = cli(gated, "promote", "--set", "gate.max_accuracy_drop=10", "--allow-regression")
    assert ok.returncode == 0, ok.stderr
    reg = Registry(gated / "registry")
    assert reg.versions(MODEL_NAME) == ["0.0.1", "0.0.2"] and reg.channel(MODEL_NAME, "staging") == "0.0.2"
    policy = json.loads((gated / "metrics" / "promote.json").read_text())["policy"]
    assert policy["channel_release"] == f"{MODEL_NAME}@0.0.1" and policy["delta_points"] < -0.5


def test_versions_are_never_reused_and_tags_point_at_their_own_release(gated):
    git(gated, "init", "-q")
    git(gated, "add", "-A")
    git(gated, "commit", "-qm", "first")
    assert cli(gated, "promote").returncode == 0
    first = git(gated, "rev-list", "-n1", f"{MODEL_NAME}@v0.0.1")
    manifest = Registry(gated / "registry").manifest(MODEL_NAME, "0.0.1")
    assert first == manifest["lineage"]["git"]["commit"]
    # the registry is lost (a careless rm, another machine): the tag still holds 0.0.1, so it is not reused
    import shutil

    shutil.rmtree(gated / "registry")
    git(gated, "commit", "-qm", "second", "--allow-empty")
    res = cli(gated, "promote")
    assert res.returncode == 0, res.stderr
    assert Registry(gated / "registry").versions(MODEL_NAME) == ["0.0.2"]
    assert git(gated, "rev-list", "-n1", f"{MODEL_NAME}@v0.0.1") == first  # the old tag did not move
    assert git(gated, "rev-list", "-n1", f"{MODEL_NAME}@v0.0.2") == git(gated, "rev-parse", "HEAD")
    # an explicit version whose tag exists is an error with an exit code, not a log line
    shutil.rmtree(gated / "registry")
    res = cli(gated, "promote", "--version", "0.0.1")
    assert res.returncode == 1 and "git tag digits-classifier@v0.0.1 exists" in res.stderr
