"""Export every candidate to its runtime format and check it against its PyTorch source -> models/exported/.

FP32 checkpoints become `<source>_fp32_ort` (ONNX) and `<source>_fp32_ov` (OpenVINO IR); quantized candidates
from models/quantized/index.json are copied in, so models/exported/ is self-contained. Each candidate runs in
its runtime on `export.parity_samples` validation images next to the PyTorch source: top-1 agreement and max
|logit difference|. A candidate that fails is kept with `status: failed` and the reason, never passed on.
"""
from __future__ import annotations

import logging
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeopt.arrays import load_meta, normalize, open_split, subset_indices
from edgeopt.candidates import (FORMAT_OF, FP32_SOURCES, allowed_runtimes, baselines, files_of, fp32_name,
                                input_shape, lineage)
from edgeopt.errors import CheckpointError, RuntimeModelError, StageError, first_line
from edgeopt.io import atomic_dir, read_json, sha256_file, write_json
from edgeopt.models import load_checkpoint
from edgeopt.params import Params
from edgeopt.paths import Paths
from edgeopt.runtime import load_model
from edgeopt.stage import stage, stage_main
from edgeopt.stats import model_stats

log = logging.getLogger("edgeopt.export")


class Source:
    """A PyTorch checkpoint, its logits on the parity images and its statistics (computed once)."""

    def __init__(self, name: str, path: Path, x: np.ndarray, params: Params, root: Path, meta: dict | None = None):
        self.name, self.path = name, path
        self.rel = (path.relative_to(root) if path.is_relative_to(root) else path).as_posix()
        self.model, self.config, info = load_checkpoint(path, meta=meta)  # made for other data -> CheckpointError
        with torch.no_grad():
            self.logits = self.model(torch.from_numpy(x)).numpy()
        self.stats = model_stats(self.model, input_shape(self.config))
        self.stages = list(info.get("stages") or lineage(name, info.get("teacher", params.distill.teacher)))


def parity(path: Path, runtime: str, precision: str, src: Source, x: np.ndarray, params: Params) -> dict[str, Any]:
    """Run the exported file in its runtime next to the PyTorch source; FP32 must match logits, others top-1."""
    ex = params.export
    out = load_model(path, runtime=runtime, device=params.target.device).predict(x)
    agreement = float((out.argmax(1) == src.logits.argmax(1)).mean())
    max_diff = float(np.abs(out - src.logits).max())
    fp32 = precision == "fp32"
    min_agree = ex.min_agreement if fp32 else ex.min_agreement_quantized
    problems = [f"top-1 agreement {agreement:.4f} < {min_agree}"] if agreement < min_agree else []
    if fp32 and max_diff > ex.max_abs_diff:
        problems.append(f"max |logit diff| {max_diff:.3g} > export.max_abs_diff {ex.max_abs_diff}")
    return {"agreement": round(agreement, 6), "max_abs_diff": float(f"{max_diff:.6g}"), "samples": int(len(x)),
            "min_agreement": min_agree, "max_abs_diff_limit": ex.max_abs_diff if fp32 else None,
            "passed": not problems, "problems": problems, "against": src.rel}


def _entry(name: str, src: Source | None, out_dir: Path, *, source: str, stages: list[str], technique: str,
           precision: str, runtime: str, fmt: str, files: list[str], primary: str) -> dict[str, Any]:
    stats = src.stats if src else {}
    return {"name": name, "source": source, "stages": stages, "technique": technique, "precision": precision,
            "runtime": runtime, "format": fmt, "files": files, "primary": primary,
            "sha256": {f: sha256_file(out_dir / f) for f in files if (out_dir / f).is_file()},
            **{k: stats.get(k) for k in ("params", "nonzero_params", "macs", "unique_weights")},
            "parity": None, "status": "ok", "reason": None}


def _check(entry: dict[str, Any], out_dir: Path, src: Source, x: np.ndarray, params: Params) -> None:
    """Fill in parity; mark the entry failed (with the reason) when the file does not run or disagrees."""
    try:
        entry["parity"] = p = parity(out_dir / entry["primary"], entry["runtime"], entry["precision"], src, x, params)
    except RuntimeModelError as exc:
        entry.update(status="failed", reason=f"does not run in {entry['runtime']}: {exc}")
        return
    if not p["passed"]:
        entry.update(status="failed", reason=f"parity check vs {src.rel} on {p['samples']} validation "
                                             f"images failed: {'; '.join(p['problems'])}")


def _export_fp32(src: Source, out_dir: Path, allowed: tuple[str, ...], x: np.ndarray,
                 params: Params) -> list[dict[str, Any]]:
    from edgeopt.onnx_export import export_onnx, onnx_to_ir

    entries = []
    scratch = out_dir / f".{src.name}.onnx"  # IR is converted from ONNX even when ONNX Runtime is excluded
    error = None
    try:
        export_onnx(src.model, (1, *input_shape(src.config)), scratch, params.export.opset)
    except Exception as exc:  # unsupported operator, checker failure: the candidates fail, the stage goes on
        error = f"ONNX export (opset {params.export.opset}) failed: {first_line(exc)}"
    for runtime in allowed:
        name, fmt = fp32_name(src.name, runtime), FORMAT_OF[runtime]
        (out_dir / name).mkdir()
        files = files_of(name, fmt)
        err = error
        if err is None:
            try:
                if runtime == "onnxruntime":
                    shutil.copyfile(scratch, out_dir / files[0])
                else:
                    onnx_to_ir(scratch, out_dir / files[0], compress_fp16=False)
            except Exception as exc:
                err = f"conversion to OpenVINO IR failed: {first_line(exc)}"
        technique = ("FP32 ONNX (opset %d), ONNX Runtime CPU" if runtime == "onnxruntime"
                     else "FP32 OpenVINO IR (from ONNX opset %d)") % params.export.opset
        e = _entry(name, src, out_dir, source=src.name, stages=src.stages + ["export"], technique=technique,
                   precision="fp32", runtime=runtime, fmt=fmt, files=files, primary=files[0])
        if err:
            e.update(status="failed", reason=err)
        else:
            _check(e, out_dir, src, x, params)
        entries.append(e)
    scratch.unlink(missing_ok=True)
    return entries


def _copy_quantized(q: dict[str, Any], paths: Paths, out_dir: Path, sources: dict[str, Source | None],
                    x: np.ndarray, params: Params) -> dict[str, Any]:
    ckpt = paths.root / q["source_checkpoint"] if q.get("source_checkpoint") else paths.checkpoint(q["source"])
    key = ckpt.as_posix()
    if key not in sources:
        try:
            sources[key] = Source(q["source"], ckpt, x, params, paths.root, load_meta(paths.prepared))
        except CheckpointError as exc:
            sources[key] = None
            log.warning("%s", exc)
    src = sources[key]
    for rel in q.get("files", []) if q.get("status") == "ok" else []:
        if (paths.quantized / rel).is_file():
            (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(paths.quantized / rel, out_dir / rel)
    e = _entry(q["name"], src, out_dir, source=q["source"], stages=(src.stages if src else []) + ["quantize"],
               technique=q.get("technique", q.get("mode", "")), precision=q.get("precision", "int8"),
               runtime=q["runtime"], fmt=q.get("format", ""), files=list(q.get("files", [])),
               primary=q.get("primary", ""))
    e["details"] = q.get("details")
    missing = [f for f in e["files"] if f not in e["sha256"]]
    if q.get("status") != "ok":
        e.update(status="failed", reason=f"quantize: {q.get('reason') or 'failed'}")
    elif src is None:
        e.update(status="failed", reason=f"{ckpt}: source checkpoint missing or unreadable; cannot check parity")
    elif missing:
        e.update(status="failed", reason=f"{paths.quantized}: files {missing} listed in index.json are missing; "
                                         "rerun `edgeopt quantize`")
    else:
        _check(e, out_dir, src, x, params)
    return e


def _real_checkpoint(path) -> bool:
    """Exists and is not a placeholder (distill.enabled/also_without_kd off write skipped=True stand-ins)."""
    if not path.exists():
        return False
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # corrupt or not tensors only: Source() loads it via load_checkpoint, which says so and names it
        return True
    info = payload.get("info") if isinstance(payload, dict) else None
    return not (isinstance(info, dict) and info.get("skipped", False))


@stage("export")
def run(params: Params, paths: Paths) -> dict[str, Any]:
    allowed = allowed_runtimes(params.target.runtime)
    meta = load_meta(paths.prepared)
    images, labels = open_split(paths.prepared, "val")
    idx = subset_indices(labels, params.export.parity_samples, params.seed)
    x = normalize(images[idx], meta["mean"], meta["std"])

    fp32_sources = [s for s in FP32_SOURCES if s == "baseline" or _real_checkpoint(paths.checkpoint(s))]
    index_path = paths.quantized / "index.json"
    quantized = read_json(index_path, "quantized index")["candidates"] if index_path.exists() else []
    if not index_path.exists():
        log.warning("%s not found: exporting FP32 candidates only (run `edgeopt quantize` for INT8/FP16)", index_path)
    skipped = {q["name"]: f"runtime {q['runtime']!r} excluded by target.runtime={params.target.runtime!r}"
               for q in quantized if q["runtime"] not in allowed}

    with atomic_dir(paths.exported) as out_dir:
        sources: dict[str, Source | None] = {}
        entries: list[dict[str, Any]] = []
        for name in fp32_sources:
            src = Source(name, paths.checkpoint(name), x, params, paths.root, meta)  # missing/bad -> CheckpointError
            sources[src.path.as_posix()] = src
            entries += _export_fp32(src, out_dir, allowed, x, params)
        for q in quantized:
            if q["name"] not in skipped:
                entries.append(_copy_quantized(q, paths, out_dir, sources, x, params))
        names = [e["name"] for e in entries]
        if len(set(names)) != len(names):
            raise StageError(f"{index_path}: duplicate candidate names {sorted({n for n in names if names.count(n) > 1})}")
        doc = {"baselines": baselines(allowed),
               "input": {"shape": [1, *input_shape(meta)],
                         "layout": meta.get("layout", "NCHW"), "dtype": meta.get("dtype", "float32"),
                         "mean": meta["mean"], "std": meta["std"], "color_order": meta.get("color_order"),
                         "image_size": meta["image_size"], "classes": meta["classes"]},
                 "opset": params.export.opset,
                 "candidates": entries}
        write_json(out_dir / "candidates.json", doc)

    for e in entries:
        p = e["parity"] or {}
        if e["status"] == "ok":
            log.info("%-30s ok      agreement %.4f  max diff %.3g", e["name"], p["agreement"], p["max_abs_diff"])
        else:
            log.warning("%-30s FAILED  %s", e["name"], e["reason"])
    return {"candidates": len(entries), "ok": sum(e["status"] == "ok" for e in entries),
            "failed": {e["name"]: e["reason"] for e in entries if e["status"] != "ok"},
            "skipped": skipped, "runtimes": list(allowed),
            "parity": {e["name"]: {k: e["parity"][k] for k in ("agreement", "max_abs_diff", "passed")}
                       for e in entries if e["parity"]}}


if __name__ == "__main__":  # what dvc.yaml runs: python -m stages.<name>
    sys.exit(stage_main(run))
