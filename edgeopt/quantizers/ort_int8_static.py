"""ort_int8_static: ONNX Runtime static INT8 in QDQ format, per-channel weights, calibrated on the train subset;
`quantize.keep_sensitive` layers stay FP32 (nodes_to_exclude)."""
from __future__ import annotations

from typing import Any

from edgeopt.quantizers import Job, Quantizer, register
from edgeopt.quantizers._ort import preprocessed

BATCH = 32  # calibration batch


def build(job: Job) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from edgeopt.onnx_export import INPUT_NAME, layer_node_map

    calib = job.data.calib

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calib[i:i + BATCH] for i in range(0, len(calib), BATCH))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    symmetric = job.params.quantize.preset == "performance"
    with preprocessed(job) as (pre, tmp):
        exclude = []
        if job.keep_fp32:  # node names after pre-processing: re-match layers to the graph that is quantized
            nodes = layer_node_map(job.source.model, onnx.load(str(pre)), job.data.input_shape)
            exclude = [nodes[layer] for layer in job.keep_fp32 if layer in nodes]
        quantize_static(str(pre), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=exclude or None,
                        extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True})
    return {"calibration_samples": len(calib), "format": "QDQ", "per_channel": True,
            "activations": "int8 " + ("symmetric" if symmetric else "asymmetric"), "kept_fp32": job.keep_fp32}


register(Quantizer("ort_int8_static", "ONNX Runtime static INT8 (QDQ, per-channel weights)", precision="int8",
                   runtime="onnxruntime", format="onnx", build=build))
