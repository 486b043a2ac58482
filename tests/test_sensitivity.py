"""sensitivity stage: one-layer-at-a-time INT8 simulation, ranking, graph node names, plot, disabled mode."""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from edgeopt.arrays import load_meta, normalize, open_split, subset_indices
from edgeopt.models import load_checkpoint
from edgeopt.params import load_params
from edgeopt.paths import Paths
from stages.sensitivity import (activation_ranges, fake_quant_activation, fake_quant_weight, logits_of, quantized,
                                run)

PNG = b"\x89PNG\r\n\x1a\n"


def _params(root, *overrides):
    return load_params(root / "params.yaml", ["sensitivity.max_samples=100", "quantize.calibration_size=100",
                                              *overrides])


def test_fake_quant_weight_is_per_channel_int8():
    w = torch.randn(8, 4, 3, 3) * torch.linspace(0.01, 10, 8).view(-1, 1, 1, 1)
    q = fake_quant_weight(w)
    scale = w.abs().flatten(1).amax(1) / 127
    steps = (q / scale.view(-1, 1, 1, 1)).flatten(1)
    assert torch.allclose(steps, steps.round(), atol=1e-3)  # every value is an integer step of its channel
    assert steps.abs().max() <= 127 + 1e-3 and len(torch.unique(steps.round())) <= 255
    assert torch.all((q - w).abs().flatten(1) <= scale.view(-1, 1) / 2 + 1e-6)


def test_fake_quant_activation_keeps_zero_and_range():
    x = torch.linspace(-1.0, 3.0, 1001)
    q = fake_quant_activation(x, -1.0, 3.0, symmetric=False)
    assert len(torch.unique(q)) <= 256 and (q - x).abs().max() <= 4.0 / 255 / 2 + 1e-6
    assert fake_quant_activation(torch.zeros(3), -1.0, 3.0, symmetric=False).abs().max() == 0
    relu_out = torch.linspace(0, 2.0, 500)
    sym = fake_quant_activation(relu_out, 0.0, 2.0, symmetric=True)  # unsigned: the full 256 levels on [0, 2]
    assert (sym - relu_out).abs().max() <= 2.0 / 255 / 2 + 1e-6
    clipped = fake_quant_activation(torch.tensor([10.0, -10.0]), -1.0, 3.0, symmetric=False)
    assert clipped[0] == pytest.approx(3.0, abs=0.02) and clipped[1] == pytest.approx(-1.0, abs=0.02)


def test_ranking_report_plot_and_metrics(tiny_project):
    root = tiny_project
    shutil.copy(root / "models" / "baseline.pt", root / "models" / "clustered.pt")
    metrics = run(_params(root), Paths(root))
    report = json.loads((root / "reports" / "sensitivity.json").read_text())
    rows = report["ranking"]
    model, _, _ = load_checkpoint(root / "models" / "clustered.pt")
    layers = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert sorted(r["layer"] for r in rows) == sorted(layers)  # one entry per quantizable layer
    assert [r["rank"] for r in rows] == list(range(1, len(layers) + 1))
    keys = [(r["drop"], r["output_nmse"]) for r in rows]
    assert keys == sorted(keys, reverse=True)  # by drop, ties by output error
    assert all(r["output_nmse"] > 0 for r in rows)  # every layer really was quantized
    assert report["samples"] == 100 and report["source"] == "clustered"

    # the FP32 accuracy is that of the checkpoint on the same seeded validation subset
    meta = load_meta(root / "data" / "prepared")
    vx, vy = open_split(root / "data" / "prepared", "val")
    idx = subset_indices(vy, 100, 0)
    x = torch.from_numpy(normalize(vx[idx], meta["mean"], meta["std"]))
    y = torch.from_numpy(vy[idx])
    assert report["fp32_accuracy"] == pytest.approx(100 * float((logits_of(model, x).argmax(1) == y).float().mean()),
                                                    abs=1e-3)
    for r in rows:
        assert r["accuracy"] == pytest.approx(report["fp32_accuracy"] - r["drop"], abs=1e-3)

    # the recomputed accuracy of the top layer matches its row (the simulation is deterministic)
    tx, ty = open_split(root / "data" / "prepared", "train")
    cal = torch.from_numpy(normalize(tx[subset_indices(ty, 100, 0)], meta["mean"], meta["std"]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with quantized(model, [rows[0]["layer"]], activation_ranges(model, cal), symmetric_act=False):
        acc = 100 * float((logits_of(model, x).argmax(1) == y).float().mean())
    assert acc == pytest.approx(rows[0]["accuracy"], abs=1e-3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # weights restored

    # node names: those of the ONNX export and of its OpenVINO conversion
    from edgeopt.onnx_export import export_onnx

    proto = onnx.load(str(export_onnx(model, (1, 16, 16), root / "check.onnx")))
    onnx_nodes = {n.name for n in proto.graph.node}
    assert all(r["onnx_node"] in onnx_nodes for r in rows)
    assert {r["layer"]: r["openvino_node"] for r in rows}["features.0"] == "/features/features.0/Conv/WithoutBiases"
    assert all(r["openvino_node"] for r in rows)

    assert (root / "reports" / "sensitivity.png").read_bytes()[:8] == PNG
    saved = json.loads((root / "metrics" / "sensitivity.json").read_text())
    assert saved["layers"] == metrics["layers"] == len(layers)
    assert saved["most_sensitive"] == rows[0]["layer"] and saved["max_drop"] == rows[0]["drop"]
    assert saved["fp32_accuracy"] >= saved["all_int8_accuracy"] - 5


def test_sensitivity_disabled_writes_empty_outputs(tiny_project):
    root = tiny_project  # no clustered.pt needed when disabled
    metrics = run(_params(root, "sensitivity.enabled=false"), Paths(root))
    report = json.loads((root / "reports" / "sensitivity.json").read_text())
    assert report["ranking"] == [] and report["enabled"] is False
    assert (root / "reports" / "sensitivity.png").read_bytes()[:8] == PNG
    assert metrics["enabled"] is False and metrics["layers"] == 0


def test_missing_source_is_a_clear_error(tiny_project):
    from edgeopt.models import CheckpointError

    with pytest.raises(CheckpointError, match=r"finetuned\.pt: checkpoint not found"):
        run(_params(tiny_project, "quantize.source=finetuned"), Paths(tiny_project))
    assert not (tiny_project / "reports" / "sensitivity.json").exists()


def test_a_sensitive_layer_ranks_first(tiny_project):
    """Make one layer's activations hard to quantize (a huge outlier channel): it must top the ranking."""
    root = tiny_project
    model, cfg, info = load_checkpoint(root / "models" / "baseline.pt")
    conv, bn = model.features[14], model.features[15]  # input of features.17 comes from this conv via BN/ReLU
    with torch.no_grad():  # channel 0 of features.16 output x1000, compensated in features.17: same FP32 model
        bn.weight[0] *= 1000
        bn.bias[0] *= 1000
        model.features[17].weight[:, 0] /= 1000
    from edgeopt.models import save_checkpoint

    save_checkpoint(root / "models" / "clustered.pt", model, cfg, info)
    run(_params(root), Paths(root))
    rows = json.loads((root / "reports" / "sensitivity.json").read_text())["ranking"]
    assert rows[0]["layer"] == "features.17"
    assert rows[0]["drop"] > 5 and rows[0]["output_nmse"] > 10 * max(r["output_nmse"] for r in rows[1:])
    assert np.isfinite([r["output_nmse"] for r in rows]).all()
