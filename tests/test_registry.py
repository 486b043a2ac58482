"""Edge release registry and the promote stage: immutability, integrity, channels, concurrency, refusals."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from tests.release_helpers import REPO, release_project, release_template, run_cli, write_measurements  # noqa: F401

from edgeopt.errors import GateNonePassError, RegistryError, StaleInputsError
from edgeopt.io import read_json, sha256_file, write_json
from edgeopt.params import load_params
from edgeopt.paths import Paths
from edgeopt.registry import Registry, bump_version, check_file_name, parse_ref, verify_dir

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
    assert man["lineage"]["params"] == params_of(gated).dump() and man["lineage"]["parent"] is None
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
    m = promote(gated, "registry.bump=minor")
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


def test_tampered_file_fails_verify_and_pull(gated, tmp_path):
    promote(gated)
    reg = Registry(gated / "registry")
    tamper(reg.release_dir(MODEL, "0.0.1") / "model.bin", offset=200)
    problems = reg.verify()
    assert len(problems) == 1 and "model.bin: content changed" in problems[0]
    with pytest.raises(RegistryError, match="fails verification, not pulled"):
        reg.pull(f"{MODEL}@staging", tmp_path / "pulled")
    assert not (tmp_path / "pulled").exists()
    res = run_cli(gated, "registry", "verify")
    assert res.returncode == 1 and "model.bin: content changed" in res.stderr
    res = run_cli(gated, "registry", "pull", f"{MODEL}@0.0.1", "--to", str(tmp_path / "p2"))
    assert res.returncode == 1 and "fails verification" in res.stderr and not (tmp_path / "p2").exists()


def test_edited_manifest_is_detected(gated, tmp_path):
    promote(gated)
    reg = Registry(gated / "registry")
    path = reg.release_dir(MODEL, "0.0.1") / "manifest.json"
    path.chmod(0o644)
    man = json.loads(path.read_text())
    man["metrics"]["accuracy"] = 99.9
    path.write_text(json.dumps(man, indent=2) + "\n")
    assert any("manifest edited after promotion" in p for p in reg.verify(MODEL, "0.0.1"))
    with pytest.raises(RegistryError, match="manifest edited"):
        reg.pull(MODEL, tmp_path / "pulled")
    with pytest.raises(RegistryError, match="manifest edited"):
        reg.point(MODEL, "production", "0.0.1")


def test_pull_copies_and_verifies_a_release(gated, tmp_path):
    promote(gated)
    res = run_cli(gated, "registry", "pull", f"{MODEL}@staging", "--to", str(tmp_path / "rel"))
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (tmp_path / "rel").iterdir()) == ["manifest.json", "model.bin", "model.xml"]
    assert verify_dir(tmp_path / "rel") == []
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


RACER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from edgeopt.errors import RegistryError
    from edgeopt.registry import Registry
    root, tag, start, version = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    src = Path(root).parent / f"src-{tag}"
    src.mkdir(exist_ok=True)
    time.sleep(max(0.0, start - time.time()))
    for i in range(4 if version == "auto" else 1):
        (src / "model.onnx").write_bytes(f"{tag}-{i}".encode() * 1000)
        try:
            r = Registry(root).publish("m", {"model.onnx": src / "model.onnx"}, {"candidate": tag},
                                       version=None if version == "auto" else version)
            print("ok", r["version"])
        except RegistryError as exc:
            print("refused", exc)
""")


def race(tmp_path: Path, version: str) -> list[str]:
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    start = time.time() + 2.0
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "reg"), tag, str(start), version],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for tag in "ab"]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    return [line for o in outs for line in o[0].splitlines()]


def test_racing_promotions_are_all_recorded(tmp_path):
    lines = race(tmp_path, "auto")
    versions = sorted((ln.split()[1] for ln in lines if ln.startswith("ok")), key=lambda v: tuple(map(int, v.split("."))))
    assert len(versions) == 8 and len(set(versions)) == 8, lines
    reg = Registry(tmp_path / "reg")
    assert reg.versions("m") == [f"0.0.{i}" for i in range(1, 9)]
    assert sorted(reg.record("m")["releases"]) == sorted(versions)
    assert reg.verify() == []
    assert not [p for p in (tmp_path / "reg" / "m").iterdir() if p.name.startswith(".incoming")]


def test_racing_same_version_one_is_cleanly_refused(tmp_path):
    lines = race(tmp_path, "1.0.0")
    assert sorted(ln.split()[0] for ln in lines) == ["ok", "refused"], lines
    assert "already exists" in next(ln for ln in lines if ln.startswith("refused"))
    reg = Registry(tmp_path / "reg")
    assert reg.versions("m") == ["1.0.0"] and reg.verify() == []
    winner = reg.manifest("m", "1.0.0")["candidate"]
    src = tmp_path / f"src-{winner}" / "model.onnx"
    assert reg.manifest("m", "1.0.0")["files"]["model.onnx"]["sha256"] == sha256_file(src)


@pytest.mark.parametrize("bad", ["../evil", "/abs", "a/b", "Upper", "a b", "..", ""])
def test_traversal_and_odd_model_names_refused(tmp_path, bad):
    reg = Registry(tmp_path / "reg")
    with pytest.raises(RegistryError, match="refused"):
        reg.publish(bad, make_files(tmp_path, "x"), {})
    with pytest.raises(RegistryError, match="refused"):
        parse_ref(f"{bad}@1.0.0")
    assert not (tmp_path / "evil").exists() and not (tmp_path / "reg" / "a").exists()


@pytest.mark.parametrize("bad", ["../1.0.0", "1.0", "1.0.0/../../x", "01.0.0", "1.0.0-rc1", "/1.0.0"])
def test_bad_versions_refused(tmp_path, bad):
    reg = Registry(tmp_path / "reg")
    with pytest.raises(RegistryError, match="refused: use semantic versioning"):
        reg.publish("m", make_files(tmp_path, "x"), {}, version=bad)
    assert reg.versions("m") == []


def test_bad_channels_and_file_names_refused(tmp_path):
    reg = Registry(tmp_path / "reg")
    v = reg.publish("m", make_files(tmp_path, "x"), {})["version"]
    for channel in ("../prod", "prod/x", "PROD", ""):
        with pytest.raises(RegistryError, match="refused"):
            reg.point("m", channel, v)
    for name in ("../x.onnx", "/etc/passwd", "a/../../b", "a\\b"):
        with pytest.raises(RegistryError, match="refused"):
            check_file_name(name)
        with pytest.raises(RegistryError, match="refused"):
            reg.publish("m", {name: tmp_path / "src-x" / "model.onnx"}, {})
    # a manifest pointing outside its directory is reported, never read
    d = reg.release_dir("m", v)
    (d / "manifest.json").chmod(0o644)
    man = json.loads((d / "manifest.json").read_text())
    man["files"]["../../secret"] = {"sha256": "0" * 64, "bytes": 1}
    (d / "manifest.json").write_text(json.dumps(man))
    assert any("'../../secret' refused" in p for p in reg.verify())
    res = run_cli(tmp_path, "registry", "show", "../evil@1.0.0", "--registry", str(tmp_path / "reg"))
    assert res.returncode == 1 and "refused" in res.stderr


def test_promotion_refused_without_valid_gate_result(release_project):
    root = release_project
    with pytest.raises(StaleInputsError, match="gate report missing"):
        promote(root)
    with pytest.raises(GateNonePassError):
        gate(root, "gate.max_latency_ms=0.01")
    with pytest.raises(GateNonePassError, match="no passing candidate"):
        promote(root)
    gate(root)
    with pytest.raises(RegistryError, match="did not pass"):
        write_measurements(root, accuracy={"finetuned_ort_int8_dynamic": 90.0})
        gate(root)
        promote(root, candidate="finetuned_ort_int8_dynamic")
    # hand-edited gate.json (a threshold loosened after the fact)
    path = root / "reports" / "gate.json"
    doc = read_json(path)
    doc["thresholds"]["max_accuracy_drop"] = 10.0
    write_json(path, doc)
    with pytest.raises(StaleInputsError, match="digest does not match"):
        promote(root)
    # files changed after the gate measured them
    gate(root)
    tamper(root / "models" / "exported" / "finetuned_ov_fp16" / "model.bin", offset=300)
    with pytest.raises(StaleInputsError, match="differs from what the gate measured"):
        promote(root)
    assert not (root / "registry" / MODEL).exists()


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
    assert man["lineage"]["git"] == {"commit": head, "dirty": False}
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
