"""The vocabulary of candidates, one home for what quantize, export, evaluate, bench, gate, promote and the
benchmarks say about them: names, the files of each format, lineage (which stages made a checkpoint), the
runtimes a target allows and the input shape. Torch-free, dependency-free.

    <source>_fp32_<ort|ov>   an FP32 checkpoint exported for ONNX Runtime / OpenVINO   baseline_fp32_ort
    <source>_<mode>          a quantized candidate (mode: edgeopt.quantizers)          clustered_ov_int8
"""
from __future__ import annotations

from typing import Any, Mapping

RUNTIMES = ("openvino", "onnxruntime")  # the runtimes candidates run in (edgeopt.runtime loads each)
ANY_RUNTIME = "any"                     # target.runtime: every runtime allowed
SHORT = {"onnxruntime": "ort", "openvino": "ov", "pytorch": "pytorch"}  # in candidate names
FORMAT_OF = {"onnxruntime": "onnx", "openvino": "openvino_ir"}          # the file format each runtime runs
FILES = {"onnx": ("model.onnx",), "openvino_ir": ("model.xml", "model.bin")}  # the primary file first
# The checkpoints export turns into FP32 candidates, in this order.
FP32_SOURCES = ("baseline", "finetuned", "clustered", "student", "student_nokd")
# The stages that produced each checkpoint (when its info does not record them).
LINEAGE = {"baseline": ["train"], "pruned": ["train", "prune"], "finetuned": ["train", "prune", "finetune"],
           "clustered": ["train", "prune", "finetune", "cluster"], "student_nokd": ["distill"]}


def allowed_runtimes(target_runtime: str) -> tuple[str, ...]:
    """The runtimes `target.runtime` allows: all of them for 'any', else that one."""
    return RUNTIMES if target_runtime == ANY_RUNTIME else (target_runtime,)


def fp32_name(source: str, runtime: str) -> str:
    return f"{source}_fp32_{SHORT[runtime]}"


def quantized_name(source: str, mode: str) -> str:
    return f"{source}_{mode}"


def baselines(runtimes: tuple[str, ...]) -> dict[str, str]:
    """{runtime: the FP32 baseline candidate in it}: what every drop is measured against."""
    return {rt: fp32_name("baseline", rt) for rt in runtimes}


def files_of(name: str, fmt: str) -> list[str]:
    """A candidate's files inside models/exported (or models/quantized), the primary one first."""
    return [f"{name}/{f}" for f in FILES[fmt]]


def lineage(name: str, teacher: str) -> list[str]:
    """The stages that made checkpoint `name`; the student's history is its teacher's, then distillation."""
    if name == "student":
        return lineage(teacher, teacher) + ["distill"]
    return list(LINEAGE.get(name, [name]))


def producer(name: str) -> str:
    """The stage that writes checkpoint `name` (what to run when it is missing)."""
    return lineage(name, "baseline")[-1]


def input_shape(info: Mapping[str, Any]) -> tuple[int, int, int]:
    """(channels, height, width) a model takes, from a model config (`in_channels`) or data/prepared/meta.json
    (`channels`): square images of `image_size`."""
    channels = info["in_channels"] if "in_channels" in info else info["channels"]
    return int(channels), int(info["image_size"]), int(info["image_size"])
