"""quantize: INT8 / FP16 candidates from the compressed teacher (`quantize.source`) and the distilled student.

Modes (each a named candidate `<source>_<mode>` under models/quantized/, see docs/ARTIFACTS.md):
  ov_int8           NNCF post-training static INT8 of the OpenVINO model (optionally keeping the N most
                    sensitive layers of reports/sensitivity.json in FP32 via nncf.IgnoredScope)
  ov_int8_ac        NNCF accuracy-controlled INT8: reverts the most harmful layers to FP32 until the validation
                    accuracy drop is <= quantize.max_drop
  ort_int8_static   ONNX Runtime static INT8, QDQ format, per-channel weights
  ort_int8_dynamic  ONNX Runtime dynamic INT8 (INT8 weights, activations quantized at run time)
  ov_fp16           OpenVINO IR with FP16 weights
  qat_int8          (quantize.qat) NNCF quantization-aware training of the PyTorch model, exported to IR
Every quantizer starts from the same FP32 ONNX export, kept in `<source>_fp32_src/`. Calibration uses a
seeded, stratified subset of *train*; validation numbers use the validation split, in the model's runtime.
A mode that fails is recorded as failed with the reason; the stage fails only when a source is unusable.
"""
from __future__ import annotations

import copy
import logging
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeopt.arrays import load_meta, normalize, open_split, subset_indices
from edgeopt.errors import CheckpointError, StageError
from edgeopt.io import atomic_dir, gzip_size, read_json, tree_size, write_json
from edgeopt.models import load_checkpoint
from edgeopt.params import Params
from edgeopt.paths import Paths
from edgeopt.runtime import load_model
from edgeopt.stage import stage
from edgeopt.training import fit_options, set_seed

log = logging.getLogger("edgeopt.quantize")


@dataclass(frozen=True)
class Mode:
    technique: str
    precision: str
    runtime: str
    format: str


MODES = {
    "ov_int8": Mode("NNCF PTQ static INT8 (OpenVINO)", "int8", "openvino", "openvino_ir"),
    "ov_int8_ac": Mode("NNCF accuracy-controlled INT8 (OpenVINO)", "int8", "openvino", "openvino_ir"),
    "ort_int8_static": Mode("ONNX Runtime static INT8 (QDQ, per-channel weights)", "int8", "onnxruntime", "onnx"),
    "ort_int8_dynamic": Mode("ONNX Runtime dynamic INT8 (INT8 weights)", "int8", "onnxruntime", "onnx"),
    "ov_fp16": Mode("OpenVINO IR, FP16 weights", "fp16", "openvino", "openvino_ir"),
    "qat_int8": Mode("NNCF quantization-aware training INT8 (PyTorch) -> OpenVINO", "int8", "openvino", "openvino_ir"),
}
OV_FILES = ["model.xml", "model.bin"]
ONNX_FILES = ["model.onnx"]


@dataclass
class Data:
    """Calibration (train subset) and validation inputs, preprocessed by the input contract."""
    calib: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    input_shape: tuple[int, int, int]


@dataclass
class Source:
    """A checkpoint to quantize, its FP32 ONNX / IR export and the FP32 validation predictions per runtime."""
    name: str
    checkpoint: Path
    rel_checkpoint: str
    model: Any
    onnx_path: Path
    xml_path: Path
    onnx_nodes: dict[str, str]           # PyTorch layer -> ONNX node
    ov_nodes: dict[str, str | None]      # PyTorch layer -> OpenVINO op
    fp32_pred: dict[str, np.ndarray] = field(default_factory=dict)   # runtime -> val predictions


# --- inspection helpers (what a candidate contains) ----------------------------------------------------------

def ov_weight_is_quantized(op) -> bool:
    """True when an op's weight input comes through a FakeQuantize or from an INT8/UINT8 constant."""
    node = op.input_value(1).get_node()
    for _ in range(8):
        kind = node.get_type_name()
        if kind == "FakeQuantize" or (kind == "Constant" and node.get_element_type().get_type_name() in ("i8", "u8")):
            return True
        if kind not in ("Convert", "Subtract", "Multiply", "Reshape", "Transpose") or node.get_input_size() == 0:
            return False
        node = node.input_value(0).get_node()
    return False


def ov_summary(xml: Path) -> dict[str, Any]:
    """Op counts of a saved IR: FakeQuantize ops, INT8 / FP16 / FP32 weight constants, quantized weighted ops."""
    import openvino as ov

    from edgeopt.onnx_export import OV_WEIGHTED_OPS

    model = ov.Core().read_model(str(xml))
    ops = list(model.get_ordered_ops())
    consts = Counter(op.get_element_type().get_type_name() for op in ops if op.get_type_name() == "Constant")
    weighted = {op.get_friendly_name(): ov_weight_is_quantized(op) for op in ops
                if op.get_type_name() in OV_WEIGHTED_OPS}
    return {"fake_quantize": sum(op.get_type_name() == "FakeQuantize" for op in ops),
            "int8_constants": consts.get("i8", 0) + consts.get("u8", 0), "f16_constants": consts.get("f16", 0),
            "f32_constants": consts.get("f32", 0), "weighted_ops": len(weighted),
            "quantized_weighted_ops": sum(weighted.values()), "_weighted": weighted}


def onnx_summary(path: Path) -> dict[str, Any]:
    """Op counts of a saved ONNX model: Q/DQ and integer ops, INT8 / UINT8 initializers."""
    import onnx

    from edgeopt.onnx_export import WEIGHTED_OPS

    proto = onnx.load(str(path))
    ops = Counter(n.op_type for n in proto.graph.node)
    dtypes = Counter(onnx.TensorProto.DataType.Name(i.data_type) for i in proto.graph.initializer)
    producers = {o: n for n in proto.graph.node for o in n.output}
    weighted = {}
    for n in proto.graph.node:
        if n.op_type in WEIGHTED_OPS and len(n.input) > 1:
            prod = producers.get(n.input[1])
            weighted[n.name] = prod is not None and prod.op_type == "DequantizeLinear"
        elif n.op_type in ("ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul"):
            weighted[n.name] = True
    return {**{k: ops.get(k, 0) for k in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
                                          "ConvInteger", "MatMulInteger", "QLinearConv")},
            "int8_initializers": dtypes.get("INT8", 0), "uint8_initializers": dtypes.get("UINT8", 0),
            "weighted_ops": len(weighted), "quantized_weighted_ops": sum(weighted.values()), "_weighted": weighted}


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0][:400] if lines else ''}"


# --- inputs ---------------------------------------------------------------------------------------------------

def load_data(params: Params, paths: Paths) -> Data:
    meta = load_meta(paths.prepared)
    tr_x, tr_y = open_split(paths.prepared, "train")
    va_x, va_y = open_split(paths.prepared, "val")
    cal = subset_indices(tr_y, params.quantize.calibration_size, params.seed)
    return Data(normalize(tr_x[cal], meta["mean"], meta["std"]), normalize(va_x, meta["mean"], meta["std"]),
                np.asarray(va_y), (int(meta["channels"]), int(meta["image_size"]), int(meta["image_size"])))


def sensitive_layers(params: Params, paths: Paths) -> list[str]:
    """The `quantize.keep_sensitive` most sensitive PyTorch layers of reports/sensitivity.json."""
    n = params.quantize.keep_sensitive
    if n == 0:
        return []
    path = paths.report("sensitivity.json")
    try:
        report = read_json(path, "sensitivity report")
    except (FileNotFoundError, ValueError) as exc:
        raise StageError(f"quantize.keep_sensitive={n} needs the sensitivity ranking: {exc}") from None
    if not report.get("ranking"):
        raise StageError(f"{path}: empty ranking (sensitivity.enabled is false?); enable the sensitivity stage "
                         f"or set quantize.keep_sensitive: 0")
    if report.get("source") != params.quantize.source:
        raise StageError(f"{path}: ranking is for {report.get('source')!r} but quantize.source is "
                         f"{params.quantize.source!r}; rerun `edgeopt sensitivity`")
    return [r["layer"] for r in report["ranking"][:n]]


def prepare_source(name: str, checkpoint: Path, params: Params, paths: Paths, data: Data, out: Path) -> Source:
    """Load the checkpoint, export FP32 ONNX + IR into `<name>_fp32_src/`, predict val in both runtimes."""
    import onnx
    import openvino as ov

    from edgeopt.onnx_export import export_onnx, layer_node_map, onnx_to_ir, ov_layer_map

    model, _cfg, _info = load_checkpoint(checkpoint)  # missing / corrupt -> CheckpointError (stage fails)
    src_dir = out / f"{name}_fp32_src"
    try:
        onnx_path = export_onnx(model, data.input_shape, src_dir / "model.onnx", params.export.opset)
        xml = onnx_to_ir(onnx_path, src_dir / "model.xml")
        proto = onnx.load(str(onnx_path))
        onnx_nodes = layer_node_map(model, proto, data.input_shape)
        ov_nodes = ov_layer_map(ov.Core().read_model(str(xml)), proto, onnx_nodes)
    except Exception as exc:
        raise StageError(f"{checkpoint}: FP32 export to quantize from failed: {_first_line(exc)}") from None
    rel = checkpoint.relative_to(paths.root).as_posix() if checkpoint.is_relative_to(paths.root) else str(checkpoint)
    src = Source(name, checkpoint, rel, model, onnx_path, xml, onnx_nodes, ov_nodes)
    for runtime, path in (("onnxruntime", onnx_path), ("openvino", xml)):
        src.fp32_pred[runtime] = predict(path, runtime, data.val_x, params).argmax(1)
    return src


def predict(path: Path, runtime: str, x: np.ndarray, params: Params) -> np.ndarray:
    return load_model(path, runtime=runtime, device=params.target.device).predict(x)


# --- the quantizers: each writes its files into `cdir` and returns details -------------------------------------

def _nncf_common(params: Params) -> dict[str, Any]:
    import nncf

    preset = nncf.QuantizationPreset.PERFORMANCE if params.quantize.preset == "performance" \
        else nncf.QuantizationPreset.MIXED
    device = params.target.device.upper().split(".")[0]
    target = getattr(nncf.TargetDevice, device, nncf.TargetDevice.ANY)  # CPU / GPU / NPU, else ANY
    return {"preset": preset, "target_device": target}


def _calibration(data: Data):
    import nncf

    # batch 1: NNCF's fast bias correction assumes per-sample statistics
    return nncf.Dataset([data.calib[i:i + 1] for i in range(len(data.calib))])


def _ignored(src: Source, keep: list[str]):
    import nncf

    names = [src.ov_nodes[layer] for layer in keep if src.ov_nodes.get(layer)]
    return nncf.IgnoredScope(names=names) if names else None


def build_ov_int8(src: Source, data: Data, params: Params, cdir: Path, keep: list[str]) -> dict[str, Any]:
    import nncf
    import openvino as ov

    from edgeopt.onnx_export import save_ir

    q = nncf.quantize(ov.convert_model(str(src.onnx_path)), _calibration(data), subset_size=len(data.calib),
                      ignored_scope=_ignored(src, keep), **_nncf_common(params))
    save_ir(q, cdir / "model.xml")
    return {"calibration_samples": len(data.calib), "preset": params.quantize.preset, "kept_fp32": keep}


class _LogCapture(logging.Handler):
    """Collects NNCF's log lines: the accuracy-control outcome is only reported there."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def build_ov_int8_ac(src: Source, data: Data, params: Params, cdir: Path, keep: list[str]) -> dict[str, Any]:
    import nncf
    import openvino as ov

    from edgeopt.onnx_export import save_ir

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
            ov.convert_model(str(src.onnx_path)), _calibration(data), val, validate,
            max_drop=params.quantize.max_drop, drop_type=nncf.DropType.ABSOLUTE, subset_size=len(data.calib),
            ignored_scope=_ignored(src, keep), **_nncf_common(params))
    finally:
        nncf_log.removeHandler(capture)
    save_ir(q, cdir / "model.xml")
    notes = [ln.strip() for ln in capture.lines
             if any(k in ln.lower() for k in ("accuracy drop", "reverted", "algorithm completed", "not achieved",
                                              "metric of", "unable", "maximum"))]
    return {"calibration_samples": len(data.calib), "preset": params.quantize.preset, "kept_fp32": keep,
            "max_drop": params.quantize.max_drop, "validation_samples": int(len(data.val_y)), "nncf_log": notes}


def _ort_preprocessed(src: Source, cdir: Path) -> Path:
    """ORT's recommended pre-processing (graph optimisation + shape inference) into a scratch file."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = cdir / ".pre.onnx"
    # ONNX shape inference is enough for CNNs; the symbolic one costs ~10 s of sympy import
    quant_pre_process(str(src.onnx_path), str(pre), skip_symbolic_shape=True)
    return pre


def build_ort_static(src: Source, data: Data, params: Params, cdir: Path, keep: list[str]) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from edgeopt.onnx_export import INPUT_NAME, layer_node_map

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(data.calib[i:i + 32] for i in range(0, len(data.calib), 32))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    pre = _ort_preprocessed(src, cdir)
    exclude = []
    if keep:  # node names after pre-processing: re-match layers to the graph that is quantized
        nodes = layer_node_map(src.model, onnx.load(str(pre)), data.input_shape)
        exclude = [nodes[layer] for layer in keep if layer in nodes]
    symmetric = params.quantize.preset == "performance"
    tmp = cdir / ".model.onnx"
    quantize_static(str(pre), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_exclude=exclude or None,
                    extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True})
    os.replace(tmp, cdir / "model.onnx")
    pre.unlink()
    return {"calibration_samples": len(data.calib), "format": "QDQ", "per_channel": True,
            "activations": "int8 " + ("symmetric" if symmetric else "asymmetric"), "kept_fp32": keep}


def build_ort_dynamic(src: Source, data: Data, params: Params, cdir: Path, keep: list[str]) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    pre, tmp = _ort_preprocessed(src, cdir), cdir / ".model.onnx"
    quantize_dynamic(str(pre), str(tmp), weight_type=QuantType.QInt8, per_channel=True)
    os.replace(tmp, cdir / "model.onnx")
    pre.unlink()
    return {"weights": "int8 per-channel", "activations": "quantized at run time (DynamicQuantizeLinear)"}


def build_ov_fp16(src: Source, data: Data, params: Params, cdir: Path, keep: list[str]) -> dict[str, Any]:
    from edgeopt.onnx_export import onnx_to_ir

    onnx_to_ir(src.onnx_path, cdir / "model.xml", compress_fp16=True)
    return {"weights": "fp16 (decompressed to fp32 at load time on CPUs without native fp16)"}


def build_qat(src: Source, data: Data, params: Params, cdir: Path, paths: Paths) -> dict[str, Any]:
    """NNCF PTQ of the PyTorch model as the starting point, then fine-tuning with the quantizers in place.
    (keep_sensitive is not applied: NNCF-PyTorch scopes use its own graph names.)"""
    # NNCF JIT-builds a C++ fake-quantize extension on first use (2+ minutes on 2 cores): allow for it.
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "900")
    import nncf
    import openvino as ov
    import torch

    from edgeopt.onnx_export import save_ir
    from edgeopt.training import Splits, evaluate, fit

    splits = Splits.load(paths.prepared)
    calib = torch.from_numpy(data.calib)
    # batches of 32: NNCF-PyTorch statistics collection costs ~0.2 s per item, whatever its size
    items = [calib[i:i + 32] for i in range(0, len(calib), 32)]
    model = nncf.quantize(copy.deepcopy(src.model), nncf.Dataset(items), subset_size=len(items),
                          **_nncf_common(params))
    ptq_val = evaluate(model, splits, "val")["accuracy"]
    q = params.quantize
    result = fit(model, splits, params.finetune, seed=params.seed, **fit_options(params.train),
                 epochs=q.qat_epochs, lr=q.qat_lr, desc="qat")
    model.eval()
    c, h, w = data.input_shape
    with torch.no_grad():
        ov_model = ov.convert_model(model, example_input=torch.zeros(1, c, h, w), input=[(-1, c, h, w)])
    save_ir(ov_model, cdir / "model.xml")
    return {"calibration_samples": len(data.calib), "preset": params.quantize.preset, "epochs": q.qat_epochs,
            "lr": q.qat_lr, "recipe": "finetune (SGD) with quantize.qat_epochs / qat_lr",
            "ptq_val_accuracy_pytorch": round(ptq_val, 4), "qat_val_accuracy_pytorch": round(result.best_val_accuracy, 4),
            "training": result.summary(), "history": result.history}


BUILDERS: dict[str, Callable[..., dict[str, Any]]] = {
    "ov_int8": build_ov_int8, "ov_int8_ac": build_ov_int8_ac, "ort_int8_static": build_ort_static,
    "ort_int8_dynamic": build_ort_dynamic, "ov_fp16": build_ov_fp16}


# --- one candidate --------------------------------------------------------------------------------------------

def make_candidate(src: Source, mode: str, data: Data, params: Params, paths: Paths, out: Path,
                   keep: list[str]) -> dict[str, Any]:
    """Build, inspect and validate one candidate; a failure becomes status 'failed' with the reason."""
    spec = MODES[mode]
    name = f"{src.name}_{mode}"
    files = OV_FILES if spec.format == "openvino_ir" else ONNX_FILES
    entry: dict[str, Any] = {
        "name": name, "source": src.name, "source_checkpoint": src.rel_checkpoint, "mode": mode,
        "technique": spec.technique, "precision": spec.precision, "runtime": spec.runtime, "format": spec.format,
        "files": [f"{name}/{f}" for f in files], "primary": f"{name}/{files[0]}", "status": "ok", "reason": None,
        "details": {}}
    cdir = out / name
    cdir.mkdir(parents=True)
    t0 = time.perf_counter()
    try:
        if mode == "qat_int8":
            details = build_qat(src, data, params, cdir, paths)
        else:
            details = BUILDERS[mode](src, data, params, cdir, keep)
        details.update(inspect_candidate(src, cdir / files[0], spec, data, params))
    except Exception as exc:  # one mode failing must not sink the others
        log.warning("quantize: %s failed: %s", name, _first_line(exc))
        shutil.rmtree(cdir, ignore_errors=True)
        entry.update(status="failed", reason=f"{mode} failed: {_first_line(exc)}", files=[], primary=None)
        details = {}
    details["seconds"] = round(time.perf_counter() - t0, 3)
    entry["details"] = details
    if mode == "ov_int8_ac" and entry["status"] == "ok":
        _judge_accuracy_control(entry, params)
    return entry


def inspect_candidate(src: Source, primary: Path, spec: Mode, data: Data, params: Params) -> dict[str, Any]:
    """Size, op counts, which layers stayed FP32, validation accuracy in its runtime and agreement with FP32."""
    summary = ov_summary(primary) if spec.runtime == "openvino" else onnx_summary(primary)
    graph = src.ov_nodes if spec.runtime == "openvino" else src.onnx_nodes
    weighted = summary.pop("_weighted")
    by_node = {v: k for k, v in graph.items() if v}
    fp32_layers = sorted(by_node.get(n, n) for n, quant in weighted.items() if not quant)
    pred = predict(primary, spec.runtime, data.val_x, params).argmax(1)
    ref = src.fp32_pred[spec.runtime]
    acc = 100.0 * float((pred == data.val_y).mean())
    fp32_acc = 100.0 * float((ref == data.val_y).mean())
    return {"file_bytes": tree_size(primary.parent), "gzip_bytes": gzip_size(primary.parent), "ops": summary,
            "fp32_layers": fp32_layers if spec.precision == "int8" else None,
            "val_accuracy": round(acc, 4), "fp32_val_accuracy": round(fp32_acc, 4),
            "val_drop": round(fp32_acc - acc, 4), "agreement_fp32": round(float((pred == ref).mean()), 6),
            "val_samples": int(len(data.val_y))}


def _judge_accuracy_control(entry: dict[str, Any], params: Params) -> None:
    """Record whether max_drop was met on validation (measured here, in OpenVINO), and why not."""
    d = entry["details"]
    limit = 100.0 * params.quantize.max_drop
    d["max_drop_points"] = limit
    d["max_drop_met"] = bool(d["val_drop"] <= limit + 1e-9)
    if d["max_drop_met"]:
        d["max_drop_reason"] = None
    elif d.get("ops", {}).get("quantized_weighted_ops", 0) == 0:
        d["max_drop_reason"] = "every layer was reverted to FP32 and the drop remains: it is not caused by INT8"
    else:
        d["max_drop_reason"] = ("NNCF could not reach max_drop by reverting layers (see nncf_log); consider a "
                                "larger quantize.calibration_size, quantize.qat or a larger max_drop")


# --- the stage ------------------------------------------------------------------------------------------------

def _producer_stage(name: str) -> str:
    return {"clustered": "cluster", "finetuned": "finetune", "student": "distill"}.get(name, name)


def plan(params: Params, paths: Paths) -> list[tuple[str, Path, list[str]]]:
    """(source name, checkpoint, modes) to produce."""
    q = params.quantize
    out = [(q.source, paths.checkpoint(q.source), list(dict.fromkeys(q.modes)) + (["qat_int8"] if q.qat else []))]
    if params.distill.enabled and params.distill.quantize_modes:
        out.append(("student", paths.checkpoint("student"), list(dict.fromkeys(params.distill.quantize_modes))))
    return out


@stage("quantize")
def run(params: Params, paths: Paths) -> dict[str, Any]:
    set_seed(params.seed, params.train.threads)
    todo = plan(params, paths)
    for name, ckpt, _ in todo:
        if not ckpt.exists():
            raise CheckpointError(f"{ckpt}: checkpoint {name!r} to quantize not found; run the stage that "
                                  f"writes it first (`edgeopt {_producer_stage(name)}`)")
    keep = sensitive_layers(params, paths)
    data = load_data(params, paths)
    candidates: list[dict[str, Any]] = []
    with atomic_dir(paths.quantized) as out:
        for name, ckpt, modes in todo:
            src = prepare_source(name, ckpt, params, paths, data, out)
            layer_keep = keep if name == params.quantize.source else []
            missing = [k for k in layer_keep if k not in src.onnx_nodes]
            if missing:
                raise StageError(f"{paths.report('sensitivity.json')}: layers {missing} are not in {ckpt}; "
                                 "rerun `edgeopt sensitivity`")
            for mode in modes:
                entry = make_candidate(src, mode, data, params, paths, out, layer_keep)
                candidates.append(entry)
                d = entry["details"]
                print(f"quantize: {entry['name']}: {entry['status']}" + (
                    f", val {d['val_accuracy']:.2f}% (FP32 {d['fp32_val_accuracy']:.2f}%), {d['file_bytes']} B"
                    if entry["status"] == "ok" else f" ({entry['reason']})"))
        write_json(out / "index.json", {"candidates": candidates})
    ok = [c for c in candidates if c["status"] == "ok"]
    return {"candidates": {c["name"]: {"status": c["status"], "reason": c["reason"], "mode": c["mode"],
                                       "source": c["source"], "runtime": c["runtime"], "precision": c["precision"],
                                       **{k: v for k, v in c["details"].items() if k not in ("history", "nncf_log")}}
                           for c in candidates},
            "ok": len(ok), "failed": len(candidates) - len(ok), "kept_fp32": keep,
            "calibration_samples": int(len(data.calib)), "val_samples": int(len(data.val_y))}



if __name__ == "__main__":
    import sys

    from edgeopt.stage import stage_main

    sys.exit(stage_main(run))
