"""Export stage: ONNX + IR per FP32 checkpoint, quantized candidates copied in, parity against PyTorch."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from edgeopt.arrays import load_meta, normalize, open_split
from edgeopt.io import read_json, sha256_file, write_json
from edgeopt.models import CheckpointError, build_model, load_checkpoint, model_config, save_checkpoint
from edgeopt.params import load_params
from edgeopt.paths import Paths
from edgeopt.stats import count_macs, count_params
from stages import export


def _params(project, *overrides):
    return load_params(project / "params.yaml", ["export.parity_samples=128", *overrides])


def _student(paths: Paths) -> None:
    """An extra (untrained, narrower) FP32 source, so more than one checkpoint is exported."""
    torch.manual_seed(1)
    cfg = model_config("small_cnn", 10, 1, 0.5, True, 16)
    save_checkpoint(paths.checkpoint("student"), build_model(cfg), cfg, {"stages": ["train", "distill"]})


def test_fp32_exports_pass_checker_and_agree_with_pytorch(tiny_project):
    import onnx

    paths = Paths(tiny_project)
    _student(paths)
    t0 = time.perf_counter()
    metrics = export.run(_params(tiny_project), paths)
    took = time.perf_counter() - t0
    doc = read_json(paths.candidates)
    by_name = {c["name"]: c for c in doc["candidates"]}
    assert sorted(by_name) == ["baseline_fp32_ort", "baseline_fp32_ov", "student_fp32_ort", "student_fp32_ov"]
    assert doc["baselines"] == {"openvino": "baseline_fp32_ov", "onnxruntime": "baseline_fp32_ort"}
    meta = load_meta(paths.prepared)
    assert doc["input"]["shape"] == [1, 1, 16, 16] and doc["input"]["mean"] == meta["mean"]
    assert doc["input"]["classes"] == meta["classes"] and doc["input"]["layout"] == "NCHW"

    onnx.checker.check_model(onnx.load(str(paths.exported / "baseline_fp32_ort/model.onnx")), full_check=True)
    model, _, _ = load_checkpoint(paths.checkpoint("baseline"))
    for c in doc["candidates"]:
        assert c["status"] == "ok", c["reason"]
        p = c["parity"]
        assert p["samples"] == 128 and p["agreement"] >= 0.99 and p["max_abs_diff"] <= 1e-3 and p["passed"]
        assert set(c["sha256"]) == set(c["files"])
        for rel, digest in c["sha256"].items():
            assert sha256_file(paths.exported / rel) == digest
        assert c["precision"] == "fp32" and c["stages"][-1] == "export"
    base = by_name["baseline_fp32_ort"]
    assert base["params"] == count_params(model) and base["macs"] == count_macs(model, (1, 16, 16))
    assert base["stages"] == ["train", "export"]
    assert by_name["student_fp32_ov"]["stages"] == ["train", "distill", "export"]
    assert by_name["student_fp32_ov"]["params"] < base["params"]  # width 0.5
    assert by_name["baseline_fp32_ov"]["files"] == ["baseline_fp32_ov/model.xml", "baseline_fp32_ov/model.bin"]
    # only the declared files are shipped: no scratch ONNX left next to the IR
    shipped = {str(p.relative_to(paths.exported)) for p in paths.exported.rglob("*") if p.is_file()}
    assert shipped == {f for c in doc["candidates"] for f in c["files"]} | {"candidates.json"}

    # independent parity: the exported ONNX in onnxruntime vs PyTorch on validation images
    import onnxruntime as ort

    images, _ = open_split(paths.prepared, "val")
    x = normalize(images[:64], meta["mean"], meta["std"])
    sess = ort.InferenceSession(str(paths.exported / "baseline_fp32_ort/model.onnx"))
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    ref = model(torch.from_numpy(x)).detach().numpy()
    assert np.abs(got - ref).max() < 1e-4 and (got.argmax(1) == ref.argmax(1)).all()

    assert metrics["ok"] == 4 and metrics["failed"] == {}
    assert json.loads(paths.metrics("export").read_text())["parity"]["baseline_fp32_ov"]["passed"] is True
    assert took < 30  # budget: 20 s for ~16 candidates on an idle 2-core machine; slack for a busy CI


def test_impossible_parity_threshold_marks_fp32_candidates_failed(tiny_project):
    paths = Paths(tiny_project)
    export.run(_params(tiny_project, "export.max_abs_diff=1e-12"), paths)
    doc = read_json(paths.candidates)
    for c in doc["candidates"]:
        assert c["status"] == "failed"
        assert "max |logit diff|" in c["reason"] and "models/baseline.pt" in c["reason"]
        assert c["parity"]["passed"] is False and c["parity"]["max_abs_diff"] > 1e-12


def test_target_runtime_restricts_candidates(tiny_project):
    paths = Paths(tiny_project)
    params = _params(tiny_project, "target.runtime=openvino", "quantize.modes=[ov_int8]")
    export.run(params, paths)
    doc = read_json(paths.candidates)
    assert [c["name"] for c in doc["candidates"]] == ["baseline_fp32_ov"]
    assert doc["baselines"] == {"openvino": "baseline_fp32_ov"}
    assert not list(paths.exported.rglob("*.onnx"))


def test_missing_baseline_is_a_clear_error(tiny_project):
    paths = Paths(tiny_project)
    paths.checkpoint("baseline").unlink()
    with pytest.raises(CheckpointError, match="baseline.pt: checkpoint not found"):
        export.run(_params(tiny_project), paths)
    assert not paths.exported.exists()  # nothing half-written


def _make_quantized(paths: Paths) -> None:
    """A models/quantized/ as the quantize stage writes it: NNCF INT8 IR, FP16 IR, an ORT model exported from
    weights altered afterwards (must fail parity), and a mode that failed in quantize."""
    import nncf
    import openvino as ov

    from edgeopt.onnx_export import export_onnx, onnx_to_ir

    q = paths.quantized
    model, cfg, _ = load_checkpoint(paths.checkpoint("baseline"))
    save_checkpoint(paths.checkpoint("clustered"), model, cfg, {"stages": ["train", "prune", "finetune", "cluster"]})
    export_onnx(model, (1, 1, 16, 16), q / "work.onnx", 17)
    onnx_to_ir(q / "work.onnx", q / "clustered_ov_fp16/model.xml", compress_fp16=True)
    meta = load_meta(paths.prepared)
    images, _ = open_split(paths.prepared, "train")
    calib = nncf.Dataset(list(normalize(images[:100], meta["mean"], meta["std"])[:, None]))
    int8 = nncf.quantize(ov.Core().read_model(str(q / "clustered_ov_fp16/model.xml")), calib, subset_size=100)
    ov.save_model(int8, str(q / "clustered_ov_int8/model.xml"), compress_to_fp16=False)
    broken = build_model(cfg)
    broken.load_state_dict(model.state_dict())
    with torch.no_grad():
        broken.classifier.weight.mul_(-1.0)  # weights altered after the source checkpoint was written
    export_onnx(broken, (1, 1, 16, 16), q / "clustered_ort_int8_static/model.onnx", 17)
    (q / "work.onnx").unlink()

    def entry(name, mode, runtime, files, precision="int8", status="ok", reason=None):
        return {"name": name, "source": "clustered", "source_checkpoint": "models/clustered.pt", "mode": mode,
                "technique": mode, "precision": precision, "runtime": runtime,
                "format": "onnx" if runtime == "onnxruntime" else "openvino_ir", "files": files,
                "primary": files[0] if files else None, "status": status, "reason": reason, "details": {}}

    ir = lambda n: [f"{n}/model.xml", f"{n}/model.bin"]  # noqa: E731
    write_json(q / "index.json", {"candidates": [
        entry("clustered_ov_int8", "ov_int8", "openvino", ir("clustered_ov_int8")),
        entry("clustered_ov_fp16", "ov_fp16", "openvino", ir("clustered_ov_fp16"), precision="fp16"),
        entry("clustered_ort_int8_static", "ort_int8_static", "onnxruntime",
              ["clustered_ort_int8_static/model.onnx"]),
        entry("clustered_ov_int8_ac", "ov_int8_ac", "openvino", [], status="failed",
              reason="accuracy-controlled INT8 could not meet max_drop"),
    ]})


def test_quantized_candidates_are_copied_checked_and_failures_kept(tiny_project):
    paths = Paths(tiny_project)
    _make_quantized(paths)
    metrics = export.run(_params(tiny_project), paths)
    doc = read_json(paths.candidates)
    by_name = {c["name"]: c for c in doc["candidates"]}
    assert len(by_name) == 8  # baseline + clustered FP32 x 2 runtimes, 4 from the index
    base = by_name["clustered_fp32_ov"]

    int8 = by_name["clustered_ov_int8"]
    assert int8["status"] == "ok", int8["reason"]
    assert int8["parity"]["agreement"] >= 0.9 and int8["parity"]["max_abs_diff"] > 0
    assert int8["stages"] == ["train", "prune", "finetune", "cluster", "quantize"]
    # statistics are those of the source model, quantized layers included
    for k in ("params", "nonzero_params", "macs", "unique_weights"):
        assert int8[k] == base[k] and int8[k] > 0
    for rel, digest in int8["sha256"].items():  # self-contained copy
        assert sha256_file(paths.exported / rel) == digest == sha256_file(paths.quantized / rel)

    fp16 = by_name["clustered_ov_fp16"]
    assert fp16["status"] == "ok" and fp16["parity"]["max_abs_diff_limit"] is None  # top-1 rule only
    assert fp16["parity"]["agreement"] >= 0.99

    broken = by_name["clustered_ort_int8_static"]
    assert broken["status"] == "failed" and "top-1 agreement" in broken["reason"]
    assert broken["parity"]["agreement"] < 0.9

    carried = by_name["clustered_ov_int8_ac"]
    assert carried["status"] == "failed" and "could not meet max_drop" in carried["reason"]
    assert set(metrics["failed"]) == {"clustered_ort_int8_static", "clustered_ov_int8_ac"}

    # target.runtime=onnxruntime: OpenVINO candidates of the index are skipped, not exported
    export.run(_params(tiny_project, "target.runtime=onnxruntime", "quantize.modes=[ort_int8_static]",
                       "distill.quantize_modes=[]"), paths)
    names = [c["name"] for c in read_json(paths.candidates)["candidates"]]
    assert names == ["baseline_fp32_ort", "clustered_fp32_ort", "clustered_ort_int8_static"]
    assert not list(paths.exported.rglob("*.xml"))
