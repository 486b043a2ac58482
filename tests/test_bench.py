"""Latency benchmark: the pipeline stage, and `edgeopt bench` on a device where torch cannot be imported."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeopt.io import read_json, sha256_file
from edgeopt.params import load_params
from edgeopt.paths import Paths
from stages import bench, export

REPO = Path(__file__).resolve().parents[1]
LATENCY_KEYS = {"p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput_fps", "runs"}


def _exported(project: Path, *overrides: str):
    params = load_params(project / "params.yaml", ["export.parity_samples=32", "bench.runs=30", "bench.warmup=3",
                                                   *overrides])
    export.run(params, Paths(project))
    return params


def _assert_report(report: dict, names: set[str], runs: int) -> None:
    assert {"hardware", "runtimes", "profile", "candidates"} <= set(report)
    hw = report["hardware"]
    assert hw["cpu"] and hw["cpu"] != "unknown" and hw["cores"] >= 1 and hw["machine"] and hw["system"]
    import onnxruntime
    import openvino

    assert report["runtimes"] == {"onnxruntime": onnxruntime.__version__,
                                  "openvino": openvino.__version__.split("-")[0]}
    prof = report["profile"]
    assert prof["batch"] == 1 and prof["threads"] == 1 and prof["streams"] == 1 and prof["runs"] == runs
    assert set(report["candidates"]) == names
    for r in report["candidates"].values():
        assert r["status"] == "ok", r["reason"]
        assert LATENCY_KEYS <= set(r) and r["runs"] == runs
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["throughput_fps"] == pytest.approx(1000 / r["mean_ms"], rel=0.01)


def test_bench_stage_reports_every_candidate_and_pytorch_reference(tiny_project):
    paths = Paths(tiny_project)
    params = _exported(tiny_project, "target.name=edge-x86")
    report = bench.run(params, paths)
    _assert_report(report, {"baseline_fp32_ort", "baseline_fp32_ov"}, runs=30)
    assert report["profile"]["name"] == "edge-x86" and report["profile"]["warmup"] == 3
    doc = read_json(paths.candidates)
    for c in doc["candidates"]:
        assert report["candidates"][c["name"]]["sha256"] == c["sha256"]
        assert report["candidates"][c["name"]]["runtime"] == c["runtime"]
    ref = report["pytorch_reference"]["baseline"]
    assert ref["status"] == "ok" and ref["threads"] == 1 and ref["runs"] == 30 and 0 < ref["p50_ms"] <= ref["p99_ms"]
    assert read_json(paths.metrics("bench"))["candidates"].keys() == report["candidates"].keys()


def test_bench_time_budget_and_failed_candidates(tiny_project):
    paths = Paths(tiny_project)
    params = _exported(tiny_project, "bench.time_budget_s=0.3", "bench.pytorch_reference=false",
                       "export.max_abs_diff=1e-12", "export.min_agreement=0")
    doc = read_json(paths.candidates)  # every FP32 candidate failed parity (impossible threshold) ...
    assert {c["status"] for c in doc["candidates"]} == {"failed"}
    with pytest.raises(Exception, match="no candidate passed export"):
        bench.run(params, paths)
    # ... a passing one is timed for the budget, the failed one is listed with its reason, not timed
    doc["candidates"][0].update(status="ok", reason=None)
    (paths.candidates).write_text(json.dumps(doc))
    report = bench.run(params, paths)
    ok, failed = doc["candidates"][0]["name"], doc["candidates"][1]["name"]
    r = report["candidates"][ok]
    assert r["status"] == "ok" and r["runs"] > 10 and 0.2 < r["runs"] * r["mean_ms"] / 1000 < 0.5
    assert report["candidates"][failed]["status"] == "failed" and "p50_ms" not in report["candidates"][failed]
    assert "failed at export" in report["candidates"][failed]["reason"]
    assert "pytorch_reference" not in report


def _torch_blocked_env(tmp_path: Path) -> dict[str, str]:
    """A sitecustomize that makes `import torch` fail, the way it fails on a device without torch."""
    block = tmp_path / "block_torch"
    block.mkdir(exist_ok=True)
    (block / "sitecustomize.py").write_text(
        "import sys\nfor _m in ('torch', 'torchvision', 'torch_pruning', 'nncf'):\n    sys.modules[_m] = None\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(block), str(REPO)]), "EDGEOPT_NO_PROGRESS": "1"}


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_device_bench_runs_without_torch_and_without_params(tiny_project, tmp_path):
    paths = Paths(tiny_project)
    _exported(tiny_project)
    env = _torch_blocked_env(tmp_path)
    device = tmp_path / "device"
    device.mkdir()  # no params.yaml, no project: only the pulled model files
    blocked = _run(["-c", "import torch"], env, device)
    assert blocked.returncode != 0 and "ModuleNotFoundError" in blocked.stderr  # the block works
    imports = _run(["-c", "import sys, edgeopt.runtime, edgeopt.cli, edgeopt.cli.stage_bench; "
                          "edgeopt.cli.build_parser(); assert 'torch' not in sys.modules or not sys.modules['torch']"],
                   env, device)
    assert imports.returncode == 0, imports.stderr

    xml = paths.exported / "baseline_fp32_ov" / "model.xml"
    onnx_file = paths.exported / "baseline_fp32_ort" / "model.onnx"
    out = device / "device.json"
    proc = _run(["-m", "edgeopt.cli", "bench", "--model", str(xml), "--model", str(onnx_file), "--threads", "1",
                 "--runs", "25", "--warmup", "2", "--profile", "rpi5", "--out", str(out)], env, device)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    _assert_report(report, {"baseline_fp32_ov", "baseline_fp32_ort"}, runs=25)
    assert report["profile"]["name"] == "rpi5"
    assert report["candidates"]["baseline_fp32_ov"]["sha256"]["model.bin"] == sha256_file(xml.with_suffix(".bin"))

    # the same from the candidates file of a pulled copy: same names and hashes as the pipeline's
    proc = _run(["-m", "edgeopt.cli", "bench", "--candidates", str(paths.candidates), "--runs", "20",
                 "--out", str(out)], env, device)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    _assert_report(report, {"baseline_fp32_ov", "baseline_fp32_ort"}, runs=20)
    assert report["candidates"]["baseline_fp32_ort"]["sha256"] == \
        {"baseline_fp32_ort/model.onnx": sha256_file(onnx_file)}

    # a --model row named like a candidate that failed at export keeps a name of its own: its failure counts
    doc = json.loads(paths.candidates.read_text())
    doc["candidates"].append({"name": "broken", "status": "failed", "reason": "export failed"})
    cands = paths.candidates.with_name("with-broken.json")
    cands.write_text(json.dumps(doc))
    corrupt = device / "broken" / "model.onnx"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"not a model")
    proc = _run(["-m", "edgeopt.cli", "bench", "--candidates", str(cands), "--model", str(corrupt), "--runs", "5",
                 "--out", str(out)], env, device)
    rows = json.loads(out.read_text())["candidates"]
    assert proc.returncode == 1 and rows["broken_onnxruntime"]["status"] == "failed", proc.stderr
    assert rows["broken"]["reason"].startswith("not benchmarked: failed at export")
    assert rows["baseline_fp32_ort"]["status"] == "ok"

    # a corrupt model: exit 1, the message names the file; a tampered pulled copy is refused
    onnx_file.write_bytes(onnx_file.read_bytes()[:3000])
    proc = _run(["-m", "edgeopt.cli", "bench", "--model", str(onnx_file), "--runs", "5"], env, device)
    assert proc.returncode == 1 and str(onnx_file) in proc.stderr and "corrupt" in proc.stderr
    proc = _run(["-m", "edgeopt.cli", "bench", "--candidates", str(paths.candidates), "--runs", "5",
                 "--out", str(out)], env, device)
    assert proc.returncode == 1
    bad = json.loads(out.read_text())["candidates"]["baseline_fp32_ort"]
    assert bad["status"] == "failed" and "differ from the sha256" in bad["reason"]
    proc = _run(["-m", "edgeopt.cli", "bench", "--model", str(device / "missing.xml")], env, device)
    assert proc.returncode == 1 and "missing.xml" in proc.stderr


def test_stage_mode_rejects_device_flags(tiny_project):
    proc = subprocess.run([sys.executable, "-m", "edgeopt.cli", "bench", "--root", str(tiny_project),
                           "--params", str(tiny_project / "params.yaml"), "--runs", "5"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--set bench.runs" in proc.stderr
