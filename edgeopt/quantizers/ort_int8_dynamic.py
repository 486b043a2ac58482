"""ort_int8_dynamic: ONNX Runtime dynamic INT8: INT8 per-channel weights, activations quantized at run time."""
from __future__ import annotations

from typing import Any

from edgeopt.quantizers import Job, Quantizer, register
from edgeopt.quantizers._ort import preprocessed


def build(job: Job) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with preprocessed(job) as (pre, tmp):
        quantize_dynamic(str(pre), str(tmp), weight_type=QuantType.QInt8, per_channel=True)
    return {"weights": "int8 per-channel", "activations": "quantized at run time (DynamicQuantizeLinear)"}


register(Quantizer("ort_int8_dynamic", "ONNX Runtime dynamic INT8 (INT8 weights)", precision="int8",
                   runtime="onnxruntime", format="onnx", build=build))
