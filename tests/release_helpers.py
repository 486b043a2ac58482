"""Test helpers for gate / registry / predict / report: a project with real exported candidates and
hand-written (but hash-consistent) evaluate / bench metrics, independent of the export/evaluate/bench stages."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from edgeopt.io import read_json, sha256_file, write_json

REPO = Path(__file__).resolve().parents[1]

# name -> (source, runtime, precision, format)
CANDIDATES = {
    "baseline_fp32_ov": ("baseline", "openvino", "fp32", "openvino_ir"),
    "baseline_fp32_ort": ("baseline", "onnxruntime", "fp32", "onnx"),
    "finetuned_ov_fp16": ("finetuned", "openvino", "fp16", "openvino_ir"),
    "finetuned_ort_int8_dynamic": ("finetuned", "onnxruntime", "int8", "onnx"),
}
# Hand-set numbers: accuracy %, p90 ms (p50 = 0.8 * p90). Defaults: everything passes, fp16 is the fastest.
ACCURACY = {"baseline_fp32_ov": 95.0, "baseline_fp32_ort": 95.0, "finetuned_ov_fp16": 94.8,
            "finetuned_ort_int8_dynamic": 94.5}
LATENCY = {"baseline_fp32_ov": 0.40, "baseline_fp32_ort": 0.50, "finetuned_ov_fp16": 0.30,
           "finetuned_ort_int8_dynamic": 0.35}


def export_candidates(root: Path) -> None:
    """Real model files under models/exported/ from models/baseline.pt, plus candidates.json."""
    from onnxruntime.quantization import quantize_dynamic

    from edgeopt.arrays import load_meta
    from edgeopt.models import load_checkpoint
    from edgeopt.onnx_export import export_onnx, onnx_to_ir

    exported = root / "models" / "exported"
    model, cfg, _ = load_checkpoint(root / "models" / "baseline.pt")
    meta = load_meta(root / "data" / "prepared")
    shape = (meta["channels"], meta["image_size"], meta["image_size"])
    onnx_path = export_onnx(model, shape, exported / "baseline_fp32_ort" / "model.onnx")
    onnx_to_ir(onnx_path, exported / "baseline_fp32_ov" / "model.xml")
    onnx_to_ir(onnx_path, exported / "finetuned_ov_fp16" / "model.xml", compress_fp16=True)
    (exported / "finetuned_ort_int8_dynamic").mkdir(parents=True, exist_ok=True)
    quantize_dynamic(str(onnx_path), str(exported / "finetuned_ort_int8_dynamic" / "model.onnx"))
    cands = []
    for name, (source, runtime, precision, fmt) in CANDIDATES.items():
        files = ([f"{name}/model.xml", f"{name}/model.bin"] if runtime == "openvino" else [f"{name}/model.onnx"])
        stages = ["train"] if source == "baseline" else ["train", "prune", "finetune", "quantize"]
        cands.append({"name": name, "source": source, "stages": stages, "technique": f"test {precision}",
                      "precision": precision, "runtime": runtime, "format": fmt, "files": files,
                      "primary": files[0], "sha256": {f: sha256_file(exported / f) for f in files},
                      "params": 1000, "nonzero_params": 900, "macs": 5000, "unique_weights": 300,
                      "parity": {"agreement": 1.0, "passed": True}, "status": "ok", "reason": None})
    write_json(exported / "candidates.json", {
        "baselines": {"openvino": "baseline_fp32_ov", "onnxruntime": "baseline_fp32_ort"},
        "input": {"shape": [1, *shape], "layout": "NCHW", "dtype": "float32", "mean": meta["mean"],
                  "std": meta["std"], "color_order": meta["color_order"], "image_size": meta["image_size"],
                  "classes": meta["classes"]},
        "candidates": cands})


def write_measurements(root: Path, accuracy: dict | None = None, latency: dict | None = None,
                       path: Path | None = None) -> None:
    """metrics/evaluate.json and metrics/bench.json (or only a latency report at `path`) for the candidates."""
    accuracy = {**ACCURACY, **(accuracy or {})}
    latency = {**LATENCY, **(latency or {})}
    doc = read_json(root / "models" / "exported" / "candidates.json")
    base = doc["baselines"]
    ev, bench = {}, {}
    for c in doc["candidates"]:
        name, rt = c["name"], c["runtime"]
        if c["status"] != "ok":
            ev[name] = {"runtime": rt, "accuracy": None, "drop": None, "status": "failed", "reason": c["reason"]}
            continue
        size = sum((root / "models" / "exported" / f).stat().st_size for f in c["files"])
        ev[name] = {"runtime": rt, "precision": c["precision"], "accuracy": accuracy[name], "baseline": base[rt],
                    "baseline_accuracy": accuracy[base[rt]], "drop": round(accuracy[base[rt]] - accuracy[name], 4),
                    "file_bytes": size, "gzip_bytes": size // 2, "params": 1000, "nonzero_params": 900, "macs": 5000,
                    "unique_weights": 300, "sha256": c["sha256"], "status": "ok", "reason": None}
        p90 = latency[name]
        bench[name] = {"runtime": rt, "p50_ms": round(0.8 * p90, 4), "p90_ms": p90, "p99_ms": 1.5 * p90,
                       "mean_ms": 0.85 * p90, "throughput_fps": round(1000 / (0.85 * p90), 1), "runs": 20,
                       "sha256": c["sha256"], "status": "ok", "reason": None}
    bench_doc = {"hardware": {"cpu": "test-cpu", "cores": 2, "machine": "x86_64", "system": "Linux"},
                 "runtimes": {"openvino": "2026.4.1", "onnxruntime": "1.31.1"},
                 "profile": {"name": "cpu-x86-avx512", "threads": 1, "streams": 1, "batch": 1, "warmup": 2,
                             "runs": 20},
                 "candidates": bench, "pytorch_reference": {"baseline": {"p50_ms": 1.0, "p90_ms": 1.2}}}
    if path is not None:
        write_json(path, bench_doc)
        return
    write_json(root / "metrics" / "evaluate.json", {"split": "test", "images": 360, "candidates": ev})
    write_json(root / "metrics" / "bench.json", bench_doc)
    write_stage_records(root)


def write_stage_records(root: Path, overrides: list[str] | None = None) -> None:
    """`ran_with` in metrics/<stage>.json of every stage upstream of the gate, as the stages record it: the
    params of the project's params.yaml and its data, which promote compares with now."""
    from edgeopt.params import load_params
    from edgeopt.pipeline import closure, load_pipeline
    from edgeopt.stage import ParamsView

    params = load_params(root / "params.yaml", overrides)
    specs = load_pipeline(root)
    data_hash = read_json(root / "data" / "prepared" / "meta.json").get("content_hash")
    for stage in closure(specs, ["gate"])[:-1]:
        path = root / "metrics" / f"{stage}.json"
        doc = read_json(path) if path.exists() else {}
        doc["ran_with"] = {"params": ParamsView(params, specs[stage].params, stage).declared_values(),
                           "data_hash": data_hash, "git": {"commit": None, "dirty": None}}
        write_json(path, doc)


def run_cli(root: Path, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m edgeopt.cli ARGS` in a subprocess, run from the project dir (as CI does)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "edgeopt.cli", *args], cwd=root, capture_output=True,
                          text=True, env=full_env, timeout=timeout)


def gate_json(root: Path) -> dict:
    return json.loads((root / "reports" / "gate.json").read_text())


# --- fixtures (import them into a test module: `from release_helpers import release_project, ...`) ----------
import shutil  # noqa: E402

import pytest  # noqa: E402

_TEMPLATE: dict[str, Path] = {}


@pytest.fixture(scope="session")
def release_template(_tiny_project_template, tmp_path_factory) -> Path:
    """Built once per process, even when several test modules import this fixture."""
    if "root" not in _TEMPLATE:
        root = tmp_path_factory.mktemp("release_template") / "proj"
        shutil.copytree(_tiny_project_template, root)
        export_candidates(root)
        write_measurements(root)
        _TEMPLATE["root"] = root
    return _TEMPLATE["root"]


@pytest.fixture()
def release_project(release_template, tmp_path) -> Path:
    """tiny_project + models/exported (4 real candidates) + metrics/evaluate.json + metrics/bench.json."""
    dst = tmp_path / "proj"
    shutil.copytree(release_template, dst)
    return dst
