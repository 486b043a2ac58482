"""The compression table: every row measured in this process under one protocol, its ratios and the targets.

Rows: FP32 PyTorch eager of the baseline checkpoint, every candidate of the pipeline's models/exported/
(including the FP32 ONNX Runtime and OpenVINO exports of the baseline), and plain NNCF INT8 of the unpruned
baseline (`baseline_ov_int8`, made by the quantize stage itself in a side work directory, see
`quantize_baseline`).

Nothing here re-implements a pipeline step: accuracy in a runtime is `edgeopt.accuracy.accuracy_in_runtime`
(the candidates' figures are read from the pipeline's metrics/evaluate.json, which ran that very function on
the same test split), PyTorch accuracy is `edgeopt.training.evaluate`, models are loaded with
`edgeopt.runtime.load_model` and timed with `edgeopt.runtime.time_calls` (the bench stage's timer), sizes are
`edgeopt.io.tree_size` / `gzip_size`.

Latency protocol: batch 1, one fixed real test image, `warmup` untimed calls then `runs` timed calls, with 1
thread and with all cores; all rows are measured in `rounds` interleaved passes and each row keeps its round
with the lowest p50 (the least disturbed by other load). Throughput at batch 1 = 1000 / mean latency;
batched throughput (all cores) is reported separately.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks.convergence_probe import describe as describe_probe
from edgeopt.io import gzip_size, read_json, tree_size
from edgeopt.paths import Paths

PYTORCH_ROW = "baseline_fp32_pytorch"
INT8_ROW = "baseline_ov_int8"
# issue 12: against a converged baseline at least as accurate as the external peer (benchmarks/reference.py)
TARGETS = {"max_accuracy_drop_pt": 0.5, "max_macs_fraction": 0.1, "min_size_x_vs_onnx_fp32": 30.0,
           "min_speedup_vs_pytorch_eager": 30.0, "min_speedup_vs_baseline_ov_int8": 3.0}
BARE_ROW, BARE_PRUNED_ROW = "peer_bare_script", "peer_bare_pruned_kd"
SIDE_SOURCE = "finetuned"  # the side project's quantize.source slot that holds a copy of the baseline


def cores() -> int:
    from edgeopt.runtime import usable_cores

    return usable_cores()


# --- plain INT8 of the unpruned baseline --------------------------------------------------------------------

def side_project(main: Paths, side_dir: Path) -> Path:
    """A project whose `finetuned` checkpoint is the main project's baseline, sharing its prepared data, so the
    quantize stage (quantize.source=finetuned) quantizes the unpruned baseline with its own code."""
    shutil.rmtree(side_dir, ignore_errors=True)
    (side_dir / "data").mkdir(parents=True)
    (side_dir / "data" / "prepared").symlink_to(main.prepared.resolve(), target_is_directory=True)
    (side_dir / "models").mkdir()
    shutil.copy2(main.checkpoint("baseline"), side_dir / "models" / f"{SIDE_SOURCE}.pt")
    shutil.copy2(main.checkpoint("baseline"), side_dir / "models" / "baseline.pt")
    return side_dir


SIDE_OVERRIDES = {"quantize.source": SIDE_SOURCE, "quantize.modes": ["ov_int8"], "quantize.keep_sensitive": 0,
                  "quantize.qat": False, "distill.enabled": False, "sensitivity.enabled": False}


def side_int8_model(side_dir: Path) -> tuple[Path | None, dict[str, Any]]:
    """(model.xml, index entry) of the ov_int8 candidate the side quantize run produced."""
    index = side_dir / "models" / "quantized" / "index.json"
    if not index.is_file():
        return None, {"status": "failed", "reason": f"{index} not written"}
    for c in read_json(index).get("candidates", []):
        if c.get("mode") == "ov_int8" and c.get("source") == SIDE_SOURCE:
            if c.get("status") != "ok":
                return None, c
            return side_dir / "models" / "quantized" / c["primary"], c
    return None, {"status": "failed", "reason": f"{index}: no ov_int8 candidate of source {SIDE_SOURCE!r}"}


# --- measurement --------------------------------------------------------------------------------------------

@dataclass
class Timed:
    """One row's runnable model per thread count."""
    name: str
    call: Callable[[int, np.ndarray], Callable[[], Any]]  # (threads, x) -> zero-arg call


def _torch_timer(model) -> Callable[[int, np.ndarray], Callable[[], Any]]:
    import torch

    def make(threads: int, x: np.ndarray) -> Callable[[], Any]:
        xt = torch.from_numpy(x)
        torch.set_num_threads(threads)  # for the timing that follows (made right before it is timed)

        def call():
            with torch.inference_mode():
                return model(xt)
        return call
    return make


def _runtime_timer(path: Path, runtime: str, device: str) -> Callable[[int, np.ndarray], Callable[[], Any]]:
    from edgeopt.runtime import load_model

    loaded: dict[int, Any] = {}

    def make(threads: int, x: np.ndarray) -> Callable[[], Any]:
        if threads not in loaded:
            loaded[threads] = load_model(path, runtime=runtime, threads=threads, device=device)
        m = loaded[threads]
        return lambda: m.predict(x)
    return make


def measure_latency(timers: list[Timed], x1: np.ndarray, xb: np.ndarray | None, *, warmup: int, runs: int,
                    rounds: int, batch_runs: int, say: Callable[[str], None] = print) -> dict[str, dict]:
    """{row: {"1_thread": summary, "all_cores": summary, "batch": {...}}} (see the module docstring)."""
    from edgeopt.runtime import time_calls

    n_all = cores()
    settings = {"1_thread": 1, "all_cores": n_all}
    out: dict[str, dict] = {t.name: {"1_thread": None, "all_cores": None, "batch": None, "error": None}
                            for t in timers}
    p50s: dict[tuple[str, str], list[float]] = {}
    for r in range(rounds):
        say(f"[latency] round {r + 1}/{rounds}: {len(timers)} rows x {list(settings)}, {runs} runs each")
        for t in timers:
            if out[t.name]["error"]:
                continue
            for key, threads in settings.items():
                try:
                    s = time_calls(t.call(threads, x1), warmup=warmup, runs=runs)
                except Exception as exc:  # a row that cannot run is reported, the others go on
                    out[t.name]["error"] = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
                    break
                p50s.setdefault((t.name, key), []).append(s["p50_ms"])
                best = out[t.name][key]
                if best is None or s["p50_ms"] < best["p50_ms"]:
                    out[t.name][key] = {**s, "threads": threads}
    for t in timers:
        for key in settings:
            if out[t.name][key] is not None:
                out[t.name][key]["p50_rounds_ms"] = p50s.get((t.name, key), [])
        if xb is not None and not out[t.name]["error"]:
            try:
                s = time_calls(t.call(n_all, xb), warmup=2, runs=batch_runs)
                out[t.name]["batch"] = {"batch": int(len(xb)), "threads": n_all, "mean_ms": s["mean_ms"],
                                        "images_per_s": round(len(xb) * 1000.0 / s["mean_ms"], 1)}
            except Exception as exc:
                out[t.name]["batch"] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    return out


def _sizes(files: list[Path]) -> tuple[int | None, int | None]:
    files = [f for f in files if f.is_file()]
    if not files:
        return None, None
    return sum(tree_size(f) for f in files), sum(gzip_size(f) for f in files)


def build_rows(paths: Paths, params, side_dir: Path | None, *, warmup: int, runs: int, rounds: int,
               batch: int, batch_runs: int, say: Callable[[str], None] = print,
               peers: list[dict[str, Any]] | None = None,
               seed_accuracy: dict[str, list[float]] | None = None,
               seed_dirs: list[Path] | None = None, probe: dict[str, Any] | None = None) -> dict[str, Any]:
    """`peers`: the reference script's runs (benchmarks/reference.py, one per seed; the first seed's files are
    timed). `seed_accuracy`: test accuracy of other seeds per row name (mean and spread go beside each row);
    `seed_dirs`: their work directories (the baseline's convergence is checked on every seed); `probe`: the
    convergence probe's result (benchmarks/convergence_probe.py), None when it was not run."""
    import torch

    from edgeopt.accuracy import accuracy_in_runtime
    from edgeopt.arrays import load_meta, normalize, open_split
    from edgeopt.models import load_checkpoint
    from edgeopt.stats import model_stats
    from edgeopt.training import Splits, evaluate

    meta = load_meta(paths.prepared)
    test_x, test_y = open_split(paths.prepared, "test")
    x1 = normalize(test_x[:1], meta["mean"], meta["std"])
    xb = normalize(test_x[:batch], meta["mean"], meta["std"]) if batch else None
    cands = read_json(paths.candidates, "candidates file")
    ev = read_json(paths.metrics("evaluate"), "evaluation")["candidates"]
    gate = _optional(paths.report("gate.json"))
    device = params.target.device
    rows: list[dict[str, Any]] = []
    timers: list[Timed] = []

    # FP32 PyTorch eager of the baseline checkpoint
    ckpt = paths.checkpoint("baseline")
    model, cfg, _ = load_checkpoint(ckpt)
    shape = (cfg["in_channels"], cfg["image_size"], cfg["image_size"])
    torch.set_num_threads(cores())
    acc = evaluate(model, Splits.load(paths.prepared), "test", batch_size=params.evaluate.batch_size)["accuracy"]
    stats = model_stats(model, shape)
    size, gz = _sizes([ckpt])
    rows.append({"name": PYTORCH_ROW, "kind": "reference", "source": "baseline", "runtime": "pytorch",
                 "precision": "fp32", "technique": f"FP32 PyTorch {torch.__version__} eager (checkpoint file)",
                 "stages": ["train"], "status": "ok", "reason": None, "accuracy": round(acc, 4),
                 "size_bytes": size, "gzip_bytes": gz, "params": stats["params"],
                 "nonzero_params": stats["nonzero_params"], "macs": stats["macs"],
                 "files": [_rel(ckpt, paths.root)]})
    timers.append(Timed(PYTORCH_ROW, _torch_timer(model)))

    # plain NNCF INT8 of the unpruned baseline (side project)
    int8_row = {"name": INT8_ROW, "kind": "baseline", "source": "baseline", "runtime": "openvino",
                "precision": "int8", "technique": "NNCF PTQ static INT8 (OpenVINO) of the unpruned baseline, "
                "made by the quantize stage (mode ov_int8) in a side work dir", "stages": ["train", "quantize"],
                "params": stats["params"], "nonzero_params": stats["nonzero_params"], "macs": stats["macs"]}
    xml, entry = side_int8_model(side_dir) if side_dir else (None, {"status": "failed",
                                                                      "reason": "side quantize not run"})
    if xml is not None:
        files = [xml, xml.with_suffix(".bin")]
        size, gz = _sizes(files)
        try:
            from edgeopt.runtime import load_model

            m = load_model(xml, runtime="openvino", device=device)
            acc, _ = accuracy_in_runtime(m, test_x, test_y, meta["mean"], meta["std"], params.evaluate.batch_size)
            int8_row.update(status="ok", reason=None, accuracy=round(acc, 4), size_bytes=size, gzip_bytes=gz,
                            files=[_rel(f, paths.root) for f in files], details=entry.get("details"))
            timers.append(Timed(INT8_ROW, _runtime_timer(xml, "openvino", device)))
        except Exception as exc:
            int8_row.update(status="failed", reason=f"{type(exc).__name__}: {str(exc)[:300]}")
    else:
        int8_row.update(status="failed", reason=entry.get("reason") or "side quantize failed")
    pipeline_rows = []
    for c in cands["candidates"]:
        e = ev.get(c["name"], {})
        files = [paths.exported / f for f in c.get("files", [])]
        size, gz = _sizes(files)
        row = {"name": c["name"], "kind": "baseline" if c.get("source") == "baseline" else "candidate",
               "source": c.get("source"), "runtime": c.get("runtime"), "precision": c.get("precision"),
               "technique": c.get("technique"), "stages": c.get("stages", []),
               "status": "ok" if c.get("status") == "ok" and e.get("status") == "ok" else "failed",
               "reason": c.get("reason") or e.get("reason"), "accuracy": e.get("accuracy"),
               "size_bytes": size, "gzip_bytes": gz, "params": c.get("params"),
               "nonzero_params": c.get("nonzero_params"), "macs": c.get("macs"),
               "unique_weights": c.get("unique_weights"), "files": [_rel(f, paths.root) for f in files]}
        pipeline_rows.append(row)
        if row["status"] == "ok":
            timers.append(Timed(c["name"], _runtime_timer(paths.exported / c["primary"], c["runtime"], device)))
    # the external peer: the bare script and its pruned + KD model, measured like every other row
    runs_by_seed = list(peers or [])
    for name, key, what in ((BARE_ROW, "bare", "bare PyTorch script: ResNet-18 (CIFAR stem), one-cycle SGD, crop+flip, "
                                                "15 epochs, FP32; ONNX Runtime"),
                            (BARE_PRUNED_ROW, "pruned_kd", "the bare script + Torch-Pruning 50 % (L1) + 5 epochs KD; "
                                                           "ONNX Runtime")):
        if not runs_by_seed or key not in runs_by_seed[0]:
            continue
        accs = peer_accuracy(runs_by_seed, key, paths, params)
        first = runs_by_seed[0][key]
        size, gz = _sizes([Path(first["onnx"])])
        rows.append({"name": name, "kind": "peer", "source": "reference", "runtime": "onnxruntime",
                     "precision": "fp32", "technique": what, "stages": ["reference"], "status": "ok", "reason": None,
                     "accuracy": accs[0], "size_bytes": size, "gzip_bytes": gz, "params": first["params"],
                     "nonzero_params": first["params"], "macs": first["macs"], "files": [first["onnx"]],
                     "seeds": _peer_seeds(runs_by_seed, key, accs)})
        timers.append(Timed(name, _runtime_timer(Path(first["onnx"]), "onnxruntime", device)))

    # order: references first, then the pipeline's candidates in export order
    base_names = [n for n in ("baseline_fp32_ort", "baseline_fp32_ov") if any(r["name"] == n for r in pipeline_rows)]
    rows += [r for n in base_names for r in pipeline_rows if r["name"] == n]
    rows.append(int8_row)
    rows += [r for r in pipeline_rows if r["name"] not in base_names]

    say(f"[latency] {len(timers)} rows to time (batch 1, 1 thread and {cores()} threads)")
    lat = measure_latency(timers, x1, xb, warmup=warmup, runs=runs, rounds=rounds, batch_runs=batch_runs, say=say)
    for r in rows:
        m = lat.get(r["name"])
        r["latency"] = {"1_thread": m["1_thread"], "all_cores": m["all_cores"]} if m else None
        r["throughput_batch"] = m["batch"] if m else None
        if m and m["error"]:
            r.update(status="failed", reason=f"latency: {m['error']}")
    _seed_stats(rows, seed_accuracy)
    _drops(rows, cands.get("baselines", {}))
    refs = {"pytorch_fp32": PYTORCH_ROW, "openvino_fp32": cands.get("baselines", {}).get("openvino"),
            "onnx_fp32": cands.get("baselines", {}).get("onnxruntime"), "baseline_ov_int8": INT8_ROW}
    _ratios(rows, refs)
    selected, selected_by = _selected(rows, gate, params.gate.max_accuracy_drop, refs)
    for r in rows:
        r["selected"] = r["name"] == selected
    return {"rows": rows, "references": refs, "selected": selected, "selected_by": selected_by,
            "gate": _gate_summary(gate),
            "targets": targets(rows, selected, selected_by, refs, _training(paths, seed_dirs, probe),
                               _gate_summary(gate)),
            "protocol": {"batch": 1, "input": "one real test image, normalised by the input contract",
                         "warmup": warmup, "runs": runs, "rounds": rounds, "kept": "round with the lowest p50",
                         "threads": {"1_thread": 1, "all_cores": cores()},
                         "batch_throughput": {"batch": batch, "threads": cores(), "runs": batch_runs} if batch else None,
                         "openvino": "PERFORMANCE_HINT=LATENCY, 1 stream, INFERENCE_PRECISION_HINT=f32 "
                                     "(edgeopt.runtime.load_model)",
                         "accuracy": f"test split, {len(test_y)} images",
                         "size": "bytes of the shipped files (PyTorch: the checkpoint file); gzip -9 beside"}}


def peer_accuracy(runs: list[dict[str, Any]], key: str, paths: Paths, params) -> list[float]:
    """Test accuracy of each seed's peer model (`key`: bare | pruned_kd) in ONNX Runtime, the rows' protocol."""
    from edgeopt.accuracy import accuracy_in_runtime
    from edgeopt.arrays import load_meta, open_split
    from edgeopt.runtime import load_model

    meta = load_meta(paths.prepared)
    test_x, test_y = open_split(paths.prepared, "test")
    out = []
    for run in runs:
        m = load_model(Path(run[key]["onnx"]), runtime="onnxruntime")
        out.append(round(accuracy_in_runtime(m, test_x, test_y, meta["mean"], meta["std"],
                                             params.evaluate.batch_size)[0], 4))
    return out


def record_seed(lists: dict[str, list[float | None]], accs: dict[str, float]) -> None:
    """Append one more seed's {row: accuracy} to the per-row lists (seeds 1..); a row without a figure in some
    seed gets None there, so every list position stays one seed."""
    n = max((len(v) for v in lists.values()), default=0)
    for name in sorted(set(lists) | set(accs)):
        lists.setdefault(name, [None] * n).append(accs.get(name))


def _peer_seeds(runs: list[dict[str, Any]], key: str, accs: list[float]) -> dict[str, Any]:
    return {"seeds": [r["seed"] for r in runs], "accuracy": accs, "train_s": [r[key]["train_s"] for r in runs]}


def _seed_stats(rows: list[dict[str, Any]], seed_accuracy: dict[str, list[float | None]] | None) -> None:
    """Mean and spread over the seeds run: a peer row carries its own list, a pipeline row gets seed 0's
    accuracy followed by `seed_accuracy[name]` (seeds 1..; None where that seed has no figure: left out)."""
    for r in rows:
        accs = (r.get("seeds") or {}).get("accuracy") if r.get("kind") == "peer" else (
            [a for a in (r["accuracy"], *seed_accuracy[r["name"]]) if a is not None] if seed_accuracy
            and r["name"] in seed_accuracy and r.get("accuracy") is not None else None)
        if accs:
            r["seeds"] = {**(r.get("seeds") or {}), "accuracy": accs}
            if r.get("kind") != "peer":  # seed by seed, None kept: drops pair a row's seeds with its baseline's
                r["seeds"]["by_seed"] = [r["accuracy"], *seed_accuracy[r["name"]]]
            r["accuracy_mean"] = round(float(np.mean(accs)), 4)
            r["accuracy_std"] = round(float(np.std(accs, ddof=1)), 4) if len(accs) > 1 else None


def add_seeds(table: dict[str, Any], paths: Paths, params, peers: list[dict[str, Any]],
              seed_accuracy: dict[str, list[float]], seed_dirs: list[Path] | None = None,
              probe: dict[str, Any] | None = None) -> dict[str, Any]:
    """A finished table with more seeds: the peers' accuracies (every seed's model, measured again in ONNX
    Runtime) and the pipeline's (seed 0 + `seed_accuracy`) give new means and spreads, and the targets are
    checked again on them. Seed 0's sizes, MACs and latencies stay as measured: other seeds only retrain."""
    rows = table["rows"]
    for r in rows:
        if r.get("kind") == "peer":
            key = "bare" if r["name"] == BARE_ROW else "pruned_kd"
            r["seeds"] = _peer_seeds(peers, key, peer_accuracy(peers, key, paths, params))
        else:
            for k in ("seeds", "accuracy_mean", "accuracy_std"):
                r.pop(k, None)
    _seed_stats(rows, seed_accuracy)
    if table.get("selected_by") != "gate":  # a fallback pick is made again on the seeds' means
        table["selected"], table["selected_by"] = _selected(rows, table.get("gate"), params.gate.max_accuracy_drop,
                                                            table["references"])
        for r in rows:
            r["selected"] = r["name"] == table["selected"]
    table["targets"] = targets(rows, table.get("selected"), table.get("selected_by") or "", table["references"],
                               _training(paths, seed_dirs, probe), table.get("gate"))
    return table


def _training(paths: Paths, seed_dirs: list[Path] | None = None, probe: dict[str, Any] | None = None
              ) -> dict[str, Any]:
    """Whether the baseline converged. The train stage's in-run check (metrics/train.json) over every seed run
    (`seed_dirs`: the work directories of seeds 1..): every seed must pass, the gain is the largest of them (the
    accuracy means average over all seeds). And the convergence probe (`probe`, seed 0 trained for longer),
    which sees what the in-run check cannot under one-cycle: converged only if both say so, None (not shown)
    when either was not measured."""
    ms = [_optional(paths.metrics("train")) or {}] + [_optional(Path(d) / "metrics" / "train.json") or {}
                                                       for d in seed_dirs or []]
    m, flags = ms[0], [x.get("converged") for x in ms]
    gains = [x.get("val_gain_last_20pct") for x in ms]
    in_run = False if False in flags else None if None in flags else True
    probed = (probe or {}).get("converged") if (probe or {}).get("ok") else None
    return {"converged": False if False in (in_run, probed) else None if None in (in_run, probed) else True,
            "in_run_converged": in_run, "val_gain": None if None in gains else max(gains),
            "val_gain_per_seed": gains, "probe": probe,
            "max_gain": ((m.get("ran_with") or {}).get("params") or {}).get("train", {}).get("converged_max_gain"),
            "epochs": m.get("epochs_run"), "val_images": _val_images(paths)}


def _val_images(paths: Paths) -> int | None:
    """How many validation images the in-run check counts: it resolves steps of 100 / n points, no finer."""
    counts = ((_optional(paths.prepared / "meta.json") or {}).get("counts") or {}).get("val")
    return sum(counts.values()) if isinstance(counts, dict) and counts else None


def _optional(path: Path) -> dict[str, Any] | None:
    try:
        return read_json(path)
    except (FileNotFoundError, ValueError):
        return None


def _rel(path: Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _drops(rows: list[dict[str, Any]], baselines: dict[str, str]) -> None:
    """drop: points below the FP32 baseline in the same runtime (PyTorch for the PyTorch row), as evaluate
    defines it; drop_vs_pytorch: below FP32 PyTorch eager."""
    by = {r["name"]: r for r in rows}
    pt = by[PYTORCH_ROW].get("accuracy")
    for r in rows:
        acc = r.get("accuracy")
        base_name = PYTORCH_ROW if r["runtime"] == "pytorch" else baselines.get(r["runtime"])
        base = by.get(base_name or "", {}).get("accuracy")
        r["drop_against"] = base_name
        r["drop"] = round(base - acc, 4) if acc is not None and base is not None else None
        r["drop_vs_pytorch"] = round(pt - acc, 4) if acc is not None and pt is not None else None


def _x(num: float | None, den: float | None) -> float | None:
    return float(f"{num / den:.4g}") if num and den else None  # significant digits: a tiny ratio is not 0


def _ratios(rows: list[dict[str, Any]], refs: dict[str, str | None]) -> None:
    """How many times smaller / faster than each reference (>1 = better than the reference)."""
    by = {r["name"]: r for r in rows}
    for r in rows:
        r["ratios"] = {}
        for key in ("pytorch_fp32", "openvino_fp32", "onnx_fp32", "baseline_ov_int8"):
            ref = by.get(refs.get(key) or "")
            if ref is None:
                r["ratios"][key] = None
                continue
            out = {"reference": ref["name"], "size_x": _x(ref.get("size_bytes"), r.get("size_bytes")),
                   "gzip_x": _x(ref.get("gzip_bytes"), r.get("gzip_bytes")),
                   "macs_x": _x(ref.get("macs"), r.get("macs")), "params_x": _x(ref.get("params"), r.get("params"))}
            for setting in ("1_thread", "all_cores"):
                a, b = (ref.get("latency") or {}).get(setting), (r.get("latency") or {}).get(setting)
                out[f"p50_speedup_{setting}"] = _x(a and a["p50_ms"], b and b["p50_ms"])
                out[f"p90_speedup_{setting}"] = _x(a and a["p90_ms"], b and b["p90_ms"])
            r["ratios"][key] = out


def _gate_summary(gate: dict[str, Any] | None) -> dict[str, Any] | None:
    if gate is None:
        return None
    return {"status": gate.get("status"), "selected": gate.get("selected"), "passed": gate.get("passed"),
            "thresholds": gate.get("thresholds"), "error": gate.get("error"),
            "evaluation": gate.get("evaluation"),  # the split and images the gate's drops were measured on
            # each candidate's drop and paired SE as the gate judged it (a pass or fail within one SE is chance)
            "drops": {r["name"]: {"drop": r.get("drop"), "drop_se": r.get("drop_se")} for r in gate.get("rows") or []
                      if isinstance(r, dict) and r.get("drop") is not None}}


def _acc(r: dict[str, Any] | None) -> float | None:
    """A row's accuracy: the mean over the seeds run (one seed: that seed)."""
    return None if r is None else r.get("accuracy_mean", r.get("accuracy"))


def _paired_seeds(base: dict[str, Any] | None, r: dict[str, Any] | None) -> list[tuple[float, float]]:
    """(baseline, row) accuracies of the seeds both have a figure for (a row without seeds: seed 0 alone)."""
    def by_seed(x: dict[str, Any] | None) -> list[float | None]:
        return ((x or {}).get("seeds") or {}).get("by_seed") or [(x or {}).get("accuracy")]
    return [(a, b) for a, b in zip(by_seed(base), by_seed(r)) if a is not None and b is not None]


def _drop(base: dict[str, Any] | None, r: dict[str, Any] | None) -> float | None:
    """The mean drop over the seeds both rows have: a seed that failed for one of them only would compare
    different seed sets, and seeds alone move accuracy by more than the 0.5 pt target."""
    pairs = _paired_seeds(base, r)
    return round(float(np.mean([a for a, _ in pairs]) - np.mean([b for _, b in pairs])), 4) if pairs else None


def _mean_drop(r: dict[str, Any], by: dict[str, dict[str, Any]]) -> float | None:
    return _drop(by.get(r.get("drop_against") or ""), r)


def _selected(rows: list[dict[str, Any]], gate: dict[str, Any] | None, max_drop: float,
              refs: dict[str, str | None]) -> tuple[str | None, str]:
    """The gate's pick; when it picked none (nothing would be promoted), the candidate nearest to a release, so the
    targets still show how far the chain is: the fastest within the drop limit, else the one with the smallest
    drop within the MAC target (the fastest would show a far smaller model and say nothing about the recipe's
    drop). Drops here are the gate's: against the FP32 baseline in the candidate's own runtime, seed means."""
    if gate and gate.get("selected"):
        return gate["selected"], "gate"
    ok = [r for r in rows if r["kind"] == "candidate" and r["status"] == "ok" and r.get("latency")]
    if not ok:
        return None, "none: no candidate ran"
    by = {r["name"]: r for r in rows}
    status = (gate or {}).get("status")
    why = ("no gate report" if not gate else "gate passed none" if status == "none_pass" else f"gate {status}"
           ) + ": nothing would be promoted"
    within = [r for r in ok if (d := _mean_drop(r, by)) is not None and d <= max_drop]
    if within:
        pick = min(within, key=lambda r: r["latency"]["1_thread"]["p50_ms"])
        return pick["name"], f"fallback ({why}): the fastest candidate (1 thread p50) within the accuracy-drop limit"
    base_macs = (by.get(refs.get("onnx_fp32") or "") or {}).get("macs")
    budget = [r for r in ok if base_macs and r.get("macs")
              and r["macs"] <= TARGETS["max_macs_fraction"] * base_macs]
    pick = min(budget or ok, key=lambda r: (_mean_drop(r, by) is None, _mean_drop(r, by) or 0.0,
                                            r["latency"]["1_thread"]["p50_ms"]))
    return pick["name"], (f"fallback ({why}): none within the accuracy-drop limit, so the one with the smallest drop "
                          + ("within the MAC target" if budget else "of all (none within the MAC target)"))


def targets(rows: list[dict[str, Any]], selected: str | None, selected_by: str,
            refs: dict[str, str | None], training: dict[str, Any] | None = None,
            gate: dict[str, Any] | None = None) -> dict[str, Any]:
    """Issue 12's targets for the promoted candidate, against a converged baseline and the external peer, with the
    measured figures whether met or not. Accuracies are means over the seeds run (one seed: that seed). `gate`: the
    gate's summary; when it passed none, nothing is promoted, so the targets are not met whatever the figures."""
    by = {r["name"]: r for r in rows}
    row = by.get(selected or "")
    if row is None:
        return {"candidate": None, "selected_by": selected_by, "items": [], "all_met": False}

    def acc(r: dict[str, Any] | None) -> float | None:
        a = _acc(r)
        return None if a is None else round(a, 2)  # shown to 0.01 pt; the figures compared are unrounded

    def p50(name: str | None) -> float | None:
        lat = (by.get(name or "") or {}).get("latency") or {}
        return (lat.get("1_thread") or {}).get("p50_ms")

    def seeds(r: dict[str, Any] | None) -> str:
        s = (r or {}).get("seeds") or {}
        return f"{len(s.get('accuracy') or [1])} seed(s)" + (f", std {r.get('accuracy_std')}" if r and
                                                              r.get("accuracy_std") is not None else "")

    onnx = by.get(refs.get("onnx_fp32") or "", {})
    base, bare, peer = by.get(refs.get("onnx_fp32") or ""), by.get(BARE_ROW), by.get(BARE_PRUNED_ROW)
    mine = p50(row["name"])
    drop, paired = _drop(base, row), len(_paired_seeds(base, row))
    training = training or {}
    probe = training.get("probe") or {}
    probe_gain = probe.get("test_gain") if probe.get("ok") else None
    items = [
        {"name": "baseline converged (val gain over the last 20 % of epochs)", "value": training.get("val_gain"),
         "limit": training.get("max_gain"), "op": "<=", "unit": "pt",
         "detail": f"converged: {training.get('in_run_converged')}; {training.get('epochs')} epochs"
                   + (f"; one validation image = {100 / training['val_images']:.2f} pt "
                      f"({training['val_images']} images)" if training.get("val_images") else "")
                   + (f"; gain per seed {training['val_gain_per_seed']}"
                      if len(training.get("val_gain_per_seed") or []) > 1 else "")},
        {"name": "baseline converged (convergence probe: test gain from training it longer)",
         "value": probe_gain, "limit": probe.get("limit", training.get("max_gain")), "op": "<=",
         "unit": "pt", "detail": describe_probe(probe or None)
         + ("; skipped: the in-run check alone cannot show convergence under one-cycle" if not probe else "")},
        {"name": "baseline at least as accurate as the bare script", "value":
            None if _acc(base) is None or _acc(bare) is None else round(_acc(base) - _acc(bare), 4),
         "limit": 0.0, "op": ">=", "unit": "pt",
         "detail": f"baseline {acc(base)} % ({seeds(base)}) vs bare script {acc(bare)} % ({seeds(bare)})"},
        {"name": "accuracy drop vs the baseline", "value": drop, "limit": TARGETS["max_accuracy_drop_pt"],
         "op": "<=", "unit": "pt", "detail": f"{acc(row)} % ({seeds(row)}) vs {acc(base)} % (test split)"
         + ("" if paired == max(len(((x or {}).get("seeds") or {}).get("accuracy") or [1]) for x in (base, row)) else
            f"; the drop on the {paired} seed(s) both have")},
        {"name": "MACs vs the baseline", "value": None if not base else _frac(row.get("macs"), base.get("macs")),
         "limit": TARGETS["max_macs_fraction"], "op": "<=", "unit": "x",
         "detail": f"{row.get('macs'):,} vs {(base or {}).get('macs') or 0:,}" if row.get("macs") else "-"},
        {"name": "size vs FP32 ONNX baseline", "value": _x(onnx.get("size_bytes"), row.get("size_bytes")),
         "limit": TARGETS["min_size_x_vs_onnx_fp32"], "op": ">=", "unit": "x",
         "detail": f"{row.get('size_bytes')} B vs {onnx.get('size_bytes')} B ({onnx.get('name')}); gzip "
                   f"{_x(onnx.get('gzip_bytes'), row.get('gzip_bytes'))}x"},
        {"name": "p50 latency vs FP32 PyTorch eager (batch 1, 1 thread)", "value": _x(p50(PYTORCH_ROW), mine),
         "limit": TARGETS["min_speedup_vs_pytorch_eager"], "op": ">=", "unit": "x",
         "detail": f"{mine} ms vs {p50(PYTORCH_ROW)} ms"},
        {"name": "p50 latency vs plain NNCF INT8 of the unpruned baseline (batch 1, 1 thread)",
         "value": _x(p50(INT8_ROW), mine), "limit": TARGETS["min_speedup_vs_baseline_ov_int8"], "op": ">=",
         "unit": "x", "detail": f"{mine} ms vs {p50(INT8_ROW)} ms ({INT8_ROW})"},
        {"name": "more accurate than the bare script + prune + KD at equal or fewer MACs", "value":
            None if _acc(peer) is None or _acc(row) is None or not peer.get("macs") or not row.get("macs")
            else round(_acc(row) - _acc(peer), 4) if row["macs"] <= peer["macs"] else -999.0,
         "limit": 0.0, "op": ">", "unit": "pt",
         "detail": f"{acc(row)} % at {row.get('macs') or 0:,} MACs vs {acc(peer)} % at "
                   f"{(peer or {}).get('macs') or 0:,} MACs ({seeds(peer)})"},
        {"name": "passed edgeopt's own gate (a release would be promoted)", "value": (gate or {}).get("status"),
         "limit": "pass", "op": "==", "unit": "",
         "detail": "no gate report" if not gate else "the gate of seed 0's chain (the run's pick); "
                   + _thresholds(gate.get("thresholds")) + _gate_drop(gate, row["name"])
                   + (f"; {gate['error']}" if gate.get("error") else "")},
    ]
    for it in items:
        v, lim = it["value"], it["limit"]
        if it["op"] == "==":
            it["met"] = None if v is None else v == lim
            continue
        it["met"] = None if v is None or lim is None else (v <= lim if it["op"] == "<=" else v >= lim
                                                            if it["op"] == ">=" else v > lim)
    return {"candidate": row["name"], "selected_by": selected_by, "items": items,
            "all_met": all(it["met"] for it in items),
            "note": None if training.get("converged") else
            ("the baseline did not converge" if training.get("converged") is False else
             "the baseline's convergence was not shown (a check not measured)")
            + ": targets are not met whatever the other figures say"}


def _gate_drop(gate: dict[str, Any], name: str) -> str:
    """'; <name>'s drop at the gate D +- SE pt (N <split> images)', when the gate report recorded it."""
    d = (gate.get("drops") or {}).get(name) or {}
    if d.get("drop") is None or d.get("drop_se") is None:
        return ""
    ev = gate.get("evaluation") or {}
    return (f"; {name}'s drop at the gate {d['drop']:.2f} +- {d['drop_se']:.2f} pt (paired SE, {ev.get('images')} "
            f"{ev.get('split')} images)")


def _thresholds(t: Any) -> str:
    if not isinstance(t, dict):
        return "thresholds not reported"
    return "thresholds: " + ", ".join(f"{k} {v}" for k, v in t.items())


def _frac(num: float | None, den: float | None) -> float | None:
    return round(num / den, 4) if num and den else None
