"""Edge release registry and the promote stage: manifests, immutability, channels, rollback, tags, exit codes.
(Races, traversal, tampering, gate integrity: tests/reliability/.)"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from tests.release_helpers import REPO, release_project, release_template, run_cli  # noqa: F401

from edgeopt.errors import StaleInputsError, RegistryError
from edgeopt.io import read_json, sha256_file
from edgeopt.params import load_params
from edgeopt.paths import Paths
from edgeopt.registry import Registry, bump_version, parse_ref, verify_dir

MODEL = "digits-classifier"


def params_of(root, *overrides):
    return load_params(root / "params.yaml", list(overrides))


def gate(root, *overrides):
    from stages.gate import run

    return run(params_of(root, *overrides), Paths(root))


def promote(root, *overrides, **kw):
    from stages.promote import run

    return run(params_of(root, *overrides), Paths(root), **kw)


def tamper(path: Path, offset: int = 10) -> None:
    path.chmod(path.stat().st_mode | stat.S_IWUSR)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def make_files(tmp_path: Path, tag: str) -> dict[str, Path]:
    d = tmp_path / f"src-{tag}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.onnx").write_bytes(f"weights {tag}".encode())
    return {"model.onnx": d / "model.onnx"}


@pytest.fixture()
def gated(release_project):
    gate(release_project)
    return release_project


def test_promote_from_gate_writes_complete_manifest_and_is_idempotent(gated):
    m = promote(gated)
    assert (m["release"], m["created"], m["candidate"], m["channel"]) == (f"{MODEL}@0.0.1", True,
                                                                          "finetuned_ov_fp16", "staging")
    assert m["tag"] is None and "not a git repository" in m["note"]
    reg = Registry(gated / "registry")
    d = reg.release_dir(MODEL, "0.0.1")
    man = reg.manifest(MODEL, "0.0.1")
    assert sorted(p.name for p in d.iterdir()) == ["manifest.json", "model.bin", "model.xml"]
    src = gated / "models" / "exported" / "finetuned_ov_fp16"
    assert man["files"]["model.bin"] == {"sha256": sha256_file(src / "model.bin"),
                                         "bytes": (src / "model.bin").stat().st_size}
    assert man["primary"] == "model.xml" and man["runtime"] == "openvino"
    meta = read_json(gated / "data" / "prepared" / "meta.json")
    assert man["classes"] == [str(i) for i in range(10)]
    assert man["input"]["shape"] == [1, 1, 16, 16] and man["input"]["color_order"] == "L"
    assert man["input"]["mean"] == meta["mean"] and man["input"]["resize"]["size"] == [16, 16]
    assert man["metrics"]["accuracy"] == 94.8 and man["metrics"]["drop"] == pytest.approx(0.2)
    assert man["latency"]["p90_ms"] == 0.30 and man["latency"]["hardware"]["cpu"] == "test-cpu"
    assert man["gate"]["thresholds"]["max_latency_ms"] == 5.0 and man["gate"]["verdict"] == "pass"
    assert man["stages"] == ["train", "prune", "finetune", "quantize"]
    assert man["lineage"]["data"]["content_hash"] == meta["content_hash"]
    dumped = params_of(gated).dump()  # lineage: the params the upstream stages recorded, as dvc.lock holds them
    assert man["lineage"]["params"]["train"] == dumped["train"] and man["lineage"]["params"]["seed"] == dumped["seed"]
    assert man["lineage"]["params"]["prune"] == dumped["prune"] and "registry" not in man["lineage"]["params"]
    assert man["lineage"]["parent"] is None
    assert man["lineage"]["git"]["commit"] is None
    assert reg.channel(MODEL, "staging") == "0.0.1"
    assert read_json(gated / "metrics" / "promote.json")["release"] == f"{MODEL}@0.0.1"
    assert not (d / "model.xml").stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    # a rerun (dvc repro) mints nothing
    again = promote(gated)
    assert (again["version"], again["created"], again["channel_changed"]) == ("0.0.1", False, False)
    assert reg.versions(MODEL) == ["0.0.1"] and reg.verify() == []
    assert len(reg.record(MODEL)["channels"]["staging"]["history"]) == 1


def test_new_content_bumps_version_and_records_parent(gated):
    promote(gated)
    gate(gated, "gate.rank_by=size")  # picks the int8 ONNX model: other files
    with pytest.raises(StaleInputsError, match=r"gate.rank_by: built with 'size', now 'latency'"):
        promote(gated, "registry.bump=minor")  # promote must run with the params the gate ran with
    m = promote(gated, "gate.rank_by=size", "registry.bump=minor", "registry.allow_regression=true")
    assert (m["version"], m["created"], m["candidate"]) == ("0.1.0", True, "finetuned_ort_int8_dynamic")
    man = Registry(gated / "registry").manifest(MODEL, "0.1.0")
    assert man["lineage"]["parent"] == f"{MODEL}@0.0.1" and list(man["files"]) == ["model.onnx"]


def test_same_version_twice_is_refused(gated, tmp_path):
    promote(gated, version="1.0.0")
    with pytest.raises(RegistryError, match=r"digits-classifier@1.0.0 already exists; releases are immutable"):
        promote(gated, version="1.0.0")
    reg = Registry(tmp_path / "reg")
    reg.publish("m", make_files(tmp_path, "a"), {}, version="2.0.0")
    with pytest.raises(RegistryError, match="already exists"):
        reg.publish("m", make_files(tmp_path, "b"), {}, version="2.0.0")
    with pytest.raises(RegistryError, match="versions only go up and 2.0.0 exists"):
        reg.publish("m", make_files(tmp_path, "c"), {}, version="1.9.9")
    assert reg.versions("m") == ["2.0.0"]
    assert reg.manifest("m", "2.0.0")["files"]["model.onnx"]["sha256"] == sha256_file(tmp_path / "src-a" / "model.onnx")
    # a writer killed mid-copy leaves only a hidden temp dir: never listed, cleaned by the next writer
    (tmp_path / "reg" / "m" / ".incoming-2.0.1-dead").mkdir()
    assert reg.versions("m") == ["2.0.0"] and reg.verify() == []
    assert reg.publish("m", make_files(tmp_path, "d"), {})["version"] == "2.0.1"
    assert not list((tmp_path / "reg" / "m").glob(".incoming-*"))


def test_pull_copies_and_verifies_a_release(gated, tmp_path):
    promote(gated)
    res = run_cli(gated, "registry", "pull", f"{MODEL}@staging", "--to", str(tmp_path / "rel"))
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (tmp_path / "rel").iterdir()) == [".edgeopt-pull.json", "manifest.json",
                                                                    "model.bin", "model.xml"]
    marker = read_json(tmp_path / "rel" / ".edgeopt-pull.json")
    assert (marker["release"], marker["files"]) == (f"{MODEL}@0.0.1", ["manifest.json", "model.bin", "model.xml"])
    assert verify_dir(tmp_path / "rel", pulled=True) == []
    tamper(tmp_path / "rel" / "model.xml")
    res = run_cli(gated, "registry", "verify", "--dir", str(tmp_path / "rel"))
    assert res.returncode == 1 and "model.xml: content changed" in res.stderr
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(RegistryError, match="not an earlier pull"):
        Registry(gated / "registry").pull(MODEL, tmp_path / "busy")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_rollback_restores_previous_production_pointer(tmp_path):
    reg = Registry(tmp_path / "reg")
    for i in range(3):
        v = reg.publish("m", make_files(tmp_path, str(i)), {})["version"]
        reg.point("m", "production", v)
    assert reg.channel("m", "production") == "0.0.3"
    assert reg.rollback("m", "production")["version"] == "0.0.2"
    assert reg.channel("m", "production") == "0.0.2"
    assert reg.rollback("m", "production")["version"] == "0.0.1"
    with pytest.raises(RegistryError, match="no previous pointer"):
        reg.rollback("m", "production")
    history = reg.record("m")["channels"]["production"]["history"]
    assert [(h["action"], h["version"], h["from"]) for h in history] == [
        ("promote", "0.0.1", None), ("promote", "0.0.2", "0.0.1"), ("promote", "0.0.3", "0.0.2"),
        ("rollback", "0.0.2", "0.0.3"), ("rollback", "0.0.1", "0.0.2")]
    assert all(h["manifest_sha256"] == reg.record("m")["releases"][h["version"]]["manifest_sha256"] for h in history)
    assert all(h["by"] and h["time"] for h in history)
    reg.point("m", "production", "0.0.3")
    res = subprocess.run([sys.executable, "-m", "edgeopt.cli", "registry", "rollback", "m", "--channel",
                          "production", "--registry", str(tmp_path / "reg")], capture_output=True, text=True,
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr
    assert "0.0.3 -> 0.0.1" in res.stdout and reg.channel("m", "production") == "0.0.1"


def test_promote_cli_exit_codes(release_project):
    root = release_project
    assert run_cli(root, "promote").returncode == 4
    assert run_cli(root, "gate", "--set", "gate.max_size_bytes=10").returncode == 3
    res = run_cli(root, "promote")
    assert res.returncode == 3 and "no passing candidate" in res.stderr
    assert run_cli(root, "gate").returncode == 0
    first = run_cli(root, "promote", "--set", "registry.channel=production")
    assert first.returncode == 0, first.stderr
    res = run_cli(root, "registry", "promote", "--from-gate", "--channel", "production", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["created"] is False  # identical content: the existing release
    listing = json.loads(run_cli(root, "registry", "list", "--json").stdout)
    assert [(r["release"], r["channels"]) for r in listing] == [(f"{MODEL}@0.0.1", ["production"])]
    shown = run_cli(root, "registry", "show", f"{MODEL}@production")
    assert shown.returncode == 0 and "finetuned_ov_fp16" in shown.stdout and "verified   ok" in shown.stdout


def test_git_tag_gto_style(gated):
    git = ["git", "-C", str(gated), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(gated)], check=True)
    subprocess.run([*git, "add", "params.yaml"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], check=True)
    m = promote(gated)
    assert m["tag"] == f"{MODEL}@v0.0.1"
    kind = subprocess.run([*git, "cat-file", "-t", m["tag"]], capture_output=True, text=True).stdout.strip()
    assert kind == "tag"  # annotated
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    man = Registry(gated / "registry").manifest(MODEL, "0.0.1")
    assert man["lineage"]["git"]["commit"] == head and man["lineage"]["git"]["dirty"] is False
    m = promote(gated, "registry.tag=false", version="0.0.9")  # explicit new version, identical content
    assert m["created"] is False and m["version"] == "0.0.1"


def test_semver_bumps():
    assert bump_version(None, "patch") == "0.0.1" and bump_version(None, "major") == "1.0.0"
    assert bump_version("1.2.3", "minor") == "1.3.0" and bump_version("1.2.3", "major") == "2.0.0"
    assert parse_ref("m@v1.2.3") == ("m", "1.2.3") and parse_ref("m@production") == ("m", "production")
    assert parse_ref("m") == ("m", None)


def test_gate_promote_registry_cli_are_torch_free(release_project):
    code = ("import sys; from edgeopt.cli import main\n"
            "for argv in (['gate'], ['promote'], ['registry', 'verify'], ['registry', 'list', '--json']):\n"
            "    assert main(argv) == 0, argv\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=release_project, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr
    assert Registry(release_project / "registry").channel(MODEL, "staging") == "0.0.1"


def test_git_dirty_flag_ignores_dvc_lock(tmp_path):
    from stages.promote import git_state

    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    for name in ("dvc.lock", "params.yaml"):
        (tmp_path / name).write_text("a\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], check=True)
    (tmp_path / "dvc.lock").write_text("b\n")  # rewritten by the running `dvc repro` itself
    assert git_state(tmp_path)["dirty"] is False
    (tmp_path / "params.yaml").write_text("b\n")
    assert git_state(tmp_path)["dirty"] is True
    assert git_state(tmp_path / "nope")["commit"] is None
