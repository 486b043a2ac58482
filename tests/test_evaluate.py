"""Evaluate stage and the torch-free runtime it uses: accuracy in each runtime, carried failures.
(10,000-image memory bound: tests/reliability/test_load.py; corrupt model files: test_bad_params_and_files.py.)"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgeopt.io import read_json, write_json
from edgeopt.params import load_params
from edgeopt.paths import Paths
from edgeopt.runtime import load_model
from stages import evaluate, export

REPO = Path(__file__).resolve().parents[1]


def _exported(project: Path, *overrides: str):
    params = load_params(project / "params.yaml", ["export.parity_samples=64", *overrides])
    export.run(params, Paths(project))
    return params


def test_runtime_accuracy_matches_pytorch_and_drops_are_relative_to_same_runtime(tiny_project):
    import torch

    from edgeopt.models import load_checkpoint
    from edgeopt.training import Splits
    from edgeopt.training import evaluate as torch_evaluate

    paths = Paths(tiny_project)
    params = _exported(tiny_project, "evaluate.batch_size=100")
    metrics = evaluate.run(params, paths)
    model, _, _ = load_checkpoint(paths.checkpoint("baseline"))
    with torch.no_grad():
        ref = torch_evaluate(model, Splits.load(paths.prepared), "test")["accuracy"]
    assert ref > 80  # the fixture's baseline is trained; a broken runtime path would give ~10 %
    n_test = len(np.load(paths.prepared / "test" / "labels.npy"))
    assert metrics["split"] == "test" and metrics["images"] == n_test
    cands = metrics["candidates"]
    assert set(cands) == {"baseline_fp32_ort", "baseline_fp32_ov"}
    for name, runtime in (("baseline_fp32_ort", "onnxruntime"), ("baseline_fp32_ov", "openvino")):
        r = cands[name]
        assert r["status"] == "ok" and r["runtime"] == runtime and r["precision"] == "fp32"
        assert abs(r["accuracy"] - ref) <= 0.5
        assert r["baseline"] == name and r["drop"] == 0.0 and r["baseline_accuracy"] == r["accuracy"]
        assert 0 < r["gzip_bytes"] < r["file_bytes"]
        assert r["params"] > 0 and r["macs"] > 0 and r["unique_weights"] > 0 and r["sha256"]
    assert metrics["memory"]["anon_rss_peak_mb"] >= metrics["memory"]["anon_rss_start_mb"] > 0
    assert json.loads(paths.metrics("evaluate").read_text())["candidates"]["baseline_fp32_ov"]["accuracy"] == \
        cands["baseline_fp32_ov"]["accuracy"]


def test_failed_and_tampered_candidates_are_carried_with_reason(tiny_project):
    paths = Paths(tiny_project)
    params = _exported(tiny_project)
    doc = read_json(paths.candidates)
    doc["candidates"].append({**doc["candidates"][0], "name": "baseline_broken", "status": "failed",
                              "reason": "parity check failed: top-1 agreement 0.5 < 0.99"})
    write_json(paths.candidates, doc)
    onnx_file = paths.exported / "baseline_fp32_ort" / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:-10])  # truncated after export
    cands = evaluate.run(params, paths)["candidates"]
    assert cands["baseline_broken"]["status"] == "failed" and "agreement 0.5" in cands["baseline_broken"]["reason"]
    assert cands["baseline_broken"]["accuracy"] is None
    ort = cands["baseline_fp32_ort"]
    assert ort["status"] == "failed" and "changed since export" in ort["reason"] and "baseline_fp32_ort" in ort["reason"]
    assert ort["accuracy"] is None and ort["drop"] is None
    assert cands["baseline_fp32_ov"]["status"] == "ok"


def test_runtime_loops_over_a_model_exported_with_fixed_batch_1(tmp_path):
    import torch

    from edgeopt.models import build_model, model_config
    from edgeopt.onnx_export import export_onnx, onnx_to_ir

    torch.manual_seed(0)
    model = build_model(model_config("small_cnn", 10, 1, 0.5, True, 16)).eval()
    export_onnx(model, (1, 1, 16, 16), tmp_path / "b1.onnx", 17, dynamic_batch=False)
    onnx_to_ir(tmp_path / "b1.onnx", tmp_path / "b1.xml")
    x = np.random.default_rng(0).standard_normal((7, 1, 16, 16)).astype(np.float32)
    ref = model(torch.from_numpy(x)).detach().numpy()
    for f in ("b1.onnx", "b1.xml"):
        m = load_model(tmp_path / f, threads=1)
        assert m.fixed_batch == 1 and m.input_shape == [1, 1, 16, 16]
        out = m.predict(x)
        assert out.shape == (7, 10) and np.abs(out - ref).max() < 1e-4

