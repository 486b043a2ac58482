"""ov_int8: NNCF post-training static INT8 of the OpenVINO model; the `quantize.keep_sensitive` most sensitive
layers (reports/sensitivity.json) stay FP32 through an nncf.IgnoredScope."""
from __future__ import annotations

from typing import Any

from edgeopt.quantizers import Job, Quantizer, register
from edgeopt.quantizers._nncf import calibration, common, ignored, ptq_details


def build(job: Job) -> dict[str, Any]:
    import nncf
    import openvino as ov

    from edgeopt.onnx_export import save_ir

    q = nncf.quantize(ov.convert_model(str(job.source.onnx_path)), calibration(job.data),
                      subset_size=len(job.data.calib), ignored_scope=ignored(job.source, job.keep_fp32),
                      **common(job.params))
    save_ir(q, job.primary)
    return ptq_details(job)


register(Quantizer("ov_int8", "NNCF PTQ static INT8 (OpenVINO)", precision="int8", runtime="openvino",
                   format="openvino_ir", build=build))
