"""Issue 13, class 2: every path a record names (candidates.json, gate.json, a release manifest and its `primary`)
must resolve inside its directory. A crafted record with '..', an absolute path or a symlink out is refused before
anything is read, copied or run: the gate stops (exit 4), promote copies nothing, evaluate and bench fail only that
candidate, `verify` reports a release whose primary model is not one of its verified files and predict refuses it.
Every record here is made self-consistent (hashes recomputed), so only the path check can catch it."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from tests.release_helpers import release_project, release_template, run_cli, write_measurements  # noqa: F401

from edgeopt.errors import RegistryError, StaleInputsError
from edgeopt.io import read_json, sha256_file, sha256_json, write_json
from edgeopt.params import load_params
from edgeopt.paths import Paths
from edgeopt.registry import Registry, verify_dir

FP16 = "finetuned_ov_fp16"


def gate(root, *overrides):
    from stages.gate import run

    return run(load_params(root / "params.yaml", list(overrides)), Paths(root))


def promote(root):
    from stages.promote import run

    return run(load_params(root / "params.yaml"), Paths(root))


def edit_candidate(root: Path, name: str, **fields) -> None:
    """Edit one candidate of candidates.json; sha256 recomputed for the files it names, measurements rewritten
    with those hashes: a self-consistent forgery."""
    path = root / "models" / "exported" / "candidates.json"
    doc = read_json(path)
    c = next(c for c in doc["candidates"] if c["name"] == name)
    c.update(fields)
    exported = root / "models" / "exported"
    c["sha256"] = {f: sha256_file(f if os.path.isabs(f) else exported / f) for f in c["files"]}
    write_json(path, doc)
    write_measurements(root)


def outside_copy(root: Path, tmp_path: Path) -> Path:
    """The fp16 candidate's files copied outside the project (what a symlink would point at)."""
    out = tmp_path / "outside"
    shutil.copytree(root / "models" / "exported" / FP16, out)
    return out


@pytest.mark.parametrize("case", ["dotdot_file", "absolute_file", "symlinked_candidate_dir", "symlinked_file",
                                  "primary_not_a_file", "dotdot_primary"])
def test_gate_refuses_candidate_files_outside_models_exported(release_project, tmp_path, case):
    root = release_project
    exported = root / "models" / "exported"
    if case == "dotdot_file":
        edit_candidate(root, FP16, files=["../../params.yaml"], primary="../../params.yaml")
        message = "file '../../params.yaml' refused: must be a relative path inside"
    elif case == "absolute_file":
        secret = tmp_path / "secret.onnx"
        secret.write_bytes(b"not yours")
        edit_candidate(root, FP16, files=[str(secret)], primary=str(secret))
        message = f"file '{secret}' refused: must be a relative path inside"
    elif case == "symlinked_candidate_dir":
        out = outside_copy(root, tmp_path)
        shutil.rmtree(exported / FP16)
        (exported / FP16).symlink_to(out)
        message = f"file '{FP16}/model.xml' refused: resolves to {out}/model.xml, outside"
    elif case == "symlinked_file":
        out = outside_copy(root, tmp_path)
        (exported / FP16 / "model.bin").unlink()
        (exported / FP16 / "model.bin").symlink_to(out / "model.bin")
        message = f"file '{FP16}/model.bin' refused: resolves to {out}/model.bin, outside"
    elif case == "primary_not_a_file":
        edit_candidate(root, FP16, primary="finetuned_ort_int8_dynamic/model.onnx")
        message = f"primary file 'finetuned_ort_int8_dynamic/model.onnx' is not one of its files"
    else:
        edit_candidate(root, FP16, primary="../../params.yaml")
        message = "primary file '../../params.yaml' is not one of its files"
    with pytest.raises(StaleInputsError, match="models/exported/candidates.json: candidate 'finetuned_ov_fp16': "
                                               + message.replace("(", r"\(").replace(".", r"\.")):
        gate(root)
    assert read_json(root / "reports" / "gate.json")["status"] == "stale"
    res = run_cli(root, "promote")
    assert res.returncode == 4 and "Traceback" not in res.stderr
    assert not (root / "registry").exists()


def _forge_gate(root: Path, fn) -> None:
    path = root / "reports" / "gate.json"
    doc = read_json(path)
    fn(doc)
    doc.pop("digest")
    doc["digest"] = sha256_json(doc)
    write_json(path, doc)


def test_forged_gate_report_cannot_make_promote_copy_an_outside_file(release_project, tmp_path):
    root = release_project
    gate(root)
    secret = tmp_path / "id_rsa"
    secret.write_bytes(b"-----BEGIN PRIVATE KEY-----")

    def point_at_secret(doc):
        row = next(r for r in doc["rows"] if r["name"] == doc["selected"])
        row["files"] = [f"../../../{secret.name}", row["files"][0]]
        doc["sha256"][row["name"]] = {f: sha256_file(root / "models" / "exported" / f) for f in row["files"]}
    _forge_gate(root, point_at_secret)
    with pytest.raises(StaleInputsError, match=r"file of finetuned_ov_fp16 '\.\./\.\./\.\./id_rsa' refused: must be "
                                               r"a relative path inside .*models/exported"):
        promote(root)
    assert not (root / "registry").exists()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", ["device_file", "absolute_input", "fifo_input", "device_report_not_an_input",
                                  "report_is_a_list", "rows_not_a_list", "sha256_a_list"])
def test_forged_gate_report_inputs_refused_without_reading_or_hanging(release_project, case):
    root = release_project
    gate(root)
    if case == "report_is_a_list":
        (root / "reports" / "gate.json").write_text("[1, 2, 3]")
        message = "not a gate report (expected a JSON object)"
    elif case == "fifo_input":
        os.mkfifo(root / "metrics" / "pipe.json")  # hashing it would block forever
        _forge_gate(root, lambda d: d["inputs"].update({"metrics/pipe.json": "0" * 64}))
        message = "metrics/pipe.json: changed or missing since the gate ran"
    else:
        edits = {
            "device_file": lambda d: d["inputs"].update({"/dev/zero": "0" * 64}),  # never ends if read
            "absolute_input": lambda d: d["inputs"].update({"/etc/hostname": "0" * 64}),
            "device_report_not_an_input": lambda d: d["latency_source"].update(path="/dev/zero", device_report=True),
            "rows_not_a_list": lambda d: d.update(rows={"a": 1}),
            "sha256_a_list": lambda d: d.update(sha256=[1]),
        }
        _forge_gate(root, edits[case])
        message = {"device_file": "input '/dev/zero' refused: must be a relative path inside",
                   "absolute_input": "input '/etc/hostname' refused",
                   "device_report_not_an_input": "latency report '/dev/zero' is not among the gate's inputs",
                   "rows_not_a_list": "malformed gate report", "sha256_a_list": "malformed gate report"}[case]
    with pytest.raises(StaleInputsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        promote(root)
    assert not (root / "registry").exists()


def test_evaluate_and_bench_fail_only_the_candidate_with_an_escaping_path(release_project, tmp_path):
    from stages.evaluate import run as evaluate

    root = release_project
    outside = tmp_path / "evil.onnx"
    shutil.copy(root / "models" / "exported" / "finetuned_ort_int8_dynamic" / "model.onnx", outside)
    doc = read_json(root / "models" / "exported" / "candidates.json")
    c = next(c for c in doc["candidates"] if c["name"] == "finetuned_ort_int8_dynamic")
    c["primary"], c["files"] = "../../../evil.onnx", ["../../../evil.onnx"]
    c["sha256"] = {"../../../evil.onnx": sha256_file(outside)}
    write_json(root / "models" / "exported" / "candidates.json", doc)
    metrics = evaluate(load_params(root / "params.yaml"), Paths(root))
    row = metrics["candidates"]["finetuned_ort_int8_dynamic"]
    assert row["status"] == "failed" and row["accuracy"] is None
    assert "file '../../../evil.onnx' refused: must be a relative path inside" in row["reason"]
    assert all(r["status"] == "ok" and r["accuracy"] > 80 for n, r in metrics["candidates"].items()
               if n != "finetuned_ort_int8_dynamic")
    # device-side bench of the same candidates.json: that candidate is failed with the reason, the others timed,
    # and the exit is 1: a record pointing outside its directory is a failure a CI step must see
    res = run_cli(root, "bench", "--candidates", "models/exported/candidates.json", "--runs", "3", "--warmup", "0",
                  "--out", str(tmp_path / "device.json"))
    assert res.returncode == 1, res.stderr
    report = read_json(tmp_path / "device.json")["candidates"]
    assert report["finetuned_ort_int8_dynamic"]["status"] == "failed"
    assert "primary file '../../../evil.onnx' refused" in report["finetuned_ort_int8_dynamic"]["reason"]
    assert sorted(n for n, r in report.items() if r["status"] == "ok") == [
        "baseline_fp32_ort", "baseline_fp32_ov", "finetuned_ov_fp16"]


# --- release manifests ---------------------------------------------------------------------------------------
def _release(tmp_path: Path) -> tuple[Registry, Path]:
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.onnx").write_bytes(b"the model")
    reg = Registry(tmp_path / "registry")
    reg.publish("m", {"model.onnx": src / "model.onnx"}, {"primary": "model.onnx", "runtime": "onnxruntime"})
    return reg, reg.release_dir("m", "0.0.1")


def _rewrite_manifest(d: Path, fn) -> None:
    man = d / "manifest.json"
    man.chmod(0o644)
    doc = json.loads(man.read_text())
    fn(doc)
    man.write_text(json.dumps(doc))


@pytest.mark.parametrize("primary", ["../../evil.onnx", "/tmp/evil.onnx", "other.onnx", None, ["model.onnx"]])
def test_pulled_release_whose_primary_is_not_a_verified_file_fails_verify_and_predict(tmp_path, primary):
    reg, _ = _release(tmp_path)
    pulled = tmp_path / "rel"
    reg.pull("m", pulled)
    (tmp_path / "evil.onnx").write_bytes(b"runs anything")
    _rewrite_manifest(pulled, lambda d: d.update(primary=primary))
    marker = read_json(pulled / ".edgeopt-pull.json")  # a careful forger updates the marker's hash too
    marker["manifest_sha256"] = sha256_file(pulled / "manifest.json")
    write_json(pulled / ".edgeopt-pull.json", marker)
    problems = verify_dir(pulled, pulled=True)
    assert problems == [f"{pulled}/manifest.json: primary file {primary!r} is not one of the verified files of "
                        f"the release"]
    res = run_cli(tmp_path, "predict", str(pulled), str(tmp_path / "evil.onnx"))
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "release fails verification, refusing to run it" in res.stderr and "primary file" in res.stderr


def test_publish_refuses_a_primary_outside_the_release_files(tmp_path):
    reg, _ = _release(tmp_path)
    with pytest.raises(RegistryError, match=r"m: primary file '\.\./x\.onnx' is not one of the release files"):
        reg.publish("m", {"model.onnx": tmp_path / "src" / "model.onnx"}, {"primary": "../x.onnx"}, version="1.0.0")
    assert reg.versions("m") == ["0.0.1"]


def test_symlinked_directory_inside_a_release_is_reported(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "w.bin").write_bytes(b"weights")
    reg = Registry(tmp_path / "registry")
    reg.publish("m", {"sub/w.bin": src / "sub" / "w.bin"}, {})
    d = reg.release_dir("m", "0.0.1")
    d.chmod(0o755)
    (d / "sub").chmod(0o755)
    shutil.rmtree(d / "sub")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "w.bin").write_bytes(b"weights")  # same bytes: only the path check can tell
    (d / "sub").symlink_to(outside)
    assert reg.verify() == [
        f"{d}/manifest.json: file 'sub/w.bin' refused: resolves to {outside}/w.bin, outside {d} (a symlink?)",
        f"{d}/sub: unexpected file, not in the manifest"]
    with pytest.raises(RegistryError, match="fails verification, not pulled"):
        reg.pull("m", tmp_path / "rel")
