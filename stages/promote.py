"""Promote the gate's pick into the edge release registry -> registry/<model>/<version>/, metrics/promote.json.

Before anything is copied, the gate report must be intact (its digest), passing, and current: the files in
models/exported and the gate's inputs must still hash to what the gate measured. The release manifest holds
everything a device needs (files + sha256, input contract, classes) and everything an auditor needs
(metrics, latency with its hardware, gate results with thresholds, stages, lineage). Torch-free.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path, PurePosixPath
from typing import Any

from edgeopt.errors import GateNonePassError, PromotionRefused, RegistryError, StaleInputsError
from edgeopt.gitinfo import git_state as git_state_of
from edgeopt.io import optional_json, read_json, sha256_file, sha256_json
from edgeopt.params import Params
from edgeopt.paths import Paths
from edgeopt.registry import Registry, actor
from edgeopt.stage import stage, stage_main

log = logging.getLogger("edgeopt.promote")


def load_gate_report(paths: Paths) -> dict[str, Any]:
    """reports/gate.json, refused when missing, hand-edited (digest) or stale (inputs changed since)."""
    from edgeopt.errors import PathEscapeError
    from edgeopt.paths import confined

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


def check_rederived(report: dict[str, Any], paths: Paths) -> None:
    """The digest is not keyed: an edited report with a recomputed digest passes that check. So rebuild the report
    from its inputs with its own thresholds and target, and refuse unless it is the very same report."""
    from pydantic import ValidationError

    from edgeopt.params import Params as ParamsModel
    from edgeopt.gating import build_report

    path = paths.report("gate.json")
    try:
        p = ParamsModel.model_validate({"gate": report["thresholds"], "target": report["target"]})
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
    from edgeopt.errors import PathEscapeError
    from edgeopt.paths import confined

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
    """HEAD and whether the code is dirty; the files the pipeline itself writes (dvc.lock, metrics/, reports/,
    dvclive/: git-tracked DVC outputs) do not count, the very `dvc repro` running this stage rewrites them."""
    from edgeopt.errors import PipelineError
    from edgeopt.pipeline import load_pipeline

    try:
        written = [o for spec in load_pipeline(root).values() for o in spec.outs]
    except (PipelineError, OSError):
        written = []
    return git_state_of(root, ignore=("dvc.lock", *written))


def _normal(value: Any) -> Any:
    """JSON round trip: recorded params were written as JSON (tuples became lists)."""
    return json.loads(json.dumps(value, default=str))


def _leaf_diffs(key: str, was: Any, now: Any) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (recorded, now)} of the leaves that differ."""
    if isinstance(was, dict) and isinstance(now, dict):
        out: dict[str, tuple[Any, Any]] = {}
        for k in sorted(set(was) | set(now)):
            out.update(_leaf_diffs(f"{key}.{k}", was.get(k), now.get(k)))
        return out
    return {} if was == now else {key: (was, now)}


def recorded_lineage(params: Params, paths: Paths) -> dict[str, Any]:
    """What built the candidates the gate measured: the params, data and commit every stage upstream of the gate
    recorded when it ran (metrics/<stage>.json `ran_with`, the values dvc.lock holds). Refused (exit 4) when they
    differ from the params and data of now: a release must say what really built it."""
    from edgeopt.pipeline import closure, load_pipeline

    now = _normal(params.model_dump(by_alias=True))
    meta_hash = (optional_json(paths.meta) or {}).get("content_hash")
    built: dict[str, Any] = {}
    commits: dict[str, str | None] = {}
    diffs: dict[str, str] = {}
    for stage_name in closure(load_pipeline(paths.root), ["gate"]):
        path = paths.metrics(stage_name)
        ran = (optional_json(path) or {}).get("ran_with")
        if not isinstance(ran, dict) or not isinstance(ran.get("params"), dict):
            raise StaleInputsError(f"{path}: no record of the params stage {stage_name!r} ran with (missing, or made "
                                   "by an older edgeopt); rerun `dvc repro`")
        for key, value in ran["params"].items():
            current: Any = now
            for part in key.split("."):
                current = current.get(part) if isinstance(current, dict) else None
            for leaf, (was, is_) in _leaf_diffs(key, _normal(value), current).items():
                diffs.setdefault(leaf, f"{leaf}: built with {was!r}, now {is_!r}")
            built[key] = value
        if ran.get("data_hash") and meta_hash and ran["data_hash"] != meta_hash:
            diffs.setdefault("data", f"data: {stage_name} used data {str(ran['data_hash'])[:12]}, data/prepared is "
                                     f"now {str(meta_hash)[:12]}")
        commits[stage_name] = (ran.get("git") or {}).get("commit")
    if diffs:
        shown = list(diffs.values())
        raise StaleInputsError("the candidates were not built with the params and data of now ("
                               + "; ".join(shown[:8]) + (f"; +{len(shown) - 8} more" if len(shown) > 8 else "")
                               + "); rerun `dvc repro`, or promote with the params they were built with")
    return {"params": built, "data_hash": meta_hash, "stage_commits": commits}


def check_regression(registry: Registry, model: str, channel: str, row: dict[str, Any], content: dict[str, str],
                     paths: Paths, max_regression: float, allow: bool, split: str = "test") -> dict[str, Any] | None:
    """The channel's current release, measured now in its runtime on the split the candidate was evaluated on
    (evaluate.split, the test split unless a search or experiment chose otherwise), against the candidate.
    Refused (exit 5) when the candidate is more than `max_regression` points below it, unless `allow`."""
    from edgeopt.accuracy import accuracy_in_runtime
    from edgeopt.arrays import load_meta, open_split
    from edgeopt.errors import RuntimeModelError
    from edgeopt.runtime import load_model

    current = registry.channel(model, channel)
    if current is None:
        return None
    manifest = registry.manifest(model, current)
    base = {"channel_release": f"{model}@{current}", "candidate_accuracy": row["accuracy"],
            "max_regression": max_regression, "allowed": allow}
    if {k: v.get("sha256") for k, v in (manifest.get("files") or {}).items()} == content:
        return {**base, "note": "same files as the channel's current release"}
    problems = registry.verify(model, current)
    meta = load_meta(paths.prepared)
    inp = manifest.get("input") or {}
    why = None
    if problems:
        why = f"{model}@{current} fails verification ({problems[0]})"
    elif manifest.get("classes") != meta["classes"]:
        why = f"{model}@{current} has other classes ({len(manifest.get('classes') or [])} vs {len(meta['classes'])})"
    elif list(inp.get("shape") or [])[1:] != [meta["channels"], meta["image_size"], meta["image_size"]]:
        why = f"{model}@{current} takes input {inp.get('shape')}, this data set is " \
              f"{[meta['channels'], meta['image_size'], meta['image_size']]}"
    if why is None:
        images, labels = open_split(paths.prepared, split)
        try:
            runtime_model = load_model(registry.release_dir(model, current) / manifest["primary"],
                                       runtime=manifest.get("runtime"))
            accuracy, _ = accuracy_in_runtime(runtime_model, images, labels, inp["mean"], inp["std"], 256)
        except (RuntimeModelError, KeyError) as exc:
            why = f"{model}@{current} cannot be measured here ({exc})"
    if why is not None:
        if problems:  # a broken release is no standard to keep: replacing it is the repair
            return {**base, "note": f"{why}; replaced without comparison"}
        if not allow:
            raise PromotionRefused(f"{model}@{channel} is {current}, which cannot be compared with {row['name']}: {why}. "
                                   f"Not released; set registry.allow_regression=true (or --allow-regression) to "
                                   f"move {channel!r} anyway")
        return {**base, "note": f"{why}; allowed by registry.allow_regression"}
    delta = float(row["accuracy"]) - accuracy
    result = {**base, "channel_accuracy": round(accuracy, 4), "delta_points": round(delta, 4),
              "split": split, "images": int(len(labels))}
    if delta < -max_regression and not allow:
        raise PromotionRefused(
            f"{row['name']} scores {row['accuracy']:.2f} % but {model}@{channel} ({current}) scores {accuracy:.2f} % "
            f"on the same {len(labels)} {split} images in its runtime ({delta:+.2f} pt; registry.max_regression is "
            f"{max_regression} pt). Not released; set registry.allow_regression=true (or --allow-regression) to "
            f"release it anyway")
    return result


def in_experiment() -> dict[str, str] | None:
    """The DVC experiment this stage runs in (`dvc exp run`), None outside one."""
    name = os.environ.get("DVC_EXP_NAME")
    return {"name": name, "baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV", "")} if name else None


def build_manifest(paths: Paths, report: dict[str, Any], row: dict[str, Any], primary: str,
                   lineage: dict[str, Any]) -> dict[str, Any]:
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
        "lineage": {"git": git_state(paths.root), "stage_commits": lineage["stage_commits"],
                    "experiment": in_experiment(),
                    "data": {"content_hash": meta.get("content_hash"), "source": meta.get("source"),
                             "counts": meta.get("counts")},
                    "gate_inputs": report["inputs"], "params": lineage["params"]},
    }


def promote_from_gate(params: Params, paths: Paths, *, channel: str | None = None, candidate: str | None = None,
                      version: str | None = None, allow_regression: bool | None = None,
                      via: str = "edgeopt promote") -> dict[str, Any]:
    """Release the gate's pick (or a named passing candidate) and point `channel` at it, unless the artifacts were
    built with other params/data than now (exit 4) or the release would regress the channel (exit 5)."""
    from edgeopt.gitinfo import create_tag, tag_versions
    from edgeopt.stage import ParamsView

    full = params.unrestricted() if isinstance(params, ParamsView) else params
    report = load_gate_report(paths)
    row = gate_row(report, candidate)
    files, expected = release_files(row, report["sha256"].get(row["name"], {}), paths)
    check_rederived(report, paths)
    lineage = recorded_lineage(full, paths)
    primary = next((n for n, src in files.items() if src == paths.exported / row["primary"]), None)
    if primary is None:
        raise StaleInputsError(f"{paths.candidates}: primary file {row['primary']!r} of {row['name']} is not among "
                               f"its files; rerun `edgeopt export`")
    manifest = build_manifest(paths, report, row, primary, lineage)
    cfg = full.registry
    channel = channel or cfg.channel
    allow = cfg.allow_regression if allow_regression is None else allow_regression
    registry = Registry(paths.registry(cfg.root))
    experiment = in_experiment()
    tagging = cfg.tag and experiment is None and git_state(paths.root)["commit"] is not None
    by = actor(via)
    with registry.locked():  # re-entrant: check, release and channel move as one step, so racing promotions
        # leave the channel history in release order (the channel ends at the release made last)
        policy = check_regression(registry, cfg.model_name, channel, row, expected, paths, cfg.max_regression, allow,
                                  split=report["evaluation"].get("split") or "test")
        tags = tag_versions(paths.root, cfg.model_name) if tagging else {}
        res = registry.publish(cfg.model_name, files, manifest, version=version, bump=cfg.bump, by=by,
                               expected_sha256=expected, taken=set(tags))
        moved = registry.point(cfg.model_name, channel, res["version"], by=by)
    tag = None
    if not cfg.tag:
        tag_note = "tagging off (registry.tag: false)"
    elif experiment is not None:
        tag_note = (f"not tagged: experiment {experiment['name']} (tag the commit you keep: "
                    f"`git tag -a {cfg.model_name}@v{res['version']}`)")
    elif not tagging:
        tag_note = "not tagged: not a git repository with a commit"
    elif not res["created"]:
        tag_note = "no new release, no new tag"
    else:
        tag = f"{cfg.model_name}@v{res['version']}"
        error = create_tag(paths.root, tag, f"edgeopt release {cfg.model_name} {res['version']} ({row['name']}), "
                                            f"manifest sha256 {res['manifest_sha256']}")
        if error:
            raise RegistryError(f"{cfg.model_name}@{res['version']} was released and {channel!r} points at it, but "
                                f"git tag {tag} failed: {error}; tag it by hand (`git tag -a {tag}`)")
        tag_note = f"tagged {tag} (push it with `git push origin {tag}`)"
    for line in filter(None, [res["note"], tag_note, (policy or {}).get("note")]):
        log.info("promote: %s", line)
    log.info("promote: %s@%s %s; channel %s -> %s", cfg.model_name, res["version"],
             "created" if res["created"] else "unchanged", moved["channel"], moved["version"])
    try:
        where = res["path"].resolve().relative_to(paths.root.resolve()).as_posix()
    except ValueError:
        where = str(res["path"])
    return {"model": cfg.model_name, "version": res["version"], "created": res["created"],
            "candidate": row["name"], "accuracy": row["accuracy"], "release": f"{cfg.model_name}@{res['version']}",
            "path": where, "manifest_sha256": res["manifest_sha256"], "channel": moved["channel"],
            "channel_changed": moved["changed"], "previous": moved["previous"], "tag": tag, "note": tag_note,
            "policy": policy}


@stage("promote")
def run(params: Params, paths: Paths, channel: str | None = None, candidate: str | None = None,
        version: str | None = None, allow_regression: bool | None = None) -> dict[str, Any]:
    """Release the gate's pick into the registry (registry.*): exit 4 when the artifacts were not built with the
    params/data of now, 5 when the release would regress its channel."""
    return promote_from_gate(params, paths, channel=channel, candidate=candidate, version=version,
                             allow_regression=allow_regression)


if __name__ == "__main__":  # what dvc.yaml runs: python -m stages.<name>
    sys.exit(stage_main(run, clear_metrics=True))  # its output is persist (no run-cache replay): DVC keeps it
