"""ov_int8_ac: NNCF accuracy-controlled INT8: reverts the most harmful layers to FP32 until the validation
accuracy drop is <= quantize.max_drop; whether it got there is measured again after the build (`review`)."""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from edgeopt.quantizers import Job, Quantizer, register
from edgeopt.quantizers._nncf import calibration, common, ignored, ptq_details

NOTE_WORDS = ("accuracy drop", "reverted", "algorithm completed", "not achieved", "metric of", "unable", "maximum")


class _LogCapture(logging.Handler):
    """Collects NNCF's log lines: the accuracy-control outcome is only reported there."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def build(job: Job) -> dict[str, Any]:
    import nncf
    import openvino as ov

    from edgeopt.onnx_export import save_ir

    data = job.data

    def validate(compiled, items) -> tuple[float, list[float]]:
        out = compiled.outputs[0]
        hits = [float(compiled(x)[out].argmax(1)[0] == y) for x, y in items]
        return float(np.mean(hits)) if hits else 0.0, hits

    val = nncf.Dataset([(data.val_x[i:i + 1], int(data.val_y[i])) for i in range(len(data.val_y))],
                       lambda item: item[0])
    capture = _LogCapture()
    nncf_log = logging.getLogger("nncf")
    nncf_log.addHandler(capture)
    try:
        q = nncf.quantize_with_accuracy_control(
            ov.convert_model(str(job.source.onnx_path)), calibration(data), val, validate,
            max_drop=job.params.quantize.max_drop, drop_type=nncf.DropType.ABSOLUTE, subset_size=len(data.calib),
            ignored_scope=ignored(job.source, job.keep_fp32), **common(job.params))
    finally:
        nncf_log.removeHandler(capture)
    save_ir(q, job.primary)
    notes = [ln.strip() for ln in capture.lines if any(k in ln.lower() for k in NOTE_WORDS)]
    return {**ptq_details(job), "max_drop": job.params.quantize.max_drop, "validation_samples": int(len(data.val_y)),
            "nncf_log": notes}


def review(details: dict[str, Any], params: Any) -> None:
    """Record whether max_drop was met on validation (measured in OpenVINO after the build), and why not."""
    limit = 100.0 * params.quantize.max_drop
    details["max_drop_points"] = limit
    details["max_drop_met"] = bool(details["val_drop"] <= limit + 1e-9)
    if details["max_drop_met"]:
        details["max_drop_reason"] = None
    elif details.get("ops", {}).get("quantized_weighted_ops", 0) == 0:
        details["max_drop_reason"] = "every layer was reverted to FP32 and the drop remains: it is not caused by INT8"
    else:
        details["max_drop_reason"] = ("NNCF could not reach max_drop by reverting layers (see nncf_log); consider a "
                                      "larger quantize.calibration_size, quantize.qat or a larger max_drop")


register(Quantizer("ov_int8_ac", "NNCF accuracy-controlled INT8 (OpenVINO)", precision="int8", runtime="openvino",
                   format="openvino_ir", build=build, review=review))
