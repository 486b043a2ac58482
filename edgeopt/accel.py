"""Where training runs (`train.device`) and in which precision (the sections' `precision` knobs).

Checkpoints never depend on this: weights are saved from CPU copies (edgeopt.models.save_checkpoint) and every
stage gets its model back on the CPU after training, so export, quantization and benchmarks run the same way
whatever device trained the model.
"""
from __future__ import annotations

import logging
import warnings
from contextlib import AbstractContextManager

import torch
from torch import nn

from edgeopt.errors import ParamsError

log = logging.getLogger("edgeopt.training")
_told_fallback = False  # `auto` without a GPU says so once per process, not once per training run

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(choice: str) -> torch.device:
    """`train.device`: cpu | cuda | auto (CUDA when PyTorch sees a GPU, else CPU)."""
    global _told_fallback
    if choice == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if choice == "cuda":
        raise ParamsError("train.device is 'cuda' but PyTorch sees no CUDA GPU (no GPU, no driver, or a CPU-only "
                          "torch build); set train.device: auto (CUDA when present, else CPU) or cpu")
    if not _told_fallback:
        _told_fallback = True
        log.info("train.device auto: no CUDA GPU visible, training on the CPU")
    return torch.device("cpu")


def describe(device: torch.device) -> dict[str, str]:
    """What the metrics record about the device that trained."""
    if device.type == "cuda":
        return {"device": "cuda", "device_name": torch.cuda.get_device_name(device)}
    return {"device": device.type}


def native_bf16() -> bool:
    """Whether this CPU runs bf16 matmuls/convs natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and
    slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision actually used: fp32, bf16 or fp16 (fp16 on CUDA only, with a gradient scaler)."""
    fallback = None
    if device.type == "cuda":
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            fallback = ("fp16", "precision bf16 asked for, but this GPU has no bf16 (pre-Ampere): training with fp16 "
                                "autocast and a gradient scaler instead; set precision: fp16 to silence this")
    elif precision == "bf16" and not native_bf16():
        fallback = ("fp32", "precision bf16 asked for, but this CPU has no native bf16 (AVX512-BF16 / AMX): training "
                            "in fp32 instead, which is faster here; set precision: fp32 to silence this")
    elif precision == "fp16":
        fallback = ("fp32", "precision fp16 is for CUDA GPUs: training in fp32 on the CPU (the CPU's mixed precision "
                            "is bf16); set precision: fp32 or bf16 to silence this")
    if fallback is None:
        return precision
    warnings.warn(fallback[1], stacklevel=3)
    return fallback[0]


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """Mixed precision for the forward pass; weights, gradients, optimizer state and losses stay fp32."""
    return torch.autocast(device.type, dtype=AMP_DTYPES.get(precision, torch.bfloat16), enabled=precision != "fp32")


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none (disabled = no-op)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def model_device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))
