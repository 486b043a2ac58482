"""Promote the gate's pick into the edge release registry -> registry/<model>/<version>/, metrics/promote.json.

Before anything is copied, the gate report must be intact (its digest), passing, and current: the files in
models/exported and the gate's inputs must still hash to what the gate measured. The release manifest holds
everything a device needs (files + sha256, input contract, classes) and everything an auditor needs
(metrics, latency with its hardware, gate results with thresholds, stages, lineage). Torch-free.
"""
from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

from edgeopt.errors import GateNonePassError, RegistryError, StaleInputsError
from edgeopt.gitinfo import git_state as git_state_of
from edgeopt.io import read_json, sha256_file, sha256_json
from edgeopt.params import Params
from edgeopt.paths import Paths
from edgeopt.registry import Registry, actor
from edgeopt.stage import stage

log = logging.getLogger("edgeopt.promote")


def load_gate_report(paths: Paths) -> dict[str, Any]:
    """reports/gate.json, refused when missing, hand-edited (digest) or stale (inputs changed since)."""
    from edgeopt.paths import PathEscapeError, confined

    path = paths.report("gate.json")
    try:
        report = read_json(path, "gate report")
    except FileNotFoundError:
        raise StaleInputsError(f"{path}: gate report missing; run `edgeopt gate` first") from None
    except ValueError as exc:
        raise StaleInputsError(str(exc)) from None
    if not isinstance(report, dict):
        raise StaleInputsError(f"{path}: not a gate report (expected a JSON object); rerun `edgeopt gate`")
    body = {k: v for k, v in report.items() if k != "digest"}
    if report.get("digest") != sha256_json(body):
        raise StaleInputsError(f"{path}: digest does not match its content (edited by hand?); rerun `edgeopt gate`")
    if report.get("status") == "stale":
        raise StaleInputsError(f"{path}: the gate found stale inputs ({report.get('error')}); rerun `dvc repro`")
    # A forger can recompute the digest: every field used below must have the gate's shape, and every file it
    # names must be one the gate reads (inside the project; the device report only where the gate took one).
    inputs, src, rows = report.get("inputs"), report.get("latency_source") or {}, report.get("rows")
    if (not isinstance(inputs, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in inputs.items())
            or not isinstance(src, dict) or not isinstance(report.get("sha256"), dict)
            or not all(isinstance(v, dict) for v in report["sha256"].values())
            or not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("name"), str)
                                                     and isinstance(r.get("reasons", []), list) for r in rows)
            or not isinstance(report.get("passed", []), list)):
        raise StaleInputsError(f"{path}: malformed gate report (edited by hand?); rerun `edgeopt gate`")
    device = src.get("path") if src.get("device_report") else None
    if device is not None and device not in inputs:
        raise StaleInputsError(f"{path}: latency report {device!r} is not among the gate's inputs (edited by "
                               f"hand?); rerun `edgeopt gate`")
    for name, digest in inputs.items():
        try:
            p = Path(name) if name == device and Path(name).is_absolute() else confined(paths.root, name, "input")
        except PathEscapeError as exc:
            raise StaleInputsError(f"{path}: {exc} (edited by hand?); rerun `edgeopt gate`") from None
        if not p.is_file() or sha256_file(p) != digest:  # is_file: never opens a FIFO or device
            raise StaleInputsError(f"{name}: changed or missing since the gate ran; rerun `edgeopt gate`")
    return report


def check_rederived(report: dict[str, Any], params: Params, paths: Paths) -> None:
    """The digest is not keyed: an edited report with a recomputed digest passes that check. So rebuild the report
    from its inputs with its own thresholds and target, and refuse unless it is the very same report."""
    from pydantic import ValidationError

    from edgeopt.params import Params as ParamsModel
    from stages.gate import build_report

    path = paths.report("gate.json")
    try:
        p = ParamsModel.model_validate({**params.dump(), "gate": report["thresholds"], "target": report["target"]})
    except (KeyError, TypeError, ValidationError):
        raise StaleInputsError(f"{path}: thresholds/target unreadable (edited by hand?); rerun `edgeopt gate`") \
            from None
    src = report.get("latency_source") or {}
    device = None
    if src.get("device_report"):
        device = Path(src["path"]) if Path(src["path"]).is_absolute() else paths.root / src["path"]
    if build_report(p, paths, device)["digest"] != report["digest"]:
        raise StaleInputsError(f"{path}: does not match a re-evaluation of its own inputs (edited by hand and the "
                               "digest recomputed?); rerun `edgeopt gate`")


def gate_row(report: dict[str, Any], candidate: str | None) -> dict[str, Any]:
    """The row to release: the gate's pick, or a named candidate that passed."""
    rows = {r["name"]: r for r in report.get("rows", [])}
    name = candidate or report.get("selected")
    if name is None:
        raise GateNonePassError("the gate report has no passing candidate; nothing to promote "
                                "(see reports/gate.json)")
    if name not in rows:
        raise RegistryError(f"candidate {name!r} is not in the gate report (candidates: {', '.join(rows)})")
    if rows[name].get("verdict") != "pass" or name not in report.get("passed", []):
        raise RegistryError(f"candidate {name!r} did not pass the gate ({'; '.join(rows[name]['reasons'])}); "
                            f"it cannot be promoted")
    return rows[name]


def release_files(row: dict[str, Any], measured: dict[str, str], paths: Paths) -> tuple[dict[str, Path], dict[str, str]]:
    """{name in release: source}, {name in release: sha256 measured by the gate}; the candidate dir is dropped.
    Every file must lie inside models/exported (no '..', absolute path or symlink out): promote never copies an
    outside file into a release."""
    from edgeopt.paths import PathEscapeError, confined

    if not isinstance(row.get("files"), list) or not row["files"]:
        raise StaleInputsError(f"gate report: candidate {row.get('name')!r} lists no files; rerun `edgeopt gate`")
    try:
        sources = {PurePosixPath(f).as_posix(): confined(paths.exported, f, f"file of {row['name']}")
                   for f in row["files"]}
    except PathEscapeError as exc:
        raise StaleInputsError(f"{exc}; rerun `edgeopt export` and `edgeopt gate`") from None
    files = [PurePosixPath(f) for f in row["files"]]
    common = PurePosixPath(os.path.commonpath([f.parent.as_posix() or "." for f in files]))
    out, expected = {}, {}
    for f in files:
        name = f.relative_to(common).as_posix() if common.as_posix() not in ("", ".") else f.as_posix()
        src = sources[f.as_posix()]
        if not src.is_file():
            raise StaleInputsError(f"{src}: file of {row['name']} missing; rerun `dvc repro`")
        if sha256_file(src) != measured.get(f.as_posix()):
            raise StaleInputsError(f"{src}: differs from what the gate measured (sha256); rerun `edgeopt gate`")
        out[name], expected[name] = src, measured[f.as_posix()]
    return out, expected


def input_contract(cands: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """How a device turns an image file into the model input (docs/ARTIFACTS.md, Data)."""
    inp = {**meta, **(cands.get("input") or {})}
    size, channels = int(inp["image_size"]), int(inp.get("channels") or inp["shape"][1])
    return {"shape": inp.get("shape") or [1, channels, size, size], "layout": inp.get("layout", "NCHW"),
            "dtype": inp.get("dtype", "float32"), "channels": channels,
            "color_order": inp.get("color_order") or ("L" if channels == 1 else "RGB"),
            "resize": {"size": [size, size], "interpolation": meta.get("resize") if isinstance(meta.get("resize"), str)
                       else "bilinear", "order": "convert to color_order first, then resize (PIL)"},
            "scale": 1 / 255, "mean": inp["mean"], "std": inp["std"],
            "normalization": "x = (pixel / 255 - mean) / std per channel, HWC -> CHW, batch axis first",
            "pixel_source": "uint8 image converted to color_order (PIL mode L or RGB)"}


def git_state(root: Path) -> dict[str, Any]:
    # dvc.lock is rewritten by the very `dvc repro` that runs this stage: it does not make the code dirty.
    return git_state_of(root, ignore=("dvc.lock",))


def git_tag(root: Path, model: str, version: str, message: str) -> tuple[str | None, str]:
    """Annotated GTO-style registration tag `model@vX.Y.Z` on HEAD; (tag, note), tag None when skipped."""
    tag = f"{model}@v{version}"
    env = {**os.environ}
    for var, default in (("GIT_COMMITTER_NAME", "edgeopt"), ("GIT_COMMITTER_EMAIL", "edgeopt@localhost")):
        env.setdefault(var, default)  # an annotated tag needs an identity; CI runners often have none
    env.setdefault("GIT_AUTHOR_NAME", env["GIT_COMMITTER_NAME"])
    env.setdefault("GIT_AUTHOR_EMAIL", env["GIT_COMMITTER_EMAIL"])
    if git_state(root)["commit"] is None:
        return None, "not tagged: not a git repository with a commit"
    try:
        out = subprocess.run(["git", "-C", str(root), "tag", "-a", tag, "-m", message], capture_output=True,
                             text=True, env=env, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"not tagged: {exc}"
    if out.returncode != 0:
        return None, f"not tagged: git tag failed: {(out.stderr.strip().splitlines() or ['?'])[0]}"
    return tag, f"tagged {tag} (push it with `git push origin {tag}`)"


def build_manifest(params: Params, paths: Paths, report: dict[str, Any], row: dict[str, Any],
                   primary: str) -> dict[str, Any]:
    cands = read_json(paths.candidates, "candidates file")
    meta = read_json(paths.meta, "prepared data meta")
    return {
        "candidate": row["name"], "source": row["source"], "technique": row["technique"],
        "precision": row["precision"], "runtime": row["runtime"], "format": row["format"], "primary": primary,
        "stages": row["stages"],
        "input": input_contract(cands, meta),
        "output": {"name": "logits", "kind": "logits", "shape": [1, len(meta["classes"])],
                   "postprocess": "softmax over classes; top-1 = argmax"},
        "classes": list((cands.get("input") or {}).get("classes") or meta["classes"]),
        "metrics": {**row["metrics"], "split": report["evaluation"]["split"],
                    "images": report["evaluation"]["images"], "size_bytes": row["size_bytes"]},
        "latency": {**row["latency"], **{k: report["latency_source"].get(k) for k in
                                         ("hardware", "runtimes", "profile", "path", "device_report")},
                    "target": report["target"]},
        "gate": {"verdict": row["verdict"], "gates": row["gates"], "thresholds": report["thresholds"],
                 "rule": report["rule"], "selected": report["selected"], "report_digest": report["digest"]},
        "lineage": {"git": git_state(paths.root), "data": {"content_hash": meta.get("content_hash"),
                                                           "source": meta.get("source"), "counts": meta.get("counts")},
                    "gate_inputs": report["inputs"], "params": params.dump()},
    }


def promote_from_gate(params: Params, paths: Paths, *, channel: str | None = None, candidate: str | None = None,
                      version: str | None = None, via: str = "edgeopt promote") -> dict[str, Any]:
    """Release the gate's pick (or a named passing candidate) and point `channel` at it."""
    report = load_gate_report(paths)
    row = gate_row(report, candidate)
    files, expected = release_files(row, report["sha256"].get(row["name"], {}), paths)
    check_rederived(report, params, paths)
    primary = next((n for n, src in files.items() if src == paths.exported / row["primary"]), None)
    if primary is None:
        raise StaleInputsError(f"{paths.candidates}: primary file {row['primary']!r} of {row['name']} is not among "
                               f"its files; rerun `edgeopt export`")
    manifest = build_manifest(params, paths, report, row, primary)
    cfg = params.registry
    registry = Registry(paths.registry(cfg.root))
    by = actor(via)
    with registry.locked():  # re-entrant: release and channel move as one step, so racing promotions of other
        # candidates leave the channel history in release order (the channel ends at the release made last)
        res = registry.publish(cfg.model_name, files, manifest, version=version, bump=cfg.bump, by=by,
                               expected_sha256=expected)
        moved = registry.point(cfg.model_name, channel or cfg.channel, res["version"], by=by)
    tag, tag_note = None, "tagging off (registry.tag: false)"
    if cfg.tag and res["created"]:
        tag, tag_note = git_tag(paths.root, cfg.model_name, res["version"],
                                f"edgeopt release {cfg.model_name} {res['version']} ({row['name']})")
    elif cfg.tag:
        tag_note = "no new release, no new tag"
    for line in filter(None, [res["note"], tag_note]):
        log.info("promote: %s", line)
    log.info("promote: %s@%s %s; channel %s -> %s", cfg.model_name, res["version"],
             "created" if res["created"] else "unchanged", moved["channel"], moved["version"])
    try:
        where = res["path"].resolve().relative_to(paths.root.resolve()).as_posix()
    except ValueError:
        where = str(res["path"])
    return {"model": cfg.model_name, "version": res["version"], "created": res["created"],
            "candidate": row["name"], "release": f"{cfg.model_name}@{res['version']}", "path": where,
            "manifest_sha256": res["manifest_sha256"], "channel": moved["channel"],
            "channel_changed": moved["changed"], "previous": moved["previous"], "tag": tag, "note": tag_note}


@stage("promote")
def run(params: Params, paths: Paths, channel: str | None = None, candidate: str | None = None,
        version: str | None = None) -> dict[str, Any]:
    return promote_from_gate(params, paths, channel=channel, candidate=candidate, version=version)
