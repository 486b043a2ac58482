"""qat_int8 (`quantize.qat: true`, not listed in quantize.modes): NNCF post-training INT8 of the PyTorch model as
the starting point, then fine-tuning with the quantizers in place (the finetune recipe, quantize.qat_epochs /
qat_lr), exported to OpenVINO IR. keep_sensitive is not applied: NNCF-PyTorch scopes use its own graph names."""
from __future__ import annotations

import copy
import os
from typing import Any

from edgeopt.quantizers import Job, Quantizer, register
from edgeopt.quantizers._nncf import common

BATCH = 32  # NNCF-PyTorch statistics collection costs ~0.2 s per item, whatever its size


def build(job: Job) -> dict[str, Any]:
    # NNCF JIT-builds a C++ fake-quantize extension on first use (2+ minutes on 2 cores): allow for it.
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "900")
    import nncf
    import openvino as ov
    import torch

    from edgeopt.onnx_export import save_ir
    from edgeopt.training import Splits, evaluate, fit, fit_options

    params, data = job.params, job.data
    splits = Splits.load(job.paths.prepared)
    calib = torch.from_numpy(data.calib)
    items = [calib[i:i + BATCH] for i in range(0, len(calib), BATCH)]
    model = nncf.quantize(copy.deepcopy(job.source.model), nncf.Dataset(items), subset_size=len(items),
                          **common(params))
    ptq_val = evaluate(model, splits, "val")["accuracy"]
    q = params.quantize
    result = fit(model, splits, params.finetune, seed=params.seed, **fit_options(params.train),
                 epochs=q.qat_epochs, lr=q.qat_lr, desc="qat")
    model.eval()
    c, h, w = data.input_shape
    with torch.no_grad():
        ov_model = ov.convert_model(model, example_input=torch.zeros(1, c, h, w), input=[(-1, c, h, w)])
    save_ir(ov_model, job.primary)
    return {"calibration_samples": len(data.calib), "preset": q.preset, "epochs": q.qat_epochs,
            "lr": q.qat_lr, "recipe": "finetune (SGD) with quantize.qat_epochs / qat_lr",
            "ptq_val_accuracy_pytorch": round(ptq_val, 4), "qat_val_accuracy_pytorch": round(result.best_val_accuracy, 4),
            "training": result.summary(), "history": result.history}


register(Quantizer("qat_int8", "NNCF quantization-aware training INT8 (PyTorch) -> OpenVINO", precision="int8",
                   runtime="openvino", format="openvino_ir", build=build, listed=False))
