"""Evaluate stage and the torch-free runtime it uses: accuracy in each runtime, bounded memory, clear errors."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeopt.io import read_json, write_json
from edgeopt.params import load_params
from edgeopt.paths import Paths
from edgeopt.runtime import RuntimeModelError, load_model
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


def _big_test_split(project: Path, n: int) -> None:
    """Replace the test split by n synthetic 32x32 RGB images, written straight to disk (memmap)."""
    test = project / "data" / "prepared" / "test"
    rng = np.random.default_rng(0)
    images = np.lib.format.open_memmap(test / "images.npy", mode="w+", dtype=np.uint8, shape=(n, 32, 32, 3))
    for s in range(0, n, 1000):
        images[s:s + 1000] = rng.integers(0, 256, (min(1000, n - s), 32, 32, 3), dtype=np.uint8)
    images.flush()
    del images
    np.save(test / "labels.npy", rng.integers(0, 10, n).astype(np.int64))


def _rgb_project(tmp_path: Path) -> Path:
    """A project with 32x32 RGB prepared data and a small (width 0.25) baseline: 10,000 test images."""
    from tests.conftest import write_prepared

    from edgeopt.models import build_model, model_config, save_checkpoint

    root = tmp_path / "rgb"
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(10), 30)
    write_prepared(root, rng.integers(0, 256, (300, 32, 32, 3), dtype=np.uint8), labels, [str(i) for i in range(10)])
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    cfg = model_config("small_cnn", 10, 3, 0.25, True, 32)
    save_checkpoint(root / "models" / "baseline.pt", build_model(cfg).eval(), cfg)
    return root


def _evaluate_in_subprocess(root: Path) -> dict:
    sets = ["--set", "evaluate.batch_size=64"]
    proc = subprocess.run([sys.executable, "-m", "edgeopt.cli", "evaluate", "--root", str(root),
                           "--params", str(root / "params.yaml"), *sets],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return read_json(root / "metrics" / "evaluate.json")


def test_streaming_10k_images_keeps_memory_bounded(tmp_path):
    root = _rgb_project(tmp_path)
    _exported(root, "target.runtime=onnxruntime", "quantize.modes=[ort_int8_static]", "distill.quantize_modes=[]")
    _big_test_split(root, 1_000)
    small = _evaluate_in_subprocess(root)
    _big_test_split(root, 10_000)
    big = _evaluate_in_subprocess(root)
    assert big["images"] == 10_000 and big["candidates"]["baseline_fp32_ort"]["status"] == "ok"
    float32_mb = big["memory"]["test_split_float32_mb"]
    assert float32_mb > 110  # 10,000 x 3 x 32 x 32 x 4 bytes
    # 10x the images, same memory: peak anonymous memory grows far less than the split would take in float32
    grew = big["memory"]["anon_rss_peak_mb"] - small["memory"]["anon_rss_peak_mb"]
    assert grew < float32_mb / 8, (grew, small["memory"], big["memory"])
    # what streaming costs at all (runtime arena for one batch) is small next to the split in float32
    assert big["memory"]["stream_growth_mb"] < float32_mb / 4, (small["memory"], big["memory"])


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


@pytest.fixture(scope="module")
def _model_files(tmp_path_factory) -> Path:
    from edgeopt.models import build_model, model_config
    from edgeopt.onnx_export import export_onnx, onnx_to_ir

    d = tmp_path_factory.mktemp("model_files")
    model = build_model(model_config("small_cnn", 10, 1, 0.5, True, 16)).eval()
    onnx_to_ir(export_onnx(model, (1, 16, 16), d / "m.onnx", 17), d / "m.xml")
    return d


@pytest.mark.parametrize("damage", ["truncate_onnx", "garbage_onnx", "truncate_bin", "truncate_xml",
                                    "missing_bin", "missing"])
def test_corrupt_model_files_give_an_error_naming_the_file(_model_files, tmp_path, damage):
    for f in _model_files.iterdir():
        shutil.copy(f, tmp_path / f.name)
    onnx_path, xml = tmp_path / "m.onnx", tmp_path / "m.xml"
    bin_path = xml.with_suffix(".bin")
    load_model(onnx_path), load_model(xml)  # intact copies load
    target = {"truncate_onnx": onnx_path, "garbage_onnx": onnx_path, "missing": tmp_path / "nope.onnx"}.get(damage, xml)
    if damage == "truncate_onnx":
        onnx_path.write_bytes(onnx_path.read_bytes()[:4000])
    elif damage == "garbage_onnx":
        onnx_path.write_bytes(b"\x00garbage" * 100)
    elif damage == "truncate_bin":
        bin_path.write_bytes(bin_path.read_bytes()[:1000])
    elif damage == "truncate_xml":
        xml.write_text(xml.read_text()[:1500])
    elif damage == "missing_bin":
        bin_path.unlink()
    with pytest.raises(RuntimeModelError) as err:
        load_model(target)
    assert str(target) in str(err.value)
    assert ("missing" in str(err.value) or "not found" in str(err.value)) if "missing" in damage \
        else "corrupt" in str(err.value)
