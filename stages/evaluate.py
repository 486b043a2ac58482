"""Accuracy of every exported candidate in its own runtime on `evaluate.split` -> metrics/evaluate.json.

The split is the test split, except in search trials (`evaluate.split: val`), which must not choose on test
images: the search checks only its winner on the test split. The split is memory-mapped and streamed in
`evaluate.batch_size` batches, so 10,000+ images need bounded memory; the anonymous-memory growth while streaming
is recorded to prove it. Torch is not used: this is the accuracy of the shipped file in the runtime the device
runs.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.accuracy import correct_in_runtime, paired_drop
from edgeopt.arrays import load_meta, open_split
from edgeopt.errors import PathEscapeError, RuntimeModelError, StageError
from edgeopt.io import gzip_size, read_json, sha256_file
from edgeopt.memory import anon_rss_mb
from edgeopt.params import Params
from edgeopt.paths import Paths, confined
from edgeopt.runtime import load_model
from edgeopt.stage import stage, stage_main

log = logging.getLogger("edgeopt.evaluate")
CARRIED = ("runtime", "precision", "params", "nonzero_params", "macs", "unique_weights", "sha256")


def candidate_paths(exported: Path, cand: dict[str, Any]) -> tuple[list[Path], Path]:
    """(files, primary) of a candidate, each confined to models/exported: a candidates.json naming '..', an
    absolute path or a symlink out of the directory is refused (RuntimeModelError: that candidate fails)."""
    try:
        if not isinstance(cand.get("files"), list) or not isinstance(cand.get("sha256") or {}, dict):
            raise PathEscapeError(f"candidate {cand.get('name')!r}: 'files' must be a list and 'sha256' an object")
        files = [confined(exported, f, f"candidate {cand['name']!r}: file") for f in cand["files"]]
        for rel in cand.get("sha256") or {}:
            confined(exported, rel, f"candidate {cand['name']!r}: file")
        primary = confined(exported, cand.get("primary"), f"candidate {cand['name']!r}: primary file")
    except PathEscapeError as exc:
        raise RuntimeModelError(f"{exported / 'candidates.json'}: {exc}; rerun `edgeopt export`") from None
    return files, primary


def _verify_files(exported: Path, cand: dict[str, Any]) -> None:
    changed = sorted(rel for rel, h in (cand.get("sha256") or {}).items()
                     if not (exported / rel).is_file() or sha256_file(exported / rel) != h)
    if changed:
        raise RuntimeModelError(f"{exported}: files {changed} of {cand['name']} are missing or changed since "
                                "export (sha256 differs); rerun `edgeopt export`")


@stage("evaluate")
def run(params: Params, paths: Paths) -> dict[str, Any]:
    try:
        doc = read_json(paths.candidates, "candidates file")
    except (FileNotFoundError, ValueError) as exc:
        raise StageError(f"{exc}; run `edgeopt export` first") from None
    cands = doc.get("candidates") if isinstance(doc, dict) else None
    if not isinstance(cands, list) or not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in cands):
        raise StageError(f"{paths.candidates}: 'candidates' must be a list of objects with a 'name'; rerun "
                         f"`edgeopt export`")
    meta = load_meta(paths.prepared)
    split = params.evaluate.split
    images, labels = open_split(paths.prepared, split)
    results: dict[str, Any] = {}
    hits: dict[str, np.ndarray] = {}  # per-image correctness, for the paired spread of each drop
    start = peak = anon_rss_mb()
    growth = 0.0
    for cand in cands:
        row = {k: cand.get(k) for k in CARRIED}
        row.update(file_bytes=0, gzip_bytes=0, accuracy=None, status=cand.get("status"), reason=cand.get("reason"))
        try:
            files, primary = candidate_paths(paths.exported, cand)
        except RuntimeModelError as exc:
            if cand.get("status") == "ok":  # a failed export keeps its own reason
                row.update(status="failed", reason=str(exc))
            results[cand["name"]] = row
            continue
        row.update(file_bytes=sum(f.stat().st_size for f in files if f.is_file()),
                   gzip_bytes=sum(gzip_size(f) for f in files if f.is_file()))
        if cand.get("status") == "ok":
            try:
                _verify_files(paths.exported, cand)
                model = load_model(primary, runtime=cand["runtime"], device=params.target.device)
                t0, before = time.perf_counter(), anon_rss_mb()
                hits[cand["name"]], top = correct_in_runtime(model, images, labels, meta["mean"], meta["std"],
                                                             params.evaluate.batch_size)
                row["accuracy"] = 100.0 * int(hits[cand["name"]].sum()) / max(len(labels), 1)
                row["eval_s"] = round(time.perf_counter() - t0, 3)
                growth, peak = max(growth, top - before), max(peak, top)
                del model
            except RuntimeModelError as exc:
                row.update(status="failed", reason=str(exc))
        results[cand["name"]] = row
    _add_drops(results, doc["baselines"] if isinstance(doc.get("baselines"), dict) else {}, hits)
    for name, r in results.items():
        if r["status"] == "ok":
            log.info("%-30s %-12s acc %.2f%%  drop %s +- %s (%s images lost, %s gained)", name, r["runtime"],
                     r["accuracy"], r["drop"], r["drop_se"], r["lost"], r["gained"])
        else:
            log.warning("%-30s failed: %s", name, r["reason"])
    return {"split": split, "images": int(len(labels)), "batch_size": params.evaluate.batch_size,
            "candidates": results,
            # anonymous memory (not the reclaimable pages of the memory-mapped split): its peak over the stage,
            # and the largest growth while one candidate streams the split
            "memory": {"anon_rss_start_mb": round(start, 1), "anon_rss_peak_mb": round(peak, 1),
                       "stream_growth_mb": round(growth, 1),
                       "test_split_float32_mb": round(images.size * 4 / 2**20, 1)}}


def _add_drops(results: dict[str, Any], baselines: dict[str, str | None], hits: dict[str, np.ndarray]) -> None:
    """`drop` = FP32 baseline accuracy in the same runtime minus the candidate's (points); `lost` / `gained`: the
    images only the baseline / only the candidate got right, and `drop_se` the drop's paired standard error."""
    for name, r in results.items():
        base_name = baselines.get(r["runtime"])
        base = results.get(base_name) if base_name else None
        r["baseline"] = base_name
        r["baseline_accuracy"] = base["accuracy"] if base else None
        ok = r["accuracy"] is not None and r["baseline_accuracy"] is not None
        r["drop"] = round(r["baseline_accuracy"] - r["accuracy"], 4) if ok else None
        r["lost"] = r["gained"] = r["drop_se"] = None
        if ok and name in hits and base_name in hits:
            mine, theirs = hits[name], hits[base_name]
            r["lost"], r["gained"] = int((theirs & ~mine).sum()), int((mine & ~theirs).sum())
            r["drop_se"] = 0.0 if name == base_name else paired_drop(r["lost"], r["gained"], len(mine))["drop_se"]
        if r["status"] == "ok" and not ok:
            r["status"] = "failed"  # a drop that cannot be measured must not pass the accuracy gate
            r["reason"] = f"no FP32 baseline accuracy in {r['runtime']} to compare with (baseline {base_name!r} failed)"


if __name__ == "__main__":  # what dvc.yaml runs: python -m stages.<name>
    sys.exit(stage_main(run))
