"""What the ONNX Runtime modes share: ORT's recommended pre-processing of the FP32 model, and an atomic write."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def preprocessed(job: Any) -> Iterator[tuple[Path, Path]]:
    """(pre-processed FP32 model, where the quantizer writes): graph optimisation + shape inference into a scratch
    file; on success the output replaces job.primary and the scratch file goes."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre, tmp = job.out / ".pre.onnx", job.out / ".model.onnx"
    # ONNX shape inference is enough for CNNs; the symbolic one costs ~10 s of sympy import
    quant_pre_process(str(job.source.onnx_path), str(pre), skip_symbolic_shape=True)
    yield pre, tmp
    os.replace(tmp, job.primary)
    pre.unlink()
