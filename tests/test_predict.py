"""`edgeopt predict`: a release (pulled dir or registry:ref) classifies image files, torch-free."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from edgeopt.arrays import open_split
from edgeopt.params import load_params
from edgeopt.paths import Paths
from edgeopt.registry import Registry
from tests.conftest import digits_arrays
from tests.release_helpers import REPO, release_project, release_template, run_cli  # noqa: F401

MODEL = "digits-classifier"


@pytest.fixture()
def released(release_project):
    """The gate's pick with rank_by=size (the INT8 ONNX model) released to staging, and 6 test images the
    released model classifies correctly, written as PNG files."""
    from stages.gate import run as gate
    from stages.promote import run as promote

    from edgeopt.runtime import load_model, predict_images

    root = release_project
    params = load_params(root / "params.yaml", ["gate.rank_by=size"])
    gate(params, Paths(root))
    assert promote(params, Paths(root))["candidate"] == "finetuned_ort_int8_dynamic"
    images, labels = open_split(root / "data" / "prepared", "test")
    images, labels = np.asarray(images[:40]), labels[:40]
    meta = json.loads((root / "data" / "prepared" / "meta.json").read_text())
    model = load_model(root / "models" / "exported" / "finetuned_ort_int8_dynamic" / "model.onnx")
    right = np.flatnonzero(predict_images(model, images, meta["mean"], meta["std"]).argmax(1) == labels)[:6]
    assert len(right) == 6
    files = []
    for i in right:
        path = root / f"img{i}_label{labels[i]}.png"
        Image.fromarray(images[i][..., 0], mode="L").save(path)
        files.append(path)
    return root, files, [str(labels[i]) for i in right]


def test_predict_pulled_release_returns_expected_labels(released, tmp_path):
    root, files, expected = released
    assert run_cli(root, "registry", "pull", f"{MODEL}@staging", "--to", str(tmp_path / "rel")).returncode == 0
    res = run_cli(tmp_path, "predict", str(tmp_path / "rel"), *map(str, files), "--top-k", "3", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["release"] == f"{MODEL}@0.0.1" and out["runtime"] == "onnxruntime"
    assert [r["top"][0]["label"] for r in out["results"]] == expected
    for r in out["results"]:
        scores = [t["score"] for t in r["top"]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0 + 1e-6
    text = run_cli(tmp_path, "predict", str(tmp_path / "rel"), str(files[0]))
    assert text.returncode == 0, text.stderr
    # dynamic INT8 scales activations per batch, so one image alone may score a hair differently than in a batch of 5
    head, score = text.stdout.strip().rsplit(" (", 1)
    assert head == f"{files[0]}: {expected[0]}"
    assert abs(float(score.rstrip(")")) - out["results"][0]["top"][0]["score"]) < 0.01


def test_predict_through_registry_ref_is_torch_free(released):
    root, files, expected = released
    code = ("import sys, json; from edgeopt.cli import main; "
            f"rc = main(['predict', 'registry:{MODEL}@staging', *sys.argv[1:], '--json']); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    res = subprocess.run([sys.executable, "-c", code, *map(str, files)], cwd=root, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr
    assert [r["top"][0]["label"] for r in json.loads(res.stdout)["results"]] == expected


def test_input_contract_resize_and_mode_match_prepared_data(released):
    """An original 8x8 digit saved as RGB goes through mode conversion + resize to the prepared 16x16 pixels."""
    from edgeopt.predict import load_image
    from sklearn.datasets import load_digits

    root, _, _ = released
    manifest = Registry(root / "registry").manifest(MODEL, "0.0.1")
    raw = (load_digits().images[:5] / 16.0 * 255).round().astype(np.uint8)
    prepared, _, _ = digits_arrays(16)
    for i, im in enumerate(raw):
        path = root / f"raw{i}.png"
        Image.fromarray(np.stack([im] * 3, axis=-1), mode="RGB").save(path)
        arr = load_image(path, manifest["input"])
        assert arr.shape == (16, 16, 1) and arr.dtype == np.uint8
        np.testing.assert_array_equal(arr, prepared[i])


def test_predict_refuses_tampered_release_and_bad_input(released, tmp_path):
    root, files, _ = released
    reg = Registry(root / "registry")
    reg.pull(f"{MODEL}@0.0.1", tmp_path / "rel")
    model = tmp_path / "rel" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[-5] ^= 0xFF
    model.write_bytes(bytes(data))
    res = run_cli(tmp_path, "predict", str(tmp_path / "rel"), str(files[0]))
    assert res.returncode == 1 and "fails verification" in res.stderr and "model.onnx" in res.stderr
    res = run_cli(root, "predict", f"registry:{MODEL}@staging", str(root / "params.yaml"))
    assert res.returncode == 1 and "corrupt or truncated image" in res.stderr
    res = run_cli(root, "predict", f"registry:{MODEL}@production", str(files[0]))
    assert res.returncode == 1 and "channel 'production' points at nothing" in res.stderr
    assert run_cli(root, "predict", str(tmp_path), str(files[0])).returncode == 1  # no manifest
