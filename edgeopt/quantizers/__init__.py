"""Quantization modes as plug-ins, the Olive / NNCF way: one module per mode in this folder declares its runtime,
precision and file format and one `build(job)`, and registers itself when imported. `available()` imports every
module here whose name does not start with `_`: adding a mode is adding a file (docs/ARCHITECTURE.md).

Params validation (`quantize.modes`, `distill.quantize_modes`, their runtimes against `target.runtime`) and the
quantize stage read this one registry. Importing a mode module is cheap: builders import nncf, onnxruntime,
openvino or torch when they run.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeopt.arrays import Calibration
from edgeopt.candidates import FILES, RUNTIMES


@dataclass
class Source:
    """A checkpoint to quantize, its FP32 ONNX / IR export and the FP32 validation predictions per runtime."""
    name: str
    checkpoint: Path
    rel_checkpoint: str
    model: Any                           # the PyTorch model (QAT trains it)
    onnx_path: Path
    xml_path: Path
    onnx_nodes: dict[str, str]           # PyTorch layer -> ONNX node
    ov_nodes: dict[str, str | None]      # PyTorch layer -> OpenVINO op
    fp32_pred: dict[str, np.ndarray] = field(default_factory=dict)   # runtime -> val predictions


@dataclass
class Job:
    """One candidate to build: the source, calibration and validation data, the quantize stage's params view
    (quantize.*, target.*, finetune.*, train.*, seed), and where its files go."""
    source: Source
    data: Calibration
    params: Any
    out: Path             # the candidate's folder
    primary: Path         # the primary model file the build must write (out / model.xml or model.onnx)
    keep_fp32: list[str]  # PyTorch layers to leave in FP32 (quantize.keep_sensitive)
    paths: Any            # the project (QAT trains on its splits)


@dataclass(frozen=True)
class Quantizer:
    name: str         # the mode: a quantize.modes entry and the candidate's suffix (<source>_<name>)
    technique: str    # one line for reports and manifests
    precision: str    # int8, fp16, ...
    runtime: str      # one of edgeopt.candidates.RUNTIMES
    format: str       # a key of edgeopt.candidates.FILES: the files the build writes
    build: Callable[[Job], dict[str, Any]]  # writes job.primary (and its siblings), returns details
    listed: bool = True  # False: not named in quantize.modes (qat_int8 runs when quantize.qat is true)
    review: Callable[[dict[str, Any], Any], None] | None = None  # after inspection: did it meet its own goal?

    @property
    def files(self) -> tuple[str, ...]:
        return FILES[self.format]


_REGISTRY: dict[str, Quantizer] = {}


def register(quantizer: Quantizer) -> Quantizer:
    """Add a mode (called by each mode module when imported, or by anyone with a Quantizer)."""
    if quantizer.runtime not in RUNTIMES or quantizer.format not in FILES:
        raise ValueError(f"quantizer {quantizer.name!r}: runtime {quantizer.runtime!r} / format {quantizer.format!r}; "
                         f"use one of {RUNTIMES} / {tuple(FILES)}")
    known = _REGISTRY.get(quantizer.name)
    if known is not None and known.build.__module__ != quantizer.build.__module__:
        raise ValueError(f"quantization mode {quantizer.name!r} is defined twice ({known.build.__module__}, "
                         f"{quantizer.build.__module__})")
    _REGISTRY[quantizer.name] = quantizer
    return quantizer


def discover() -> None:
    """Import every mode module of this package (already imported ones are not run again)."""
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def available() -> dict[str, Quantizer]:
    """Every registered mode, by name."""
    discover()
    return dict(sorted(_REGISTRY.items()))


def listed() -> list[str]:
    """The modes quantize.modes and distill.quantize_modes may name."""
    return [name for name, q in available().items() if q.listed]


def get(name: str) -> Quantizer:
    modes = available()
    if name not in modes:
        raise KeyError(f"unknown quantization mode {name!r}; available: {', '.join(modes)}")
    return modes[name]
