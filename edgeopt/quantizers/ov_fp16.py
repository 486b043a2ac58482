"""ov_fp16: the OpenVINO IR with FP16 weights (decompressed to FP32 at load time on CPUs without native FP16)."""
from __future__ import annotations

from typing import Any

from edgeopt.quantizers import Job, Quantizer, register


def build(job: Job) -> dict[str, Any]:
    from edgeopt.onnx_export import onnx_to_ir

    onnx_to_ir(job.source.onnx_path, job.primary, compress_fp16=True)
    return {"weights": "fp16 (decompressed to fp32 at load time on CPUs without native fp16)"}


register(Quantizer("ov_fp16", "OpenVINO IR, FP16 weights", precision="fp16", runtime="openvino",
                   format="openvino_ir", build=build))
