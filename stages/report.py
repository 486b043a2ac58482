"""Run report: one row per candidate (Markdown + HTML), accuracy-vs-latency / -size Pareto plots, model card.

Outputs: reports/report.md, report.html, pareto_latency.png, pareto_size.png, model_card.md, metrics/report.json.
The building blocks (`candidate_rows`, `pareto_front`, `markdown_table`, `model_card`) are plain functions
over the metrics files, so the Prefect flow can publish the same table and card as UI artifacts. Torch-free.
Works after a failed gate too (`edgeopt report` by hand): missing optional inputs leave cells empty.
"""
from __future__ import annotations

import html
import io
import logging
from pathlib import Path
from typing import Any

from edgeopt.io import atomic_write_bytes, atomic_write_text, read_json
from edgeopt.params import Params
from edgeopt.paths import Paths
from edgeopt.stage import StageError, stage

log = logging.getLogger("edgeopt.report")
PIPELINE_STAGES = ("train", "prune", "finetune", "cluster", "distill")  # the report deps in dvc.yaml
COLUMNS = [  # (key, header, format)
    ("name", "candidate", "{}"), ("runtime", "runtime", "{}"), ("precision", "precision", "{}"),
    ("accuracy", "accuracy %", "{:.2f}"), ("drop", "drop pt", "{:+.2f}"), ("size_kb", "size KB", "{:,.1f}"),
    ("params", "params", "{:,}"), ("macs", "MACs", "{:,}"), ("unique_weights", "unique weights", "{:,}"),
    ("p50_ms", "p50 ms", "{:.3f}"), ("p90_ms", "p90 ms", "{:.3f}"),
    ("speedup_pytorch", "speed-up vs FP32 PyTorch", "{:.2f}x"),
    ("speedup_baseline", "speed-up vs FP32 runtime", "{:.2f}x"), ("verdict", "gate", "{}"),
]


def optional_json(path: Path) -> dict[str, Any] | None:
    try:
        return read_json(path)
    except (FileNotFoundError, ValueError):
        return None


def _ratio(num: float | None, den: float | None) -> float | None:
    return round(num / den, 3) if num and den else None


def candidate_rows(evaluate: dict[str, Any], bench: dict[str, Any], gate: dict[str, Any] | None = None
                   ) -> list[dict[str, Any]]:
    """One dict per candidate: accuracy, drop, size, params, MACs, unique weights, p50/p90, speed-ups, verdict."""
    lat = bench.get("candidates", {})
    ref = ((bench.get("pytorch_reference") or {}).get("baseline") or {}).get("p50_ms")
    verdicts = {r["name"]: r for r in (gate or {}).get("rows", [])}
    selected = (gate or {}).get("selected")
    rows = []
    for name, ev in evaluate.get("candidates", {}).items():
        b = lat.get(name, {})
        p50 = b.get("p50_ms") if b.get("status", "ok") == "ok" else None
        base = lat.get(ev.get("baseline") or "", {}).get("p50_ms")
        g = verdicts.get(name)
        verdict = "-" if g is None else g["verdict"] + (" (selected)" if name == selected else "")
        reasons = (g or {}).get("reasons") or ([] if ev.get("status") == "ok" else [ev.get("reason") or "failed"])
        rows.append({"name": name, "runtime": ev.get("runtime"), "precision": ev.get("precision"),
                     "accuracy": ev.get("accuracy"), "drop": ev.get("drop"),
                     "size_kb": ev["file_bytes"] / 1e3 if ev.get("file_bytes") is not None else None,
                     "params": ev.get("params"), "macs": ev.get("macs"), "unique_weights": ev.get("unique_weights"),
                     "p50_ms": p50, "p90_ms": b.get("p90_ms") if p50 is not None else None,
                     "speedup_pytorch": _ratio(ref, p50), "speedup_baseline": _ratio(base, p50),
                     "verdict": verdict, "reasons": reasons, "selected": name == selected,
                     "status": ev.get("status", "ok")})
    return rows


def pareto_front(rows: list[dict[str, Any]], x_key: str, y_key: str = "accuracy") -> list[str]:
    """Names not dominated on (lower x, higher y): no other candidate is at least as good on both and better
    on one. Sorted by x."""
    pts = [r for r in rows if r.get(x_key) is not None and r.get(y_key) is not None]
    front = [r for r in pts if not any(o[x_key] <= r[x_key] and o[y_key] >= r[y_key] and
                                       (o[x_key] < r[x_key] or o[y_key] > r[y_key]) for o in pts)]
    return [r["name"] for r in sorted(front, key=lambda r: (r[x_key], -r[y_key]))]


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    v = row.get(key)
    return "-" if v is None else fmt.format(v)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = "| " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    sep = "|" + "|".join("---" if k in ("name", "runtime", "precision", "verdict") else "---:" for k, _, _ in COLUMNS) + "|"
    body = ["| " + " | ".join(_cell(r, k, f).replace("|", "/") for k, _, f in COLUMNS) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def plot_pareto(rows: list[dict[str, Any]], x_key: str, xlabel: str, title: str) -> bytes:
    """PNG: every candidate labelled, the Pareto front highlighted and joined, the selected one starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    front = pareto_front(rows, x_key)
    pts = [r for r in rows if r.get(x_key) is not None and r.get("accuracy") is not None]
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    try:
        xs, ys = [r[x_key] for r in pts] or [0], [r["accuracy"] for r in pts] or [0]
        span = lambda v: (max(v) - min(v)) or 1.0  # noqa: E731
        placed: list[tuple[float, float]] = []
        for r in pts:
            on = r["name"] in front
            ax.scatter(r[x_key], r["accuracy"], s=(160 if r["selected"] else 70 if on else 35), zorder=3,
                       c="tab:red" if on else "tab:gray", marker="*" if r["selected"] else "o",
                       edgecolors="black" if r["selected"] else "none")
            # stack labels of nearby points instead of printing them over each other
            nx, ny = (r[x_key] - min(xs)) / span(xs), (r["accuracy"] - min(ys)) / span(ys)
            k = sum(abs(nx - px) < 0.3 and abs(ny - py) < 0.06 for px, py in placed)
            placed.append((nx, ny))
            ax.annotate(r["name"] + (" (selected)" if r["selected"] else ""), (r[x_key], r["accuracy"]),
                        textcoords="offset points", xytext=(6, 4 - 11 * k), fontsize=7,
                        color="black" if on else "dimgray")
        ax.margins(x=0.2, y=0.1)
        by_name = {r["name"]: r for r in pts}
        if front:
            ax.step([by_name[n][x_key] for n in front], [by_name[n]["accuracy"] for n in front], where="post",
                    color="tab:red", alpha=0.6, label="Pareto front", zorder=2)
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)


def pipeline_summary(paths: Paths) -> list[tuple[str, dict[str, Any]]]:
    """Top-level scalar metrics of the stages before export (what each compression step did)."""
    out = []
    for name in PIPELINE_STAGES:
        m = optional_json(paths.metrics(name))
        if m:
            out.append((name, {k: v for k, v in m.items() if isinstance(v, (int, float, str, bool)) and k != "cost"}))
    return out


def model_card(manifest: dict[str, Any] | None, gate: dict[str, Any] | None, meta: dict[str, Any] | None) -> str:
    """A short model card for the release (falls back to the gate's pick when nothing was promoted)."""
    if manifest is None:
        pick = (gate or {}).get("selected")
        return ("# Model card\n\nNo release was promoted in this run"
                + (f" (the gate selected `{pick}` but promote did not run)." if pick else
                   " (no candidate passed the gate; see reports/gate.json).") + "\n")
    m, inp, lat = manifest.get("metrics", {}), manifest.get("input", {}), manifest.get("latency", {})
    gates = manifest.get("gate", {}).get("gates", {})
    data = (manifest.get("lineage") or {}).get("data") or {}
    counts = data.get("counts") or (meta or {}).get("counts") or {}
    classes = manifest.get("classes", [])
    git = (manifest.get("lineage") or {}).get("git") or {}
    hw = lat.get("hardware") or {}
    lines = [
        f"# Model card: {manifest['name']} {manifest['version']}", "",
        "## Model",
        f"- Candidate `{manifest.get('candidate')}`: {manifest.get('technique')} ({manifest.get('precision')}), "
        f"runtime {manifest.get('runtime')}, format {manifest.get('format')}",
        f"- Pipeline stages: {' > '.join(manifest.get('stages', []))}",
        f"- Created {manifest.get('created')} by {manifest.get('created_by')}; git "
        f"{git.get('commit') or 'n/a (not built in a git repository)'}"
        f"{' (dirty working tree)' if git.get('dirty') else ''}; parent {manifest['lineage'].get('parent')}", "",
        "## Intended use",
        f"Classifying single {inp.get('image_size', (inp.get('resize') or {}).get('size'))}-pixel "
        f"{'grayscale' if inp.get('channels') == 1 else 'colour'} images into {len(classes)} classes "
        f"({', '.join(map(str, classes[:20]))}{', ...' if len(classes) > 20 else ''}) on an edge CPU with "
        f"{manifest.get('runtime')}. Not for images outside this domain.", "",
        "## Data",
        f"- Source `{data.get('source')}`, content hash `{data.get('content_hash')}`",
        "- Images per split: " + ", ".join(f"{s} {sum(c.values())}" for s, c in counts.items() if isinstance(c, dict)),
        "", "## Metrics",
        f"- Test accuracy {m.get('accuracy')} % on {m.get('images')} {m.get('split')} images, drop "
        f"{m.get('drop')} pt vs the FP32 baseline in the same runtime ({m.get('baseline_accuracy')} %)",
        f"- Latency p50 {lat.get('p50_ms')} ms, p90 {lat.get('p90_ms')} ms, batch 1, on {hw.get('cpu')} "
        f"({(lat.get('profile') or {}).get('name')}, {(lat.get('profile') or {}).get('threads')} thread(s))",
        f"- Shipped size {m.get('size_bytes')} bytes; params {m.get('params')}, MACs {m.get('macs')}",
        "- Gates: " + "; ".join(f"{k} {g['value']} <= {g['threshold']} ({'pass' if g['passed'] else 'fail'})"
                                for k, g in gates.items()), "",
        "## Limitations",
        "- Accuracy is measured on one held-out test split of the same source; other cameras, lighting or "
        "writing styles may score lower. Check per-class errors before relying on rare classes.",
        "- Latency is that of the hardware above; other CPUs differ. Re-run `edgeopt bench` on the device and "
        "`edgeopt gate --latency-report` before shipping to new hardware.",
        "- Quantized / clustered weights trade a small accuracy drop for size and speed (see the drop above).", "",
        "## Input contract",
        f"- Shape {inp.get('shape')} {inp.get('layout')} {inp.get('dtype')}; colour {inp.get('color_order')}",
        f"- Resize to {(inp.get('resize') or {}).get('size')} ({(inp.get('resize') or {}).get('interpolation')}), "
        f"then x = (pixel / 255 - mean) / std with mean {inp.get('mean')}, std {inp.get('std')}",
        "- Output: logits over the classes in manifest order; softmax for scores", "",
        "## Use it",
        f"    edgeopt registry pull {manifest['name']}@{manifest['version']} --to release/",
        "    edgeopt predict release/ image.png --top-k 3", "",
    ]
    return "\n".join(lines)


def html_page(title: str, rows: list[dict[str, Any]], sections: list[tuple[str, str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h, _ in COLUMNS)
    body = "".join(
        f"<tr class='{'selected' if r['selected'] else ''}'>"
        + "".join(f"<td title='{html.escape('; '.join(r['reasons']))}'>{html.escape(_cell(r, k, f))}</td>"
                  if k == "verdict" else f"<td>{html.escape(_cell(r, k, f))}</td>" for k, _, f in COLUMNS) + "</tr>"
        for r in rows)
    extra = "".join(f"<h2>{html.escape(h)}</h2>{content}" for h, content in sections)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
            "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}td:first-child{text-align:left}"
            "tr.selected{background:#e8f5e9;font-weight:bold}img{max-width:48%}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><table><tr>{head}</tr>{body}</table>{extra}"
            "<h2>Pareto plots</h2><img src='pareto_latency.png' alt='accuracy vs latency'>"
            "<img src='pareto_size.png' alt='accuracy vs size'></body></html>\n")


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
    rows = candidate_rows(evaluate, bench, gate)
    fronts = {"latency": pareto_front(rows, "p50_ms"), "size": pareto_front(rows, "size_kb")}
    hw = bench.get("hardware") or {}
    profile = (bench.get("profile") or {}).get("name") or params.target.name
    title = f"edgeopt run: {len(rows)} candidates on {profile}"
    release = promote.get("release") if promote else None
    notes = [f"Latency: batch 1, {(bench.get('profile') or {}).get('threads')} thread(s), {hw.get('cpu')}.",
             f"Accuracy: {evaluate.get('split')} split, {evaluate.get('images')} images; drop vs the FP32 "
             "baseline in the same runtime.",
             f"Gate: selected {gate.get('selected') if gate else '-'} ({gate.get('status') if gate else 'no gate report'}"
             f"); release: {release or 'none'}.",
             f"Pareto front (accuracy vs p50 latency): {', '.join(fronts['latency']) or '-'}; "
             f"(accuracy vs size): {', '.join(fronts['size']) or '-'}."]
    rejected = [f"- `{r['name']}`: {'; '.join(r['reasons'])}" for r in rows if r["reasons"]]
    stages_md = [f"- **{name}**: " + ", ".join(f"{k} {v}" for k, v in m.items()) for name, m in pipeline_summary(paths)]
    md = "\n".join([f"# {title}", "", *[f"- {n}" for n in notes], "", markdown_table(rows), "",
                    *(["## Rejected / failed", "", *rejected, ""] if rejected else []),
                    *(["## Pipeline", "", *stages_md, ""] if stages_md else []),
                    "## Pareto plots", "", "![accuracy vs latency](pareto_latency.png)",
                    "![accuracy vs size](pareto_size.png)", ""])
    sections = [("Notes", "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")]
    if rejected:
        sections.append(("Rejected / failed", "<ul>" + "".join(
            f"<li><code>{html.escape(r['name'])}</code>: {html.escape('; '.join(r['reasons']))}</li>"
            for r in rows if r["reasons"]) + "</ul>"))
    atomic_write_bytes(paths.report("pareto_latency.png"),
                       plot_pareto(rows, "p50_ms", f"p50 latency (ms), {profile}", "Accuracy vs latency"))
    atomic_write_bytes(paths.report("pareto_size.png"),
                       plot_pareto(rows, "size_kb", "shipped size (KB)", "Accuracy vs size"))
    atomic_write_text(paths.report("report.md"), md)
    atomic_write_text(paths.report("report.html"), html_page(title, rows, sections))
    atomic_write_text(paths.report("model_card.md"), model_card(manifest, gate, meta))
    return {"candidates": len(rows), "selected": gate.get("selected") if gate else None, "release": release,
            "pareto_latency": fronts["latency"], "pareto_size": fronts["size"],
            "outputs": ["reports/report.md", "reports/report.html", "reports/pareto_latency.png",
                        "reports/pareto_size.png", "reports/model_card.md"]}


if __name__ == "__main__":
    import sys

    from edgeopt.stage import stage_main

    sys.exit(stage_main(run))
