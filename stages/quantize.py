"""quantize: INT8 / FP16 candidates from the compressed teacher (`quantize.source`) and the distilled student.

Each mode is a plug-in, one module in edgeopt/quantizers/ (ov_int8, ov_int8_ac, ort_int8_static, ort_int8_dynamic,
ov_fp16, and qat_int8 when quantize.qat is true): its runtime, precision, format and build. Every candidate
`<source>_<mode>` (models/quantized/, docs/ARTIFACTS.md) starts from the same FP32 ONNX export, kept in
`<source>_fp32_src/`. Calibration uses a seeded, stratified subset of *train*; validation numbers use the
validation split, in the model's runtime. A mode that fails is recorded as failed with the reason; the stage fails
only when a source is unusable.
"""
from __future__ import annotations

import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt import quantizers
from edgeopt.arrays import Calibration, calibration_set
from edgeopt.candidates import files_of, producer, quantized_name
from edgeopt.errors import CheckpointError, StageError, first_line
from edgeopt.graphs import onnx_summary, ov_summary
from edgeopt.io import atomic_dir, gzip_size, read_json, tree_size, write_json
from edgeopt.models import load_checkpoint
from edgeopt.params import Params
from edgeopt.paths import Paths
from edgeopt.quantizers import Job, Quantizer, Source
from edgeopt.runtime import load_model
from edgeopt.stage import stage, stage_main
from edgeopt.training import set_seed

log = logging.getLogger("edgeopt.quantize")


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


def prepare_source(name: str, checkpoint: Path, params: Params, paths: Paths, data: Calibration,
                   out: Path) -> Source:
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
        raise StageError(f"{checkpoint}: FP32 export to quantize from failed: "
                         f"{first_line(exc, 400, with_type=True)}") from None
    rel = checkpoint.relative_to(paths.root).as_posix() if checkpoint.is_relative_to(paths.root) else str(checkpoint)
    src = Source(name, checkpoint, rel, model, onnx_path, xml, onnx_nodes, ov_nodes)
    for runtime, path in (("onnxruntime", onnx_path), ("openvino", xml)):
        src.fp32_pred[runtime] = predict(path, runtime, data.val_x, params).argmax(1)
    return src


def predict(path: Path, runtime: str, x: np.ndarray, params: Params) -> np.ndarray:
    return load_model(path, runtime=runtime, device=params.target.device).predict(x)


def make_candidate(src: Source, mode: str, data: Calibration, params: Params, paths: Paths, out: Path,
                   keep: list[str]) -> dict[str, Any]:
    """Build, inspect and validate one candidate; a failure becomes status 'failed' with the reason."""
    q = quantizers.get(mode)
    name = quantized_name(src.name, mode)
    files = files_of(name, q.format)
    entry: dict[str, Any] = {
        "name": name, "source": src.name, "source_checkpoint": src.rel_checkpoint, "mode": mode,
        "technique": q.technique, "precision": q.precision, "runtime": q.runtime, "format": q.format,
        "files": files, "primary": files[0], "status": "ok", "reason": None, "details": {}}
    cdir = out / name
    cdir.mkdir(parents=True)
    t0 = time.perf_counter()
    try:
        details = q.build(Job(src, data, params, cdir, out / files[0], keep, paths))
        details.update(inspect_candidate(src, out / files[0], q, data, params))
    except Exception as exc:  # one mode failing must not sink the others
        reason = first_line(exc, 400, with_type=True)
        log.warning("quantize: %s failed: %s", name, reason)
        shutil.rmtree(cdir, ignore_errors=True)
        entry.update(status="failed", reason=f"{mode} failed: {reason}", files=[], primary=None)
        details = {}
    details["seconds"] = round(time.perf_counter() - t0, 3)
    entry["details"] = details
    if q.review is not None and entry["status"] == "ok":
        q.review(details, params)
    return entry


def inspect_candidate(src: Source, primary: Path, q: Quantizer, data: Calibration, params: Params) -> dict[str, Any]:
    """Size, op counts, which layers stayed FP32, validation accuracy in its runtime and agreement with FP32."""
    summary = ov_summary(primary) if q.format == "openvino_ir" else onnx_summary(primary)
    graph = src.ov_nodes if q.runtime == "openvino" else src.onnx_nodes
    weighted = summary.pop("_weighted")
    by_node = {v: k for k, v in graph.items() if v}
    fp32_layers = sorted(by_node.get(n, n) for n, quant in weighted.items() if not quant)
    pred = predict(primary, q.runtime, data.val_x, params).argmax(1)
    ref = src.fp32_pred[q.runtime]
    acc = 100.0 * float((pred == data.val_y).mean())
    fp32_acc = 100.0 * float((ref == data.val_y).mean())
    return {"file_bytes": tree_size(primary.parent), "gzip_bytes": gzip_size(primary.parent), "ops": summary,
            "fp32_layers": fp32_layers if q.precision == "int8" else None,
            "val_accuracy": round(acc, 4), "fp32_val_accuracy": round(fp32_acc, 4),
            "val_drop": round(fp32_acc - acc, 4), "agreement_fp32": round(float((pred == ref).mean()), 6),
            "val_samples": int(len(data.val_y))}


# --- the stage ------------------------------------------------------------------------------------------------

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
                                  f"writes it first (`edgeopt {producer(name)}`)")
    keep = sensitive_layers(params, paths)
    data = calibration_set(paths.prepared, params.quantize.calibration_size, params.seed)
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


if __name__ == "__main__":  # what dvc.yaml runs: python -m stages.<name>
    sys.exit(stage_main(run))
