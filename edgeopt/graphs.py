"""What a saved ONNX / OpenVINO IR graph contains: quantize-dequantize and integer ops, weight constants by type,
and which weighted layers (conv, linear) run quantized. Torch-free; the quantize stage records it per candidate."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from edgeopt.onnx_export import OV_WEIGHTED_OPS, WEIGHTED_OPS


def ov_weight_is_quantized(op) -> bool:
    """True when an op's weight input comes through a FakeQuantize or from an INT8/UINT8 constant."""
    node = op.input_value(1).get_node()
    for _ in range(8):
        kind = node.get_type_name()
        if kind == "FakeQuantize" or (kind == "Constant" and node.get_element_type().get_type_name() in ("i8", "u8")):
            return True
        if kind not in ("Convert", "Subtract", "Multiply", "Reshape", "Transpose") or node.get_input_size() == 0:
            return False
        node = node.input_value(0).get_node()
    return False


def ov_summary(xml: Path) -> dict[str, Any]:
    """Op counts of a saved IR: FakeQuantize ops, INT8 / FP16 / FP32 weight constants, quantized weighted ops."""
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    ops = list(model.get_ordered_ops())
    consts = Counter(op.get_element_type().get_type_name() for op in ops if op.get_type_name() == "Constant")
    weighted = {op.get_friendly_name(): ov_weight_is_quantized(op) for op in ops
                if op.get_type_name() in OV_WEIGHTED_OPS}
    return {"fake_quantize": sum(op.get_type_name() == "FakeQuantize" for op in ops),
            "int8_constants": consts.get("i8", 0) + consts.get("u8", 0), "f16_constants": consts.get("f16", 0),
            "f32_constants": consts.get("f32", 0), "weighted_ops": len(weighted),
            "quantized_weighted_ops": sum(weighted.values()), "_weighted": weighted}


def onnx_summary(path: Path) -> dict[str, Any]:
    """Op counts of a saved ONNX model: Q/DQ and integer ops, INT8 / UINT8 initializers."""
    import onnx

    proto = onnx.load(str(path))
    ops = Counter(n.op_type for n in proto.graph.node)
    dtypes = Counter(onnx.TensorProto.DataType.Name(i.data_type) for i in proto.graph.initializer)
    producers = {o: n for n in proto.graph.node for o in n.output}
    weighted = {}
    for n in proto.graph.node:
        if n.op_type in WEIGHTED_OPS and len(n.input) > 1:
            prod = producers.get(n.input[1])
            weighted[n.name] = prod is not None and prod.op_type == "DequantizeLinear"
        elif n.op_type in ("ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul"):
            weighted[n.name] = True
    return {**{k: ops.get(k, 0) for k in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
                                          "ConvInteger", "MatMulInteger", "QLinearConv")},
            "int8_initializers": dtypes.get("INT8", 0), "uint8_initializers": dtypes.get("UINT8", 0),
            "weighted_ops": len(weighted), "quantized_weighted_ops": sum(weighted.values()), "_weighted": weighted}
