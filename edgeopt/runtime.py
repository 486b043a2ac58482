"""Run an exported model file in its runtime: ONNX in ONNX Runtime, OpenVINO IR in OpenVINO. Torch-free.

Everything that executes a shipped model (export parity, evaluate, bench, predict on the device) goes through
`load_model(...).predict(x)`, so the numbers measured are those of the code path the device runs. The runtimes
are imported lazily: a device may have only one of them installed.

    model = load_model("models/exported/baseline_fp32_ov/model.xml", threads=1)
    logits = model.predict(normalize(images_uint8_nhwc, meta["mean"], meta["std"]))
"""
from __future__ import annotations

import functools
import math
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeopt.errors import BenchSettingsError, RuntimeModelError, first_line

RUNTIMES = ("openvino", "onnxruntime")
FORMATS = {"onnxruntime": "onnx", "openvino": "openvino_ir"}
SUFFIX_RUNTIME = {".onnx": "onnxruntime", ".xml": "openvino"}


# Bench settings a run can finish with; params.yaml `bench` and the `edgeopt bench` flags share them.
BENCH_LIMITS: dict[str, tuple[float, float]] = {"threads": (1, 256), "streams": (1, 64), "warmup": (0, 10_000),
                                                "runs": (1, 100_000), "time_budget_s": (0.0, 3600.0)}


def check_bench_settings(**settings: Any) -> None:
    """Refuse settings outside BENCH_LIMITS (integers, except the time budget) before anything is timed."""
    bad = []
    for key, value in settings.items():
        lo, hi = BENCH_LIMITS[key]
        number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
        whole = key == "time_budget_s" or isinstance(value, (int, np.integer))
        if not (number and whole and math.isfinite(value) and lo <= value <= hi):
            bad.append(f"{key}={value!r} (allowed: {'' if key == 'time_budget_s' else 'integer '}{lo:g}..{hi:g})")
    if bad:
        raise BenchSettingsError(f"bench settings refused: {', '.join(bad)}; set them with --threads/--streams/"
                                 "--warmup/--runs/--time-budget, or bench.* in params.yaml")


def runtime_for(path: str | Path) -> str:
    """The runtime a model file is for, from its suffix (.onnx -> onnxruntime, .xml -> openvino)."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIX_RUNTIME:
        raise RuntimeModelError(f"{path}: unknown model format {suffix!r}; expected an ONNX file (.onnx) or an "
                                "OpenVINO IR (.xml with its .bin next to it)")
    return SUFFIX_RUNTIME[suffix]


def runtime_versions() -> dict[str, str | None]:
    """Installed runtime versions (None when a runtime is not installed)."""
    out: dict[str, str | None] = {}
    for name in RUNTIMES:
        try:
            out[name] = _import_runtime(name).__version__.split("-")[0]
        except RuntimeModelError:
            out[name] = None
    return out


def hardware_info() -> dict[str, Any]:
    """What a latency number was measured on: CPU model, cores, machine, OS."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu or "unknown", "cores": usable_cores(), "machine": platform.machine(),
            "system": platform.system(), "python": platform.python_version()}


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (a container's cpuset, `taskset`, a benchmark job's
    share of the machine), not every core the machine has; os.cpu_count() counts those."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _import_runtime(runtime: str):
    try:
        if runtime == "onnxruntime":
            import onnxruntime
            return onnxruntime
        if runtime == "openvino":
            import openvino
            return openvino
    except ImportError as exc:
        raise RuntimeModelError(f"runtime {runtime!r} is not installed ({exc}); "
                                f"install the `{runtime}` package to run this model") from None
    raise RuntimeModelError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")


@dataclass
class RuntimeModel:
    """A loaded model: `predict(x NCHW float32) -> logits (N, classes) float32`, any batch size."""
    path: Path
    runtime: str
    input_name: str
    input_shape: list[int | None]  # None for a dynamic dimension
    settings: dict[str, Any] = field(default_factory=dict)
    _run: Callable[[np.ndarray], np.ndarray] | None = field(default=None, repr=False)

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the model was exported with when it is static, else None."""
        return self.input_shape[0] if self.input_shape else None

    def sample_input(self, batch: int = 1, seed: int = 0) -> np.ndarray:
        """A random input of the model's shape (dynamic dimensions other than batch must be given by the model)."""
        dims = list(self.input_shape[1:])
        if any(d is None for d in dims):
            raise RuntimeModelError(f"{self.path}: input {self.input_name!r} has dynamic dimensions "
                                    f"{self.input_shape}; cannot infer the input size")
        rng = np.random.default_rng(seed)
        return rng.standard_normal((batch, *dims)).astype(np.float32)

    def predict(self, x: np.ndarray) -> np.ndarray:
        assert self._run is not None
        x = np.ascontiguousarray(x, dtype=np.float32)
        fb = self.fixed_batch
        if fb is None or len(x) == fb:
            return self._call(x)
        # a static batch (e.g. exported with batch 1): run chunk by chunk, padding the last chunk
        n, pad = len(x), -len(x) % fb
        if pad:
            x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), np.float32)])
        return np.concatenate([self._call(x[i:i + fb]) for i in range(0, len(x), fb)])[:n]

    def _call(self, x: np.ndarray) -> np.ndarray:
        try:
            return self._run(x)  # type: ignore[misc]
        except Exception as exc:
            raise RuntimeModelError(f"{self.path}: inference failed in {self.runtime} for input shape "
                                    f"{list(x.shape)} (model expects {self.input_shape}): {first_line(exc)}") from None


def _dim(d: Any) -> int | None:
    return int(d) if isinstance(d, (int, np.integer)) and int(d) > 0 else None


def load_model(path: str | Path, *, runtime: str | None = None, threads: int = 0, streams: int = 1,
               device: str = "CPU", inference_precision: str | None = "f32") -> RuntimeModel:
    """Load a model file for inference.

    threads: intra-op threads (0 = runtime default, all cores). streams: OpenVINO streams.
    inference_precision: OpenVINO INFERENCE_PRECISION_HINT. "f32" (default) keeps FP32 layers in FP32: on CPUs
    with AVX512-BF16/AMX OpenVINO would otherwise silently run them in bf16, so the accuracy verified here would
    not be the accuracy on a plain-FP32 edge CPU. None = the runtime's choice.
    """
    path = Path(path)
    runtime = runtime or runtime_for(path)
    if not path.is_file():
        raise RuntimeModelError(f"{path}: model file not found; run `edgeopt export` or pull the release again")
    if runtime == "onnxruntime":
        return _load_ort(path, threads)
    if runtime == "openvino":
        return _load_ov(path, threads, streams, device, inference_precision)
    raise RuntimeModelError(f"{path}: unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")


def _load_ort(path: Path, threads: int) -> RuntimeModel:
    ort = _import_runtime("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise RuntimeModelError(f"{path}: not a loadable ONNX model (corrupt, truncated or unsupported): "
                                f"{first_line(exc)}; re-export it or pull the release again") from None
    inp, out = sess.get_inputs()[0], sess.get_outputs()[0].name
    if len(sess.get_inputs()) != 1:
        raise RuntimeModelError(f"{path}: expected one input (the image batch), found "
                                f"{[i.name for i in sess.get_inputs()]}")
    name = inp.name
    return RuntimeModel(path, "onnxruntime", name, [_dim(d) for d in inp.shape],
                        {"threads": threads, "version": ort.__version__},
                        lambda x: sess.run([out], {name: x})[0])


@functools.lru_cache(maxsize=1)
def _ov_core():
    """One Core per process: it loads the device plugins once, not per model (export checks ~16 of them)."""
    return _import_runtime("openvino").Core()


def _load_ov(path: Path, threads: int, streams: int, device: str, precision: str | None) -> RuntimeModel:
    ov = _import_runtime("openvino")
    weights = path.with_suffix(".bin")
    if not weights.is_file():
        raise RuntimeModelError(f"{path}: its weights file {weights} is missing; an OpenVINO IR is the .xml and "
                                "the .bin together; copy both")
    core = _ov_core()
    try:
        model = core.read_model(str(path), str(weights))
    except Exception as exc:
        raise RuntimeModelError(f"{path}: not a loadable OpenVINO IR (corrupt or truncated .xml/.bin): "
                                f"{first_line(exc)}; re-export it or pull the release again") from None
    if len(model.inputs) != 1:
        raise RuntimeModelError(f"{path}: expected one input (the image batch), found {len(model.inputs)}")
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": str(streams)}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    if precision and device.upper().startswith("CPU"):
        config["INFERENCE_PRECISION_HINT"] = precision
    try:
        compiled = core.compile_model(model, device, config)
    except Exception as exc:
        raise RuntimeModelError(f"{path}: OpenVINO could not compile the model for device {device!r}: "
                                f"{first_line(exc)}") from None
    pshape = model.inputs[0].get_partial_shape()
    shape = [d.get_length() if d.is_static else None for d in pshape]
    name = model.inputs[0].get_any_name() if model.inputs[0].get_names() else "input"
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        request.infer({0: x})
        return np.array(request.get_output_tensor(0).data, copy=True)

    return RuntimeModel(path, "openvino", name, shape,
                        {"threads": threads, "streams": streams, "device": device,
                         "inference_precision": precision, "version": ov.__version__.split("-")[0]}, run)


def predict_images(model: RuntimeModel, images: np.ndarray, mean: list[float], std: list[float]) -> np.ndarray:
    """Logits for uint8 NHWC images, preprocessed by the input contract (edgeopt.arrays.normalize)."""
    from edgeopt.arrays import normalize

    return model.predict(normalize(images, mean, std))


# --- latency ------------------------------------------------------------------------------------------------

def time_model(model: RuntimeModel, *, warmup: int = 20, runs: int = 200, time_budget_s: float = 0.0,
               x: np.ndarray | None = None) -> dict[str, Any]:
    """Latency of `model.predict` at batch 1 (see `time_calls`)."""
    x = model.sample_input(1) if x is None else x
    return time_calls(lambda: model.predict(x), warmup=warmup, runs=runs, time_budget_s=time_budget_s)


def time_calls(fn: Callable[[], Any], *, warmup: int, runs: int, time_budget_s: float = 0.0) -> dict[str, Any]:
    """Warm-up, then `runs` timed calls, or as many as fit in `time_budget_s` when > 0 (at least one).
    Milliseconds; throughput is sequential (one request at a time)."""
    import time

    check_bench_settings(warmup=warmup, runs=runs, time_budget_s=time_budget_s)
    for _ in range(warmup):
        fn()
    times: list[float] = []
    deadline = time.perf_counter() + time_budget_s if time_budget_s > 0 else None
    while (len(times) < runs) if deadline is None else (not times or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return latency_summary(times)


def latency_summary(seconds: list[float]) -> dict[str, Any]:
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"p50_ms": round(float(p50), 4), "p90_ms": round(float(p90), 4), "p99_ms": round(float(p99), 4),
            "mean_ms": round(float(ms.mean()), 4), "min_ms": round(float(ms.min()), 4),
            "throughput_fps": round(1000.0 / float(ms.mean()), 1), "runs": int(len(ms))}


@dataclass
class BenchTarget:
    """One model to time: the name it is reported under, its primary file, runtime and file hashes."""
    name: str
    path: Path
    runtime: str
    sha256: dict[str, str] = field(default_factory=dict)
    expected_sha256: dict[str, str] = field(default_factory=dict)  # from candidates.json, verified first
    input_shape: list[int] | None = None  # from candidates.json, for models with dynamic spatial dimensions


def bench_report(targets: list[BenchTarget], *, profile: str, threads: int = 1, streams: int = 1,
                 warmup: int = 20, runs: int = 200, time_budget_s: float = 0.0, device: str = "CPU",
                 inference_precision: str | None = "f32", base_dir: Path | None = None) -> dict[str, Any]:
    """Time every target; the `metrics/bench.json` / device.json format (docs/ARTIFACTS.md).

    A target that cannot run here (runtime missing, file changed or corrupt) is reported with
    `status: failed` and the reason instead of a latency, so it can never pass a latency gate by omission.
    """
    from edgeopt.io import sha256_file

    check_bench_settings(threads=threads, streams=streams, warmup=warmup, runs=runs, time_budget_s=time_budget_s)
    results: dict[str, Any] = {}
    for t in targets:
        entry: dict[str, Any] = {"runtime": t.runtime, "file": str(t.path)}
        try:
            actual = t.sha256 or {}
            if t.expected_sha256:
                base = base_dir or t.path.parent
                actual = {rel: sha256_file(base / rel) if (base / rel).is_file() else None
                          for rel in t.expected_sha256}
                changed = sorted(rel for rel, h in actual.items() if h != t.expected_sha256[rel])
                if changed:
                    raise RuntimeModelError(f"{t.name}: files {changed} are missing or differ from the sha256 in "
                                            "candidates.json; pull the release again")
            model = load_model(t.path, runtime=t.runtime, threads=threads, streams=streams, device=device,
                               inference_precision=inference_precision)
            x = None
            if t.input_shape and None in model.input_shape[1:]:
                x = np.random.default_rng(0).standard_normal([1, *t.input_shape[1:]]).astype(np.float32)
            entry.update(time_model(model, warmup=warmup, runs=runs, time_budget_s=time_budget_s, x=x))
            entry.update({"sha256": actual, "status": "ok", "reason": None})
        except RuntimeModelError as exc:
            entry.update({"status": "failed", "reason": str(exc)})
        results[t.name] = entry
    return {"hardware": hardware_info(),
            "runtimes": runtime_versions(),
            "profile": {"name": profile, "threads": threads, "streams": streams, "batch": 1, "warmup": warmup,
                        "runs": runs, "time_budget_s": time_budget_s, "device": device,
                        "inference_precision": inference_precision},
            "candidates": results}


def targets_from_candidates(candidates_json: str | Path, runtimes: tuple[str, ...] = RUNTIMES
                            ) -> tuple[list[BenchTarget], dict[str, Any]]:
    """Bench targets for the `ok` candidates of a candidates.json (export stage output or a pulled copy).

    Returns (targets, skipped) where skipped maps candidate name -> reason (failed at export, runtime excluded).
    """
    from edgeopt.errors import PathEscapeError
    from edgeopt.io import read_json
    from edgeopt.paths import confined

    path = Path(candidates_json)
    try:
        doc = read_json(path, "candidates file")
    except (FileNotFoundError, ValueError) as exc:
        raise RuntimeModelError(str(exc)) from None
    base = path.parent
    cands = doc.get("candidates") if isinstance(doc, dict) else None
    if not isinstance(cands, list) or not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in cands):
        raise RuntimeModelError(f"{path}: 'candidates' must be a list of objects with a 'name'; re-export or pull "
                                "the candidates file again")
    inp = doc.get("input") if isinstance(doc.get("input"), dict) else {}
    targets, skipped = [], {}
    for c in cands:
        if c.get("status") != "ok":
            skipped[c["name"]] = {"runtime": c.get("runtime"), "status": "failed",
                                  "reason": f"not benchmarked: failed at export: {c.get('reason')}"}
        elif c.get("runtime") not in runtimes:
            skipped[c["name"]] = {"runtime": c.get("runtime"), "status": "skipped",
                                  "reason": f"runtime {c.get('runtime')!r} excluded by target.runtime"}
        else:
            hashes = c.get("sha256") or {}
            try:  # every file a record names must lie inside its directory (no '..', absolute path, symlink out)
                if not isinstance(hashes, dict):
                    raise PathEscapeError(f"candidate {c['name']!r}: 'sha256' must map file names to hashes")
                primary = confined(base, c.get("primary"), f"candidate {c['name']!r}: primary file")
                for rel in hashes:
                    confined(base, rel, f"candidate {c['name']!r}: file")
            except PathEscapeError as exc:
                skipped[c["name"]] = {"runtime": c.get("runtime"), "status": "failed", "refused": True,
                                      "reason": f"not benchmarked: {exc}"}
                continue
            targets.append(BenchTarget(c["name"], primary, c["runtime"], expected_sha256=dict(hashes),
                                       input_shape=inp.get("shape")))
    return targets, skipped


def target_from_file(path: str | Path) -> BenchTarget:
    """A bench target for a bare model file; named after its candidate directory (`<name>/model.xml`)."""
    from edgeopt.io import sha256_file

    path = Path(path)
    runtime = runtime_for(path)
    name = path.parent.name if path.stem == "model" and path.parent.name else path.stem
    files = [path] + ([path.with_suffix(".bin")] if runtime == "openvino" else [])
    return BenchTarget(name, path, runtime, sha256={f.name: sha256_file(f) for f in files if f.is_file()})
