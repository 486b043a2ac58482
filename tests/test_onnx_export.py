"""edgeopt.onnx_export: checked atomic ONNX export, IR conversion, layer <-> node mapping."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from edgeopt.models import load_checkpoint
from edgeopt.onnx_export import (ExportError, export_onnx, layer_node_map, onnx_to_ir, ov_layer_map,
                                 weighted_layers_in_call_order)
from edgeopt.runtime import load_model


@pytest.fixture()
def baseline(tiny_project):
    model, cfg, _ = load_checkpoint(tiny_project / "models" / "baseline.pt")
    return model, (cfg["in_channels"], cfg["image_size"], cfg["image_size"])


def test_export_onnx_matches_pytorch_with_dynamic_batch(baseline, tmp_path):
    model, shape = baseline
    path = export_onnx(model, shape, tmp_path / "m" / "model.onnx", opset=17)
    proto = onnx.load(str(path))
    assert proto.opset_import[0].version == 17
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["edgeopt.exporter"] == "torchscript"
    assert [i.name for i in proto.graph.input] == ["input"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert not any(n.op_type == "BatchNormalization" for n in proto.graph.node)  # folded into the convs
    x = np.random.default_rng(0).standard_normal((5, *shape)).astype(np.float32)
    ref = model(torch.from_numpy(x)).detach().numpy()
    got = load_model(path).predict(x)
    assert got.shape == (5, 10)
    assert np.abs(got - ref).max() < 1e-4
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]  # no temp files left behind
    assert model.training is False


def test_onnx_to_ir_fp32_and_fp16(baseline, tmp_path):
    import openvino as ov

    model, shape = baseline
    src = export_onnx(model, shape, tmp_path / "model.onnx")
    x = np.random.default_rng(1).standard_normal((3, *shape)).astype(np.float32)
    ref = model(torch.from_numpy(x)).detach().numpy()
    for compress, tol in ((False, 1e-4), (True, 5e-2)):
        xml = onnx_to_ir(src, tmp_path / f"ir{int(compress)}" / "model.xml", compress_fp16=compress)
        assert xml.with_suffix(".bin").is_file()
        assert sorted(p.name for p in xml.parent.iterdir()) == ["model.bin", "model.xml"]
        types = {op.get_element_type().get_type_name() for op in ov.Core().read_model(str(xml)).get_ordered_ops()
                 if op.get_type_name() == "Constant"}
        assert ("f16" in types) is compress
        assert np.abs(load_model(xml).predict(x) - ref).max() < tol


def test_dynamo_exporter_and_layer_mapping(baseline, tmp_path):
    import openvino as ov

    model, shape = baseline
    layers = [n for n, _ in weighted_layers_in_call_order(model, shape)]
    assert layers == ["features.0", "features.3", "features.7", "features.10", "features.14", "features.17",
                      "classifier"]
    ts = layer_node_map(model, export_onnx(model, shape, tmp_path / "ts.onnx"), shape)
    assert ts["features.0"] == "/features/features.0/Conv" and ts["classifier"] == "/classifier/Gemm"
    dyn_path = export_onnx(model, shape, tmp_path / "dyn.onnx", exporter="dynamo")
    dyn = layer_node_map(model, dyn_path, shape)
    assert list(dyn) == layers and len(set(dyn.values())) == len(layers)
    proto = onnx.load(str(dyn_path))
    ovm = ov.convert_model(str(dyn_path))
    ov_names = ov_layer_map(ovm, proto, dyn)
    assert None not in ov_names.values() and len(set(ov_names.values())) == len(layers)


def test_export_errors_are_clear(baseline, tmp_path):
    model, _ = baseline
    tmp_path = tmp_path / "out"
    with pytest.raises(ExportError, match="input_shape"):
        export_onnx(model, (16, 16), tmp_path / "x.onnx")
    with pytest.raises(ExportError, match="every exporter"):
        export_onnx(model, (3, 16, 16), tmp_path / "x.onnx")  # model expects 1 channel
    assert not (tmp_path / "x.onnx").exists()
    assert [p.name for p in tmp_path.iterdir()] == []
    with pytest.raises(ExportError, match="not found"):
        onnx_to_ir(tmp_path / "missing.onnx", tmp_path / "m.xml")
