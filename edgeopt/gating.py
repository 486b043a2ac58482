"""The release gate's decision: accuracy drop, latency and size thresholds per candidate, the Pareto ranking
of the passing ones, the sealed report (reports/gate.json). Torch-free. The `gate` stage writes it; `promote`
re-derives it from its inputs before it releases anything.

Inputs are checked before any threshold: every candidate file is hashed now and must match what export,
evaluate and bench (or the device latency report) recorded, and those must have measured the same candidate
set; otherwise the numbers describe other files and the gate stops with StaleInputsError (exit 4). Hashes, not
modification times, decide, because `dvc checkout` / `git clone` rewrite mtimes; the mtime comparison is only
the fallback for a metrics entry that recorded no hashes.

The stage writes the report in every outcome (pass, none passes, stale), then raises for the last two so the
CLI exits 3 / 4 and `dvc repro` stops before `promote`. The `digest` over the report lets `promote` refuse a
hand-edited file.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from edgeopt import pareto
from edgeopt.accuracy import paired_drop, upper_bound
from edgeopt.candidates import allowed_runtimes
from edgeopt.errors import PathEscapeError, StaleInputsError
from edgeopt.io import read_json, sha256_file, sha256_json
from edgeopt.params import Params
from edgeopt.paths import Paths, confined

FORMAT = "edgeopt-gate/1"
GATES = ("accuracy_drop", "latency", "size")
RANK_KEYS = ("latency", "size", "accuracy")
MAX_IMAGES = 10**9  # images one evaluation can score: bounds the counts a record may claim
RULE = ("A candidate passes when its status is ok in export, evaluate and bench and it meets every gate: "
        "accuracy drop (points, vs the FP32 baseline in the same runtime, on the same images) <= max_accuracy_drop "
        "(with accuracy_confidence c > 0: the drop's one-sided upper bound at confidence c, from its paired "
        "standard error over those images), latency at "
        "latency_percentile <= max_latency_ms, shipped bytes <= max_size_bytes. The pick is on the Pareto front "
        "of the passing candidates (accuracy, latency, size; latencies within latency_tolerance count as equal): "
        "a candidate another one matches or beats on all three and beats on one is never picked. On the front, "
        "rank_by decides (latency: lowest; size: smallest; accuracy: highest); what it cannot tell apart "
        "(latencies within the tolerance, equal sizes or accuracies) goes to the more accurate, then the smaller, "
        "then the faster, then by name. FP32 baselines (source 'baseline') are eligible only when no other "
        "candidate passes.")


def forget_results(paths: Paths) -> None:
    """Remove the results a gate decision is read from (evaluate's and bench's metrics, the gate report) before a
    work dir is used again: a run that stops before its gate this time must not be judged by the last report."""
    for f in (paths.metrics("evaluate"), paths.metrics("bench"), paths.report("gate.json")):
        f.unlink(missing_ok=True)


def rel(path: Path, paths: Paths) -> str:
    """A path as recorded in reports: relative to the project root when inside it."""
    try:
        return Path(path).resolve().relative_to(paths.root.resolve()).as_posix()
    except ValueError:
        return str(Path(path).resolve())


def load_input(path: Path, what: str, paths: Paths, how: str) -> dict[str, Any]:
    try:
        doc = read_json(path, what)
    except FileNotFoundError:
        raise StaleInputsError(f"{rel(path, paths)}: {what} missing; {how}") from None
    except ValueError as exc:
        raise StaleInputsError(f"{exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("candidates"), (dict, list)):
        raise StaleInputsError(f"{rel(path, paths)}: {what} has no 'candidates'; {how}")
    return doc


def hashes_match(measured: dict[str, str], recorded: Any) -> bool:
    """Recorded hashes may be keyed relative to another directory: compare per key, else as a multiset."""
    if isinstance(recorded, str):
        return recorded in measured.values() and len(measured) == 1
    if not isinstance(recorded, dict):
        return False
    if set(recorded) == set(measured):
        return all(recorded[k] == measured[k] for k in measured)
    return sorted(recorded.values()) == sorted(measured.values())


def check_measured(name: str, entry: dict[str, Any], measured: dict[str, str], files: list[Path],
                   source: Path, paths: Paths) -> None:
    """The metrics entry must describe these very files (sha256; mtime only when no hash was recorded)."""
    recorded = entry.get("sha256")
    if recorded:
        if not hashes_match(measured, recorded):
            raise StaleInputsError(
                f"{rel(source, paths)}: {name} was measured on other files than models/exported holds now "
                f"(sha256 differs); rerun the stages after export (`dvc repro`)")
    elif any(f.stat().st_mtime > source.stat().st_mtime for f in files):
        raise StaleInputsError(f"{rel(source, paths)}: older than the files of {name} and records no sha256; "
                               f"rerun it (`dvc repro`)")


def check_candidate_sets(cands: list[dict], evaluate: dict, latency: dict, eval_path: Path, lat_path: Path,
                         paths: Paths) -> None:
    known = {c["name"] for c in cands}
    ok = {c["name"] for c in cands if c.get("status") == "ok"}
    for doc, path in ((evaluate, eval_path), (latency, lat_path)):
        names = set(doc["candidates"])
        extra, missing = sorted(names - known), sorted(ok - names)
        if extra or missing:
            detail = "; ".join(x for x in (f"unknown to candidates.json: {extra}" if extra else "",
                                            f"not measured: {missing}" if missing else "") if x)
            raise StaleInputsError(f"{rel(path, paths)}: measured a different candidate set than "
                                   f"{rel(paths.candidates, paths)} ({detail}); rerun it (`dvc repro`)")


def check_shapes(cands_doc: dict, evaluate: dict, latency: dict, eval_path: Path, lat_path: Path,
                 paths: Paths) -> None:
    """The records must have the shapes the stages write (a list where an object is expected, a name twice, a
    file list that is not a list of names): StaleInputsError naming the record, never a traceback."""
    where = rel(paths.candidates, paths)
    cands = cands_doc["candidates"]
    if not isinstance(cands, list) or not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in cands):
        raise StaleInputsError(f"{where}: 'candidates' must be a list of objects with a 'name'; rerun `edgeopt export`")
    if not isinstance(cands_doc.get("baselines") or {}, dict):
        raise StaleInputsError(f"{where}: 'baselines' must be an object of runtime -> candidate name; rerun "
                               f"`edgeopt export`")
    names = [c["name"] for c in cands]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise StaleInputsError(f"{where}: candidate name(s) {twice} appear twice (ambiguous); rerun `edgeopt export`")
    for c in cands:
        files = c.get("files", [])
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files) or not isinstance(
                c.get("sha256") or {}, (dict, str)):
            raise StaleInputsError(f"{where}: candidate {c['name']!r}: 'files' must be a list of file names and "
                                   f"'sha256' an object; rerun `edgeopt export`")
    for doc, path in ((evaluate, eval_path), (latency, lat_path)):
        entries = doc["candidates"]
        if not isinstance(entries, dict) or not all(isinstance(v, dict) for v in entries.values()):
            raise StaleInputsError(f"{rel(path, paths)}: 'candidates' must be an object of candidate name -> "
                                   f"measurement object; rerun the stage that writes it")
    images = evaluate.get("images")
    paired = any(key in e for e in evaluate["candidates"].values() for key in ("lost", "gained", "drop_se"))
    if (images is not None or paired) and (isinstance(images, bool) or not isinstance(images, int)
                                            or not 0 < images <= MAX_IMAGES):
        raise StaleInputsError(f"{rel(eval_path, paths)}: 'images' must be the whole number of images evaluated "
                               f"(1..{MAX_IMAGES:,}), not {str(images)[:40]!r}; rerun `edgeopt evaluate`")


def candidate_files(c: dict[str, Any], paths: Paths) -> list[Path]:
    """The candidate's files, each confined to models/exported (no '..', absolute path or symlink out of it):
    a record naming an outside file is tampering, not a measurement (exit 4)."""
    try:
        files = [confined(paths.exported, f, f"candidate {c['name']!r}: file") for f in c.get("files", [])]
        if c.get("primary") is not None and c.get("primary") not in c.get("files", []):
            raise PathEscapeError(f"candidate {c['name']!r}: primary file {c.get('primary')!r} is not one of its "
                                  f"files")
    except PathEscapeError as exc:
        raise StaleInputsError(f"{rel(paths.candidates, paths)}: {exc}; rerun `edgeopt export` (edited?)") from None
    if not files:
        raise StaleInputsError(f"{rel(paths.candidates, paths)}: candidate {c['name']!r} lists no files; rerun "
                               f"`edgeopt export`")
    return files


def _finite(value: Any) -> float | None:
    """value as a float when it is a real, finite number (not a bool, string, list or NaN), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value) if math.isfinite(value) else None
    except OverflowError:  # an int too large for a float
        return None


def impossible(ev: dict[str, Any], lat: dict[str, Any], size_bytes: int, pct: str, images: Any = None,
               own: bool = False) -> list[str]:
    """Reasons why the recorded measurements cannot be real: a latency, size or accuracy that is negative, zero,
    infinite, NaN or not a number, percentiles out of order, a drop that contradicts the accuracies, paired
    counts (images lost / gained) or a drop SE that no evaluation of `images` images gives. Such a candidate
    fails the gate with these reasons (it is never ranked). `own`: the candidate is its runtime's baseline."""
    out = []

    def need(what: str, value: Any, ok, rule: str) -> float | None:
        x = _finite(value)
        if x is None or not ok(x):
            out.append(f"impossible measurement: {what} = {value!r} ({rule})")
            return None
        return x

    acc = need("evaluate accuracy", ev.get("accuracy"), lambda x: 0 < x <= 100, "an accuracy is a % in (0, 100]")
    base = ev.get("baseline_accuracy")
    if base is not None:
        base = need("evaluate baseline_accuracy", base, lambda x: 0 < x <= 100, "an accuracy is a % in (0, 100]")
    drop = ev.get("drop")
    if drop is not None:
        drop = need("evaluate drop", drop, lambda x: -100 <= x <= 100, "a drop is in -100..100 points")
        if None not in (drop, acc, base) and abs(drop - (base - acc)) > 1e-3:
            out.append(f"impossible measurement: evaluate drop {drop} != baseline_accuracy {base} - accuracy {acc}")
    if drop is None and None not in (acc, base):
        drop = base - acc  # what the gate will judge: the counts must give it
    out += _impossible_pairing(ev, drop, images, own, base)
    latency = {k: v for k, v in lat.items() if k.endswith("_ms")}
    if f"{pct}_ms" in latency:
        for key, value in latency.items():
            latency[key] = need(f"latency {key}", value, lambda x: x > 0, "a latency is a finite number > 0 ms")
        order = [latency.get(k) for k in ("min_ms", "p50_ms", "p90_ms", "p99_ms") if latency.get(k) is not None]
        if order != sorted(order):
            out.append(f"impossible measurement: latency percentiles out of order "
                       f"(min <= p50 <= p90 <= p99 must hold: {order})")
        for key in ("throughput_fps", "runs"):
            if key in lat:
                need(f"latency {key}", lat[key], lambda x: x > 0 and (key != "runs" or x == int(x)),
                     "must be a finite number > 0" + (" (a whole count)" if key == "runs" else ""))
    if size_bytes <= 0:
        out.append(f"impossible measurement: size {size_bytes} B (the model files are empty)")
    return out


def _impossible_pairing(ev: dict[str, Any], drop: float | None, images: Any, own: bool,
                        base: float | None) -> list[str]:
    """The paired counts (images lost / gained against the baseline) and the drop's SE, when recorded, must be
    whole counts that fit the evaluated images (lost among the baseline's right answers, gained among its wrong
    ones) and give the recorded drop and SE (0 for the baseline itself)."""
    lost, gained, se = ev.get("lost"), ev.get("gained"), ev.get("drop_se")
    if lost is None and gained is None and se is None:
        return []
    counts = [x for x in (lost, gained, images) if isinstance(x, int) and not isinstance(x, bool) and x >= 0]
    if len(counts) < 3 or images == 0 or images > MAX_IMAGES or lost + gained > images or _finite(se) is None:
        return [f"impossible measurement: evaluate lost {lost!r} / gained {gained!r} of {images!r} images with "
                f"drop_se {se!r} (whole counts that fit the images and a number are needed)"]
    if base is not None:
        right = base * images / 100
        if abs(right - round(right)) > 1e-6 * images or lost > round(right) or gained > images - round(right):
            return [f"impossible measurement: evaluate baseline_accuracy {base} of {images} images is not a whole "
                    f"number of right answers that {lost} lost / {gained} gained images fit"]
    want = {"drop": 0.0, "drop_se": 0.0} if own and lost == gained == 0 else paired_drop(lost, gained, images)
    if (drop is not None and abs(want["drop"] - drop) > 1e-3) or abs(want["drop_se"] - se) > 1e-3:
        return [f"impossible measurement: evaluate lost {lost} / gained {gained} of {images} images give drop "
                f"{want['drop']} +- {want['drop_se']}, not the recorded {drop} +- {se}"]
    return []


def gate_result(value: float, threshold: float) -> dict[str, Any]:
    return {"value": value, "threshold": threshold, "margin": round(threshold - value, 6), "passed": value <= threshold}


def evaluate_gates(row: dict[str, Any], params: Params) -> None:
    """Fill row['gates'], verdict and reasons from the measured numbers."""
    g = params.gate
    pct = g.latency_percentile
    conf = g.accuracy_confidence
    drop_gate = gate_result(row["drop"], g.max_accuracy_drop)
    if conf:  # the bound, not the measured drop, must be within the limit
        bound = round(upper_bound(row["drop"], row["drop_se"], conf), 6)
        drop_gate = {**gate_result(bound, g.max_accuracy_drop), "measured": row["drop"], "se": row["drop_se"],
                     "confidence": conf}
    row["gates"] = {"accuracy_drop": drop_gate,
                    "latency": gate_result(row["latency_ms"], g.max_latency_ms),
                    "size": gate_result(row["size_bytes"], g.max_size_bytes)}
    text = {"accuracy_drop": lambda r: (f"accuracy drop {r['measured']:.2f} pt, its {100 * conf:g} % upper bound "
                                        f"{r['value']:.2f} pt > max {r['threshold']:.2f} pt" if conf else
                                        f"accuracy drop {r['value']:.2f} pt > max {r['threshold']:.2f} pt"),
            "latency": lambda r: f"{pct} latency {r['value']:.3f} ms > max {r['threshold']:.3f} ms",
            "size": lambda r: f"size {r['value']:,} B > max {r['threshold']:,} B"}
    row["reasons"] = [text[k](r) for k, r in row["gates"].items() if not r["passed"]]
    row["verdict"] = "fail" if row["reasons"] else "pass"


def rank_key(row: dict[str, Any], rank_by: str) -> tuple:
    """A strict order without tolerances (kept for callers that compare single picks)."""
    values = {"latency": row["latency_ms"], "size": row["size_bytes"], "accuracy": -row["accuracy"]}
    order = [rank_by] + [k for k in RANK_KEYS if k != rank_by]
    return (row["baseline"], *(values[k] for k in order), row["name"])


GATE_CRITERIA = {"minimize": ("latency_ms", "size_bytes"), "maximize": ("accuracy",)}


def dominates(a: dict[str, Any], b: dict[str, Any], tolerance: float) -> bool:
    """`a` is at least as good as `b` on accuracy, latency (within `tolerance`, the measurement noise) and size,
    and better on one of them (latency only when beyond the noise)."""
    return pareto.dominates(a, b, **GATE_CRITERIA, tolerance={"latency_ms": tolerance})


def pareto_layers(rows: list[dict[str, Any]], tolerance: float) -> list[list[dict[str, Any]]]:
    return pareto.layers(rows, **GATE_CRITERIA, tolerance={"latency_ms": tolerance})


def _order_front(front: list[dict[str, Any]], rank_by: str, tolerance: float) -> list[dict[str, Any]]:
    """rank_by decides; what it cannot tell apart (latencies within the noise, equal sizes or accuracies) is
    decided by accuracy, then size, then latency, then name."""
    remaining, ordered = list(front), []
    while remaining:
        if rank_by == "latency":
            fastest = min(r["latency_ms"] for r in remaining)
            tied = [r for r in remaining if r["latency_ms"] <= fastest * (1 + tolerance)]
        elif rank_by == "size":
            tied = [r for r in remaining if r["size_bytes"] == min(x["size_bytes"] for x in remaining)]
        else:
            tied = [r for r in remaining if r["accuracy"] == max(x["accuracy"] for x in remaining)]
        pick = min(tied, key=lambda r: (-r["accuracy"], r["size_bytes"], r["latency_ms"], r["name"]))
        ordered.append(pick)
        remaining = [r for r in remaining if r is not pick]
    return ordered


def rank_rows(rows: list[dict[str, Any]], rank_by: str, tolerance: float) -> list[dict[str, Any]]:
    """Passing rows best first: FP32 baselines after every other candidate; within each group the Pareto front
    (accuracy, latency, size) before dominated rows, each front ordered by `_order_front`. So the pick is always
    on the front: a candidate that another beats on accuracy at the same latency (within the noise) and size
    is never picked."""
    out = []
    for group in ([r for r in rows if not r["baseline"]], [r for r in rows if r["baseline"]]):
        for layer in pareto_layers(group, tolerance):
            out += _order_front(layer, rank_by, tolerance)
    return out


def build_rows(params: Params, paths: Paths, cands_doc: dict, evaluate: dict, latency: dict,
               eval_path: Path, lat_path: Path) -> tuple[list[dict], dict[str, dict[str, str]]]:
    check_shapes(cands_doc, evaluate, latency, eval_path, lat_path, paths)
    cands = cands_doc["candidates"]
    check_candidate_sets(cands, evaluate, latency, eval_path, lat_path, paths)
    baselines = set((cands_doc.get("baselines") or {}).values())
    allowed = allowed_runtimes(params.target.runtime)
    pct = params.gate.latency_percentile
    rows, measured_all = [], {}
    for c in cands:
        name = c["name"]
        row: dict[str, Any] = {
            "name": name, "source": c.get("source"), "runtime": c.get("runtime"), "precision": c.get("precision"),
            "technique": c.get("technique"), "stages": c.get("stages", []), "format": c.get("format"),
            "baseline": name in baselines or c.get("source") == "baseline", "files": c.get("files", []),
            "primary": c.get("primary"), "accuracy": None, "drop": None, "drop_se": None, "latency_ms": None,
            "size_bytes": None,
            "metrics": {}, "latency": {}, "gates": {}, "verdict": "rejected", "reasons": []}
        rows.append(row)
        if c.get("status") != "ok":
            row["reasons"] = [f"export: {c.get('reason') or 'failed'}"]
            continue
        if c.get("runtime") not in allowed:
            row["reasons"] = [f"runtime {c.get('runtime')!r} excluded by target.runtime={params.target.runtime!r}"]
            continue
        files = candidate_files(c, paths)
        missing = [rel(f, paths) for f in files if not f.is_file()]
        if missing:
            raise StaleInputsError(f"{missing}: files of candidate {name} missing; rerun `edgeopt export`")
        measured = {f: sha256_file(paths.exported / f) for f in c["files"]}
        measured_all[name] = measured
        if c.get("sha256") and not hashes_match(measured, c["sha256"]):
            raise StaleInputsError(f"{rel(paths.exported, paths)}: files of {name} changed after export (sha256 "
                                   f"differs from candidates.json); rerun `dvc repro`")
        ev, lat = evaluate["candidates"][name], latency["candidates"][name]
        check_measured(name, ev, measured, files, eval_path, paths)
        if lat.get("status", "ok") == "ok":
            check_measured(name, lat, measured, files, lat_path, paths)
        row["metrics"] = {k: ev.get(k) for k in ("accuracy", "baseline", "baseline_accuracy", "drop", "drop_se",
                                                 "lost", "gained", "params",
                                                 "nonzero_params", "macs", "unique_weights", "file_bytes",
                                                 "gzip_bytes")}
        row["latency"] = {k: v for k, v in lat.items() if k.endswith(("_ms", "_fps")) or k == "runs"}
        row["size_bytes"] = sum(f.stat().st_size for f in files)
        for what, entry in (("evaluate", ev), ("latency", lat)):
            if entry.get("status", "ok") != "ok":
                row["reasons"].append(f"{what}: {entry.get('reason') or entry.get('status')}")
        if row["reasons"]:
            continue
        if ev.get("accuracy") is None or (ev.get("drop") is None and ev.get("baseline_accuracy") is None):
            raise StaleInputsError(f"{rel(eval_path, paths)}: no accuracy/drop for {name}; rerun `edgeopt evaluate`")
        if lat.get(f"{pct}_ms") is None:
            raise StaleInputsError(f"{rel(lat_path, paths)}: no {pct}_ms for {name}; rerun the benchmark")
        own = (cands_doc.get("baselines") or {}).get(c.get("runtime")) == name  # from export, not evaluate's claim
        bad = impossible(ev, lat, row["size_bytes"], pct, evaluate.get("images"), own)
        if bad:  # never ranked: the numbers cannot describe a real run
            row.update(verdict="fail", reasons=bad)
            continue
        drop = ev["drop"] if ev.get("drop") is not None else ev["baseline_accuracy"] - ev["accuracy"]
        if params.gate.accuracy_confidence and ev.get("drop_se") is None:  # (images: checked in build_report)
            raise StaleInputsError(f"{rel(eval_path, paths)}: no drop_se for {name} (gate.accuracy_confidence needs "
                                   "the drop's paired spread, which this evaluate records); rerun "
                                   "`edgeopt evaluate`")
        row.update(accuracy=float(ev["accuracy"]), drop=round(float(drop), 6), latency_ms=float(lat[f"{pct}_ms"]),
                   drop_se=None if ev.get("drop_se") is None else float(ev["drop_se"]))
        evaluate_gates(row, params)
    return rows, measured_all


def check_images(evaluate: dict, eval_path: Path, paths: Paths) -> None:
    """The confidence rule's spread shrinks with the images evaluated: they must be the prepared split's."""
    try:
        counts = (read_json(paths.meta, "prepared data meta").get("counts") or {}).get(evaluate.get("split"))
    except (OSError, ValueError, AttributeError):
        counts = None  # no prepared data here (a device report's project copy): nothing to compare with
    total = sum(v for v in counts.values() if isinstance(v, int)) if isinstance(counts, dict) else None
    if total is not None and evaluate.get("images") != total:
        raise StaleInputsError(f"{rel(eval_path, paths)}: evaluated {evaluate.get('images')!r} images, but the "
                               f"prepared {evaluate.get('split')!r} split has {total}; rerun "
                               "`edgeopt evaluate`")


def build_report(params: Params, paths: Paths, latency_report: str | Path | None = None) -> dict[str, Any]:
    """The gate report (without raising for 'none passes'). Raises StaleInputsError for stale inputs."""
    eval_path = paths.metrics("evaluate")
    lat_path = Path(latency_report) if latency_report else paths.metrics("bench")
    cands_doc = load_input(paths.candidates, "candidates file", paths, "run `edgeopt export` (`dvc repro export`)")
    evaluate = load_input(eval_path, "evaluation", paths, "run `edgeopt evaluate` (`dvc repro evaluate`)")
    latency = load_input(lat_path, "latency report", paths,
                         "pass a report from `edgeopt bench --out`" if latency_report else
                         "run `edgeopt bench` (`dvc repro bench`)")
    if params.gate.accuracy_confidence:
        check_images(evaluate, eval_path, paths)
    rows, measured = build_rows(params, paths, cands_doc, evaluate, latency, eval_path, lat_path)
    if not rows:  # an input problem (exit 4), not "none passes" (exit 3): there was nothing to judge
        raise StaleInputsError(f"{paths.candidates}: lists no candidate, so there is nothing to gate; re-run "
                               "`edgeopt export` (`dvc repro export`) and check its log")
    tolerance = params.gate.latency_tolerance
    passed = rank_rows([r for r in rows if r["verdict"] == "pass"], params.gate.rank_by, tolerance)
    for group in (False, True):  # on the Pareto front of the passing candidates (baselines apart), for reports
        members = [r for r in passed if r["baseline"] is group]
        front = pareto_layers(members, tolerance)[0] if members else []
        for r in members:
            r["pareto_front"] = any(r is f for f in front)
    report = {
        "format": FORMAT,
        "status": "pass" if passed else "none_pass",
        "error": None,
        "target": params.section("target"),
        "thresholds": params.section("gate"),
        "rule": RULE,
        "latency_source": {"path": rel(lat_path, paths), "device_report": bool(latency_report),
                           **{k: latency.get(k) for k in ("hardware", "runtimes", "profile")}},
        "evaluation": {"split": evaluate.get("split"), "images": evaluate.get("images")},
        "baselines": cands_doc.get("baselines", {}),
        "rows": rows,
        "passed": [r["name"] for r in passed],
        "selected": passed[0]["name"] if passed else None,
        "sha256": measured,
        "inputs": {rel(p, paths): sha256_file(p) for p in (paths.candidates, eval_path, lat_path)},
    }
    return seal(report)


def seal(report: dict[str, Any]) -> dict[str, Any]:
    report.pop("digest", None)
    report["digest"] = sha256_json(report)
    return report


def stale_report(params: Params, exc: StaleInputsError) -> dict[str, Any]:
    return seal({"format": FORMAT, "status": "stale", "error": str(exc), "target": params.section("target"),
                 "thresholds": params.section("gate"), "rule": RULE, "rows": [], "passed": [], "selected": None,
                 "sha256": {}, "inputs": {}})


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """metrics/gate.json: flat numbers for `dvc metrics show`."""
    rows = {r["name"]: r for r in report["rows"]}
    pick = rows.get(report["selected"] or "")
    return {"status": report["status"], "selected": report["selected"], "candidates": len(rows),
            "passed": len(report["passed"]), "rejected": sum(r["verdict"] == "rejected" for r in rows.values()),
            "failed": sum(r["verdict"] == "fail" for r in rows.values()),
            "selected_accuracy": pick["accuracy"] if pick else None, "selected_drop": pick["drop"] if pick else None,
            "selected_drop_se": pick.get("drop_se") if pick else None,
            "selected_latency_ms": pick["latency_ms"] if pick else None,
            "selected_size_bytes": pick["size_bytes"] if pick else None,
            "rank_by": report["thresholds"]["rank_by"], "error": report["error"], "digest": report["digest"]}


def format_table(report: dict[str, Any]) -> str:
    """Candidates x gates with values, margins (threshold minus value; negative = over) and the verdict."""
    t = report["thresholds"]
    pct = t["latency_percentile"]
    conf = t.get("accuracy_confidence") or 0
    drop_head = f"drop pt +-SE{f' <{100 * conf:g}% bound' if conf else ''} (<= {t['max_accuracy_drop']})"
    head = ["candidate", "runtime", "acc %", drop_head,
            f"{pct} ms (<= {t['max_latency_ms']})", f"size KB (<= {t['max_size_bytes'] / 1e3:g})", "verdict"]
    lines = []
    for r in report["rows"]:
        g = r["gates"]

        def cell(key: str, fmt: str, scale: float = 1.0) -> str:
            if key not in g:
                return "-"
            v, m = g[key]["value"] / scale, g[key]["margin"] / scale
            shown = f"{v:{fmt}}"
            if key == "accuracy_drop" and r.get("drop_se") is not None:  # measured +- SE, then the bound judged
                shown = f"{r['drop']:{fmt}} +-{r['drop_se']:{fmt}}" + (f" <{v:{fmt}}" if "measured" in g[key] else "")
            return f"{shown} ({'+' if m >= 0 else ''}{m:{fmt}}) {'ok' if g[key]['passed'] else 'FAIL'}"

        verdict = r["verdict"].upper() + (" *selected*" if r["name"] == report["selected"] else "")
        if r["reasons"]:
            verdict += ": " + "; ".join(r["reasons"])
        lines.append([r["name"], r["runtime"] or "-", "-" if r["accuracy"] is None else f"{r['accuracy']:.2f}",
                      cell("accuracy_drop", ".2f"), cell("latency", ".3f"), cell("size", ".1f", 1e3), verdict])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    fmt = lambda row: "  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip()  # noqa: E731
    out = [fmt(head), fmt(["-" * w for w in widths])] + [fmt(x) for x in lines]
    out.append(f"selected: {report['selected'] or 'none'} (rank_by={t['rank_by']}; baselines only as a last resort)")
    return "\n".join(out)
