"""Run report: what was run (date, commit, data, params changed), the candidate table, Pareto charts with the
gate's pick, training curves, the sensitivity chart and the model card. Torch-free.

Outputs: reports/report.md, report.html (self-contained: charts embedded as data URIs), pareto_latency.png,
pareto_size.png, curves.png (when a stage recorded training history), model_card.md, metrics/report.json.
The building blocks (`candidate_rows`, `pareto_front`, `markdown_table`, `model_card`, `plot_pareto`) are plain
functions over the metrics files, so the Prefect flow publishes the same table and card as UI artifacts.
Every text from a file (candidate, class, param) is escaped (edgeopt.markup); every number is rounded for
people. Works after a failed gate too (`edgeopt report` by hand): missing optional inputs leave cells empty.
"""
from __future__ import annotations

import base64
import csv
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from edgeopt import markup as mk
from edgeopt.errors import StageError
from edgeopt.io import atomic_write_bytes, atomic_write_text, optional_json
from edgeopt.params import Params, flatten
from edgeopt.paths import Paths
from edgeopt.pipeline import closure, load_pipeline
from edgeopt.results import (TABLE, TEXT_COLUMNS, candidate_rows, cell, markdown_table, pareto_front,  # noqa: F401
                             plot_pareto)
from edgeopt.stage import recorded_params, stage, stage_main

log = logging.getLogger("edgeopt.report")
PIPELINE_STAGES = ("train", "prune", "finetune", "cluster", "distill")  # the report deps in dvc.yaml
# training runs whose curves are drawn: (label, metrics file, key holding the history, dvclive folder)
CURVES = (("train: baseline", "train", "history", "train"),
          ("finetune: pruned model", "finetune", "history", "finetune"),
          ("cluster: cluster-preserving fine-tuning", "cluster", "history", None),
          ("distill: student with KD", "distill", None, "distill"),
          ("distill: student without KD", "distill", None, "distill_nokd"))
# --- what was run -------------------------------------------------------------------------------------------

def params_diff(run: dict[str, Any], defaults: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(dotted key, default, this run) for every param of the run that differs from its default, sorted by key."""
    a, b = flatten(defaults), flatten(run)
    missing = object()
    return [(k, a.get(k), b.get(k)) for k in sorted(b) if a.get(k, missing) != b[k]]


def default_params() -> tuple[dict[str, Any] | None, str]:
    """The defaults: params.yaml of the edgeopt repository, as committed (HEAD) when it is a git checkout."""
    import yaml

    from edgeopt.errors import ParamsError
    from edgeopt.gitinfo import git_state, show_file
    from edgeopt.params import params_from_dict

    repo = Path(__file__).resolve().parents[1]
    text = show_file(repo, "params.yaml")
    where = f"params.yaml at commit {(git_state(repo).get('short') or '?')[:10]}"
    if text is None and (repo / "params.yaml").is_file():
        text, where = (repo / "params.yaml").read_text(), f"{repo / 'params.yaml'}"
    if text is None:
        return None, "no default params.yaml found next to the edgeopt package"
    try:
        raw = yaml.safe_load(text) or {}
        return params_from_dict(raw, where).dump(), where  # filled in like the run's params
    except (yaml.YAMLError, ParamsError, TypeError):
        return (raw if isinstance(raw, dict) else None), where


def run_info(paths: Paths, meta: dict[str, Any] | None, promote: dict[str, Any] | None) -> dict[str, Any]:
    from edgeopt.gitinfo import commit_url, git_state

    git = git_state(paths.root, ignore=("dvc.lock",))
    counts = (meta or {}).get("counts") or {}
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "git": git,
            "commit_url": commit_url(paths.root, git.get("commit")),
            "data_hash": (meta or {}).get("content_hash"), "data_source": (meta or {}).get("source"),
            "images": sum(sum(c.values()) for c in counts.values() if isinstance(c, dict)) or None,
            "release": (promote or {}).get("release"), "channel": (promote or {}).get("channel"),
            "release_path": (promote or {}).get("path"), "manifest_link": _manifest_link(paths, promote)}


def _manifest_link(paths: Paths, promote: dict[str, Any] | None) -> str | None:
    """The release manifest relative to reports/ (opens from the report file and from a copy of the project)."""
    rel = (promote or {}).get("path")
    manifest = paths.root / rel / "manifest.json" if rel else None
    if manifest is None or not manifest.is_file():
        return None
    from urllib.parse import quote

    return quote(Path(os.path.relpath(manifest.resolve(), paths.reports.resolve())).as_posix())


def _dvclive_history(folder: Path) -> list[dict[str, Any]]:
    """History rows from a DVCLive folder (plots/metrics/{train,val}/{accuracy,loss}.tsv, step from 0)."""
    by_step: dict[int, dict[str, Any]] = {}
    for split in ("train", "val"):
        for metric in ("accuracy", "loss"):
            f = folder / "plots" / "metrics" / split / f"{metric}.tsv"
            try:
                with f.open(newline="") as fh:
                    for rec in csv.DictReader(fh, delimiter="\t"):
                        step = int(rec["step"])
                        by_step.setdefault(step, {"epoch": step + 1})[f"{split}_{metric}"] = float(rec[metric])
            except (OSError, KeyError, ValueError):
                continue
    return [by_step[s] for s in sorted(by_step)]


def training_curves(paths: Paths) -> list[dict[str, Any]]:
    """Each training run's history: from metrics/<stage>.json, else from its DVCLive folder."""
    curves = []
    for label, stage_name, key, live in CURVES:
        m = optional_json(paths.metrics(stage_name)) or {}
        hist = m.get(key) if key else None
        if not (isinstance(hist, list) and hist) and live:
            hist = _dvclive_history(paths.live(live))
        if isinstance(hist, list) and hist and all(isinstance(h, dict) and "epoch" in h for h in hist):
            best = m.get("best_epoch") if key else ((m.get("student" if live == "distill" else "student_nokd")
                                                     or {}).get("best_epoch"))
            curves.append({"label": label, "history": hist, "best_epoch": best})
    return curves


def pipeline_summary(paths: Paths) -> list[tuple[str, dict[str, Any]]]:
    """Top-level scalar metrics of the stages before export (what each compression step did)."""
    out = []
    for name in PIPELINE_STAGES:
        m = optional_json(paths.metrics(name)) or {}
        scalars = {k: v for k, v in m.items() if isinstance(v, (int, float, str, bool)) and k != "cost"}
        if scalars:
            out.append((name, scalars))
    return out


# --- model card -----------------------------------------------------------------------------------------------

def _gate_text(name: str, g: dict[str, Any]) -> str:
    fmt = {"accuracy_drop": lambda v: mk.pt(v, sign=False), "latency": mk.ms, "size": mk.size}.get(name, mk.human)
    what = name.replace('_', ' ')
    if name == "accuracy_drop" and g.get("confidence"):  # the bound was judged, not the measured drop
        what = f"accuracy drop's {100 * g['confidence']:g} % upper bound"
    return f"{what} {fmt(g.get('value'))} <= {fmt(g.get('threshold'))} " \
           f"({'pass' if g.get('passed') else 'fail'})"


def model_card(manifest: dict[str, Any] | None, gate: dict[str, Any] | None, meta: dict[str, Any] | None) -> str:
    """A short model card for the release (falls back to the gate's pick when nothing was promoted)."""
    t = mk.md_text
    if manifest is None:
        pick = (gate or {}).get("selected")
        return ("# Model card\n\nNo release was promoted in this run"
                + (f" (the gate selected {mk.md_code(pick)} but promote did not run)." if pick else
                   " (no candidate passed the gate; see reports/gate.json).") + "\n")
    m, inp, lat = manifest.get("metrics", {}), manifest.get("input", {}), manifest.get("latency", {})
    gates = manifest.get("gate", {}).get("gates", {})
    lineage = manifest.get("lineage") or {}
    data = lineage.get("data") or {}
    counts = data.get("counts") or (meta or {}).get("counts") or {}
    classes = [str(c) for c in manifest.get("classes", [])]
    git = lineage.get("git") or {}
    hw, prof = lat.get("hardware") or {}, lat.get("profile") or {}
    size = (inp.get("resize") or {}).get("size") or [inp.get("image_size")] * 2
    shown = ", ".join(t(c) for c in classes[:20]) + (", ..." if len(classes) > 20 else "")
    lines = [
        f"# Model card: {t(manifest['name'])} {t(manifest['version'])}", "",
        "## Model",
        f"- Candidate {mk.md_code(manifest.get('candidate'))}: {t(manifest.get('technique'))} "
        f"({t(manifest.get('precision'))}), runtime {t(manifest.get('runtime'))}, format {t(manifest.get('format'))}",
        f"- Pipeline stages: {' > '.join(t(s) for s in manifest.get('stages') or []) or '-'}",
        f"- Created {t(manifest.get('created'))} by {t(manifest.get('created_by'))}; git "
        f"{t(git.get('commit') or 'n/a (not built in a git repository)')}"
        f"{' (dirty working tree)' if git.get('dirty') else ''}; parent release {t(lineage.get('parent') or '-')}",
        "",
        "## Intended use",
        f"Classifying single {size[0]}x{size[1]}-pixel {'grayscale' if inp.get('channels') == 1 else 'colour'} "
        f"images into {len(classes)} classes ({shown}) on an edge CPU with {t(manifest.get('runtime'))}. "
        "Not for images outside this domain.", "",
        "## Data",
        f"- Source {t(data.get('source') or '-')}, content hash {mk.md_code(data.get('content_hash') or '-')}",
        "- Images per split: " + (", ".join(f"{t(s)} {mk.count(sum(c.values()))}" for s, c in counts.items()
                                           if isinstance(c, dict)) or "-"),
        "", "## Metrics",
        f"- Test accuracy {mk.pct(m.get('accuracy'))} on {mk.count(m.get('images'))} {t(m.get('split') or '-')} "
        f"images, drop {mk.pt(m.get('drop'), sign=False)}"
        + (f" +- {mk.pt(m['drop_se'], sign=False)} (paired SE)" if m.get("drop_se") is not None else "")
        + " vs the FP32 baseline in the same runtime "
        f"({mk.pct(m.get('baseline_accuracy'))})",
        f"- Latency p50 {mk.ms(lat.get('p50_ms'))}, p90 {mk.ms(lat.get('p90_ms'))}, batch 1, "
        f"on {t(hw.get('cpu') or '-')} "
        f"({t(prof.get('name') or '-')}, {mk.human(prof.get('threads'))} thread(s))",
        f"- Shipped size {mk.size(m.get('size_bytes'))} ({mk.count(m.get('size_bytes'))} bytes); "
        f"params {mk.count(m.get('params'))}, MACs {mk.count(m.get('macs'))}",
        "- Gates: " + ("; ".join(_gate_text(k, g) for k, g in gates.items()) or "-"), "",
        "## Limitations",
        "- Accuracy is measured on one held-out test split of the same source; other cameras, lighting or "
        "writing styles may score lower. Check it on new data with `edgeopt evaluate-release` (per-class accuracy "
        "and a drift check) before relying on rare classes.",
        "- Latency is that of the hardware above; other CPUs differ. Re-run `edgeopt bench` on the device and "
        "`edgeopt gate --latency-report` before shipping to new hardware.",
        "- Quantized / clustered weights trade a small accuracy drop for size and speed (see the drop above).", "",
        "## Input contract",
        f"- Shape {inp.get('shape')} {t(inp.get('layout'))} {t(inp.get('dtype'))}; colour {t(inp.get('color_order'))}",
        f"- Resize to {size[0]}x{size[1]} ({t((inp.get('resize') or {}).get('interpolation'))}), "
        f"then x = (pixel / 255 - mean) / std with mean {inp.get('mean')}, std {inp.get('std')}",
        "- Output: logits over the classes in manifest order; softmax for scores", "",
        "## Use it",
        f"    edgeopt registry pull {manifest['name']}@{manifest['version']} --to release/",
        "    edgeopt predict release/ image.png --top-k 3",
        "    edgeopt evaluate-release release/ labelled-folder/   # accuracy per class, drift check", "",
    ]
    return "\n".join(lines)


# --- pages ---------------------------------------------------------------------------------------------------

def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


# A line of text is a list of parts: ("t", text), ("c", code), ("b", bold), ("a", text, url). Rendered once to
# Markdown and once to HTML, each part escaped for its target: no hand-made markup from file contents.
Line = list[tuple]


def md_line(line: Line) -> str:
    out = {"t": mk.md_text, "c": mk.md_code, "b": lambda x: f"**{mk.md_text(x)}**"}
    return "".join(f"[{mk.md_text(p[1])}]({p[2]})" if p[0] == "a" else out[p[0]](p[1]) for p in line)


def html_line(line: Line) -> str:
    out = {"t": mk.html_text, "c": lambda x: f"<code>{mk.html_text(x)}</code>",
           "b": lambda x: f"<b>{mk.html_text(x)}</b>"}
    return "".join(f"<a href='{mk.html_text(p[2])}'>{mk.html_text(p[1])}</a>" if p[0] == "a" else out[p[0]](p[1])
                   for p in line)


def html_list(lines: list[Line]) -> str:
    return "<ul class='meta'>" + "".join(f"<li>{html_line(ln)}</li>" for ln in lines) + "</ul>"


def _run_lines(info: dict[str, Any], diff: list[tuple[str, Any, Any]], defaults_from: str,
               defaults_found: bool) -> list[Line]:
    """The 'Run' block: date, commit (linked when the remote is a known forge), data, release, params."""
    git = info["git"]
    commit: Line = [("t", "n/a (not a git repository)")]
    if git.get("commit"):
        commit = [("a", git["short"], info["commit_url"]) if info["commit_url"] else ("c", git["short"]),
                  ("t", " (uncommitted changes)" if git.get("dirty") else "")]
    release: Line = [("t", "none")]
    if info["release"]:
        release = [("c", info["release"]), ("t", f" (channel {info['channel'] or '-'}; ")]
        release += ([("a", "manifest", info["manifest_link"])] if info.get("manifest_link") else [("t", "no manifest")])
        release += [("t", ")")]
    params = (f"{len(diff)} differ from the defaults ({defaults_from})" if defaults_found
              else f"not compared ({defaults_from})")
    return [[("t", f"Date: {info['date']}")], [("t", "Commit: "), *commit],
            [("t", f"Data: {info['data_source'] or '-'}, {mk.count(info['images'])} images, content hash "),
             ("c", info["data_hash"] or "-")],
            [("t", "Release: "), *release], [("t", f"Params: {params}")]]


def _md_params(diff: list[tuple[str, Any, Any]]) -> list[str]:
    if not diff:
        return []
    return ["| param | default | this run |", "|---|---|---|",
            *(f"| {mk.md_cell(k)} | {mk.md_cell(mk.human(a))} | {mk.md_cell(mk.human(b))} |" for k, a, b in diff)]


CSS = ("body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:1.2em auto;max-width:1280px;"
       "padding:0 1em;color:#222;line-height:1.45}h1{font-size:1.5em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}"
       ".scroll{overflow-x:auto;max-width:100%}table{border-collapse:collapse;font-size:13px}"
       "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right;white-space:nowrap}"
       "th{background:#f4f4f4;white-space:normal;vertical-align:bottom;max-width:7em}td.t,th.t{text-align:left}"
       "tr.selected{background:#e8f5e9;font-weight:600}td.pass{color:#1b5e20}td.fail,td.rejected{color:#b71c1c}"
       "figure{margin:0 0 1em;max-width:1100px}.plots{display:flex;flex-wrap:wrap;gap:16px}"
       ".plots figure{flex:1 1 900px;min-width:0}"
       "figcaption{font-size:13px;color:#555}img{max-width:100%;height:auto;display:block}"
       "li,p,figcaption,td.t{overflow-wrap:anywhere}pre{white-space:pre-wrap;overflow-wrap:anywhere;"
       "background:#f8f8f8;padding:.8em;font-size:12px}code{overflow-wrap:anywhere}.meta li{color:#444}")


def _html_table(rows: list[dict[str, Any]]) -> str:
    head = "".join(f"<th class='{'t' if k in TEXT_COLUMNS else ''}'>{mk.html_text(h)}</th>" for k, h, _ in TABLE)
    body = []
    for r in rows:
        cells = []
        for k, _, f in TABLE:
            cls = ("t " + str(r["verdict"]).split()[0]) if k == "verdict" else ("t" if k in TEXT_COLUMNS else "")
            title = f" title='{mk.html_text('; '.join(r['reasons']))}'" if k == "verdict" and r["reasons"] else ""
            cells.append(f"<td class='{cls}'{title}>{mk.html_text(cell(r, k, f))}</td>")
        body.append(f"<tr class='{'selected' if r['selected'] else ''}'>{''.join(cells)}</tr>")
    return f"<div class='scroll'><table><tr>{head}</tr>{''.join(body)}</table></div>"


def html_page(title: str, rows: list[dict[str, Any]], sections: list[tuple[str, str]]) -> str:
    extra = "".join(f"<h2>{mk.html_text(h)}</h2>{content}" for h, content in sections)
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{mk.html_text(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{mk.html_text(title)}</h1>{extra}</body></html>\n")


def _figure(png: bytes, alt: str, caption: str) -> str:
    return (f"<figure><img src='{_data_uri(png)}' alt='{mk.html_text(alt)}'>"
            f"<figcaption>{mk.html_text(caption)}</figcaption></figure>")


def _front_note(rows: list[dict[str, Any]], x_key: str, what: str, selected: str | None) -> str:
    """The front in words, and where the gate's pick stands: on it, or dominated by which candidates (with their
    verdicts: a candidate that fails another gate, or a baseline, can beat the pick on these two criteria)."""
    from edgeopt.pareto import dominated_by

    by_name = {r["name"]: r for r in rows}
    label = lambda n: f"#{by_name[n]['index']} {n}"  # noqa: E731
    front = pareto_front(rows, x_key)
    text = f"Pareto front (accuracy vs {what}): {', '.join(map(label, front)) or '-'}."
    if not selected:
        return text
    beaten = dominated_by(rows, selected, minimize=(x_key,), maximize=("accuracy",))
    where = ("on this front" if selected in front else "not measured here" if not beaten else
             "not on this front: dominated by " + ", ".join(f"{label(n)} ({by_name[n]['verdict']})" for n in beaten))
    return f"{text} The gate's pick {selected} is {where}."


@stage("report")
def run(params: Params, paths: Paths) -> dict[str, Any]:
    evaluate, bench = optional_json(paths.metrics("evaluate")), optional_json(paths.metrics("bench"))
    if evaluate is None or bench is None:
        raise StageError(f"{paths.metrics('evaluate' if evaluate is None else 'bench')}: missing or unreadable; "
                         "run `edgeopt evaluate` and `edgeopt bench` first")
    gate = optional_json(paths.report("gate.json"))
    promote = optional_json(paths.metrics("promote"))
    meta = optional_json(paths.meta)
    manifest = None
    if promote and promote.get("path"):
        manifest = optional_json(paths.root / promote["path"] / "manifest.json")
    rows = candidate_rows(evaluate, bench, gate, params.gate.latency_percentile)
    pct = rows[0]["latency_percentile"] if rows else params.gate.latency_percentile
    selected = gate.get("selected") if gate else None
    fronts = {"latency": pareto_front(rows, "latency_ms"), "size": pareto_front(rows, "size_kb")}
    hw = bench.get("hardware") or {}
    profile = (bench.get("profile") or {}).get("name") or params.target.name
    title = f"edgeopt run: {len(rows)} candidates on {profile}"
    info = run_info(paths, meta, promote)
    defaults, defaults_from = default_params()
    built = recorded_params(paths, closure(load_pipeline(paths.root), ["gate"]))  # what built the candidates
    diff = params_diff(built, defaults) if defaults is not None else []
    threads = mk.human((bench.get("profile") or {}).get("threads"))
    rank_by = ((gate or {}).get("thresholds") or {}).get("rank_by") or params.gate.rank_by
    notes: list[Line] = [
        [("t", f"Latency: batch 1, {threads} thread(s), {hw.get('cpu') or '-'}; the gate ranks by {pct}.")],
        [("t", f"Accuracy: {evaluate.get('split')} split, {mk.count(evaluate.get('images'))} images; drop vs the "
               "FP32 baseline in the same runtime.")],
        [("t", "Gate: selected "), ("c", selected) if selected else ("t", "-"),
         ("t", f" ({gate.get('status') if gate else 'no gate report'}, rank by {rank_by}); details in "),
         ("a", "gate.json", "gate.json") if gate else ("t", "gate.json"), ("t", ".")]]
    front_notes = [_front_note(rows, "latency_ms", f"{pct} latency", selected),
                   _front_note(rows, "size_kb", "size", selected)]
    rejected: list[Line] = [[("t", f"#{r['index']} "), ("c", r["name"]), ("t", ": " + "; ".join(r["reasons"]))]
                            for r in rows if r["reasons"]]
    stages: list[Line] = [[("b", name), ("t", ": " + ", ".join(f"{k} {mk.human(v)}" for k, v in m.items()))]
                          for name, m in pipeline_summary(paths)]
    pngs = {"pareto_latency.png": plot_pareto(rows, "latency_ms", f"{pct} latency (ms), {profile}",
                                              "Accuracy vs latency"),
            "pareto_size.png": plot_pareto(rows, "size_kb", "shipped size (KB)", "Accuracy vs size")}
    curves = training_curves(paths)
    from edgeopt.plots import curves_png, note_png

    pngs["curves.png"] = curves_png(curves) if curves else note_png("no training history recorded in this run")
    sens_png = paths.report("sensitivity.png")
    sens = optional_json(paths.report("sensitivity.json")) or {}
    top = ", ".join(f"{r.get('layer')} ({mk.pt(r.get('drop'))})" for r in (sens.get("ranking") or [])[:3])
    sens_note = (f"Each layer quantized alone on {mk.human(sens.get('samples'))} validation images; most sensitive: "
                 f"{top or '-'}. Details: sensitivity.json.")
    run_lines = _run_lines(info, diff, defaults_from, defaults is not None)
    bullets = lambda lines: [f"- {md_line(ln)}" for ln in lines]  # noqa: E731

    md = [f"# {mk.md_text(title)}", "", *bullets(run_lines), "", *bullets(notes), "", markdown_table(rows), "",
          *(["## Rejected / failed", "", *bullets(rejected), ""] if rejected else []),
          "## Pareto charts", "", *[mk.md_text(n) for n in front_notes], "",
          "![accuracy vs latency](pareto_latency.png)", "![accuracy vs size](pareto_size.png)", ""]
    if curves:
        md += ["## Training curves", "", "Train and validation per epoch; the dotted line is the epoch whose "
               "weights were kept (best validation accuracy).", "", "![training curves](curves.png)", ""]
    if sens_png.is_file():
        md += ["## Quantization sensitivity", "", mk.md_text(sens_note), "",
               "![per-layer INT8 sensitivity](sensitivity.png)", ""]
    md += [*(["## Pipeline", "", *bullets(stages), ""] if stages else []),
           *(["## Params that differ from the defaults", "", *_md_params(diff), ""] if diff else []),
           "## Model card", "", "[model_card.md](model_card.md)", ""]

    sections = [("Run", html_list(run_lines)), ("Candidates", html_list(notes) + _html_table(rows))]
    if rejected:
        sections.append(("Rejected / failed", html_list(rejected)))
    sections.append(("Pareto charts", "<p>" + "<br>".join(mk.html_text(n) for n in front_notes) + "</p>"
                     "<div class='plots'>" + _figure(pngs["pareto_latency.png"], "accuracy vs latency",
                                                     "Numbers are the # column of the table; red staircase: Pareto "
                                                     "front; star: the gate's pick.")
                     + _figure(pngs["pareto_size.png"], "accuracy vs size", "Size: the shipped model files.")
                     + "</div>"))
    if curves:
        sections.append(("Training curves", _figure(pngs["curves.png"], "training curves",
                                                    "Train and validation per epoch; dotted: the epoch kept "
                                                    "(best validation accuracy).")))
    if sens_png.is_file():
        sections.append(("Quantization sensitivity", _figure(sens_png.read_bytes(), "per-layer INT8 sensitivity",
                                                             sens_note)))
    if stages:
        sections.append(("Pipeline", html_list(stages)))
    if diff:
        sections.append(("Params that differ from the defaults", "<div class='scroll'><table><tr>"
                         "<th class='t'>param</th><th class='t'>default</th><th class='t'>this run</th></tr>" + "".join(
                             f"<tr><td class='t'>{mk.html_text(k)}</td><td class='t'>{mk.html_text(mk.human(a))}</td>"
                             f"<td class='t'>{mk.html_text(mk.human(b))}</td></tr>" for k, a, b in diff)
                         + "</table></div>"))
    card = model_card(manifest, gate, meta)
    sections.append(("Model card", f"<details open><summary>model_card.md</summary><pre>{mk.html_text(card)}</pre>"
                                   "</details>"))

    for name, png in pngs.items():
        atomic_write_bytes(paths.report(name), png)
    atomic_write_text(paths.report("report.md"), "\n".join(md))
    atomic_write_text(paths.report("report.html"), html_page(title, rows, sections))
    atomic_write_text(paths.report("model_card.md"), card)
    pick = next((r for r in rows if r["selected"]), None)
    return {"candidates": len(rows), "selected": selected, "release": info["release"],
            "pareto_latency": fronts["latency"], "pareto_size": fronts["size"], "latency_percentile": pct,
            "selected_on_front": {k: (selected in f) if pick else None for k, f in fronts.items()},
            "run": {k: info[k] for k in ("date", "data_hash", "release")} | {"commit": info["git"].get("commit"),
                                                                           "dirty": info["git"].get("dirty")},
            "params_changed": {k: {"default": a, "run": b} for k, a, b in diff},
            "curves": [c["label"] for c in curves],
            "outputs": [os.path.join("reports", n) for n in ("report.md", "report.html", *pngs, "model_card.md")]}


if __name__ == "__main__":  # what dvc.yaml runs: python -m stages.<name>
    sys.exit(stage_main(run))
