"""The Markdown summary of a benchmark JSON (benchmark.md): settings, the compression table, the targets
(met / not met with the numbers), pipeline cost per stage and training throughput."""
from __future__ import annotations

from typing import Any

from edgeopt.markup import md_code, md_text


def _n(v: Any, fmt: str = ",.0f", none: str = "-") -> str:
    return none if v is None else format(v, fmt)


def _x(v: Any) -> str:
    return "-" if v is None else (f"{v:.1f}x" if v >= 10 else f"{v:.2f}x")


def _kb(v: Any) -> str:
    return "-" if v is None else f"{v / 1024:,.1f}"


def _lat(row: dict[str, Any], key: str) -> dict[str, Any]:
    return ((row.get("latency") or {}).get(key)) or {}


def compression_table(comp: dict[str, Any], search_pick: str | None = None) -> list[str]:
    head = ("| row | runtime | prec. | acc % (seed 0) | acc % mean ± std (seeds) | drop pt (seed 0) | size KiB | gzip KiB | params | MMACs | p50 / p90 ms (1 thr) "
            "| p50 / p90 ms (all) | fps 1 thr | batch img/s | size x PT | speed x PT (1 thr) | size x OV | "
            "speed x OV (1 thr) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in comp["rows"]:
        one, allc = _lat(r, "1_thread"), _lat(r, "all_cores")
        pt, ov = (r.get("ratios") or {}).get("pytorch_fp32") or {}, (r.get("ratios") or {}).get("openvino_fp32") or {}
        name = f"**{r['name']}** (selected)" if r.get("selected") else r["name"]
        if search_pick and r["name"] == search_pick:
            name += " (the search's pick)"
        if r.get("status") != "ok":
            name += f" FAILED: {(r.get('reason') or '')[:80]}"
        batch = (r.get("throughput_batch") or {}).get("images_per_s")
        lines.append(
            f"| {name} | {r.get('runtime') or '-'} | {r.get('precision') or '-'} | {_n(r.get('accuracy'), '.2f')} "
            f"| {_seeds(r)} | {_n(r.get('drop'), '+.2f')} | {_kb(r.get('size_bytes'))} | {_kb(r.get('gzip_bytes'))} "
            f"| {_n(r.get('params'))} | {_n(r['macs'] / 1e6 if r.get('macs') else None, ',.1f')} "
            f"| {_n(one.get('p50_ms'), '.3f')} / {_n(one.get('p90_ms'), '.3f')} "
            f"| {_n(allc.get('p50_ms'), '.3f')} / {_n(allc.get('p90_ms'), '.3f')} "
            f"| {_n(one.get('throughput_fps'))} | {_n(batch)} | {_x(pt.get('size_x'))} "
            f"| {_x(pt.get('p50_speedup_1_thread'))} | {_x(ov.get('size_x'))} | {_x(ov.get('p50_speedup_1_thread'))} |")
    return lines


def _seeds(r: dict[str, Any]) -> str:
    accs = (r.get("seeds") or {}).get("accuracy") or []
    if len(accs) < 2:
        return "-"
    return f"{r['accuracy_mean']:.2f} ± {r['accuracy_std']:.2f} ({len(accs)})"


def targets_section(t: dict[str, Any]) -> list[str]:
    if not t or not t.get("candidate"):
        return ["No candidate to check (see errors)."]
    verdict = "ALL MET" if t["all_met"] else "NOT ALL MET"
    lines = [f"Candidate: **{t['candidate']}** (picked by: {t['selected_by']}). Overall: **{verdict}**."
             + (f" {t['note']}." if t.get("note") else ""), "",
             "| target | measured | required | met | detail |", "|---|---|---|---|---|"]
    for it in t["items"]:
        v, unit = it["value"], it["unit"]
        shown = "-" if v is None else str(v) if isinstance(v, str) else (
            f"{v:+.2f} {unit}" if unit == "pt" else f"{v:.3g}{unit}")
        met = {True: "met", False: "**NOT MET**", None: "not measured"}[it["met"]]
        required = f"{it['op']} {it['limit']}" + {"pt": " pt", "x": "x"}.get(unit, "")
        lines.append(f"| {it['name']} | {shown} | {required} | {met} | {it['detail']} |")
    return lines


def peer_section(doc: dict[str, Any]) -> list[str]:
    """The external peer's runs and the wall time of each side (the pipeline: its whole realistic chain)."""
    runs = doc.get("reference") or []
    if not runs:
        return []
    r0 = runs[0].get("recipe") or {}
    out = ["", "## The external peer (benchmarks/reference.py)", "",
           f"ResNet-18 (CIFAR stem), one-cycle SGD (max lr {r0.get('max_lr')}), {r0.get('augment')}, "
           f"{r0.get('epochs')} epochs, batch {r0.get('batch')}, on {runs[0].get('train_images')} train+val images; "
           f"then Torch-Pruning {r0.get('prune_ratio')} + {r0.get('kd_epochs')} epochs KD.", "",
           "| seed | bare: train s | bare: MMACs | pruned + KD: s | pruned: MMACs | process s |",
           "|---|---|---|---|---|---|"]
    for r in runs:
        out.append(f"| {r['seed']} | {_n(r['bare']['train_s'], '.0f')} | {_n(r['bare']['macs'] / 1e6, ',.1f')} "
                   f"| {_n(r['pruned_kd']['train_s'], '.0f')} | {_n(r['pruned_kd']['macs'] / 1e6, ',.1f')} "
                   f"| {_n(r.get('wall_s'), '.0f')} |")
    chain = ((doc.get("cost") or {}).get("realistic") or {}).get("total_wall_s")
    out += ["", f"Wall time, one seed: the peer {_n(runs[0].get('wall_s'), '.0f')} s (train + prune + KD), "
                f"edgeopt's realistic chain {_n(chain, '.0f')} s (every stage, export, evaluation and "
                "benchmark included)."]
    return out


def cost_table(label: str, c: dict[str, Any]) -> list[str]:
    lines = [f"### {label}: {c.get('execution')}, work dir `{c.get('workdir')}`", "",
             "| stage | status | wall s (process) | stage s (function) | peak RSS MB | ETA s |",
             "|---|---|---|---|---|---|"]
    for name, s in c.get("stages", {}).items():
        lines.append(f"| {name} | {s['status']}{(': ' + s['reason'][:90]) if s.get('reason') and s['status'] != 'ok' else ''} "
                     f"| {_n(s.get('wall_s'), '.1f')} | {_n(s.get('stage_wall_s'), '.1f')} "
                     f"| {_n(s.get('peak_rss_mb'), ',.0f')} | {_n(s.get('eta_s'), '.0f')} |")
    lines.append(f"| **total** | {'ok' if c.get('ok') else 'FAILED'} | {_n(c.get('total_wall_s'), '.1f')} "
                 f"| {_n(c.get('total_stage_wall_s'), '.1f')} | max {_n(c.get('max_peak_rss_mb'), ',.0f')} | |")
    return lines


def render(doc: dict[str, Any]) -> str:
    env, s = doc.get("environment", {}), doc.get("settings", {})
    hw, git = env.get("hardware", {}), env.get("git", {})
    libs = ", ".join(f"{k} {v}" for k, v in (env.get("libraries") or {}).items() if v)
    out = [f"# edgeopt benchmark ({doc.get('mode')} mode)", "",
           f"- started {doc.get('started')}, took {_n(doc.get('duration_s'), '.0f')} s "
           f"(mode goal {_n(s.get('budget_s'), '.0f')} s)",
           f"- hardware: {hw.get('cpu')}, {hw.get('cores')} cores, {hw.get('memory_gb')} GB, ISA "
           f"{'/'.join(hw.get('isa') or [])}; load average at start {hw.get('load_average_at_start')}",
           f"- git: {git.get('commit') or git.get('note')}" + (" (dirty: uncommitted changes)" if git.get("dirty") else ""),
           f"- python {env.get('python')}; {libs}"]
    b = doc.get("budget") or {}
    if b:
        parts = ("parts side by side (--jobs), overlapping: " if b.get("parts_overlap") else "") + ", ".join(
            f"{k} {v:,.0f} s" for k, v in (b.get("parts_s") or {}).items())
        longest = ", ".join(f"{k} {v:,.0f} s" for k, v in (b.get("longest_stages_s") or {}).items())
        verdict = {True: "met", False: "**NOT MET**"}.get(b.get("met"), "not judged (the run has errors or no table)")
        out.append(f"- time goal {verdict}: {_n(b.get('took_s'), ',.0f')} s of "
                   f"{_n(b.get('goal_s'), ',.0f')} s; {parts}; longest stages: {longest}")
    for add in doc.get("added_seeds") or []:
        at = (add.get("git") or {}).get("short")
        when = f"(started {add.get('started')}, {_n(add.get('wall_s'), ',.0f')} s, git {at})"
        out.append((f"- seeds {', '.join(map(str, add['seeds']))} added by `--add-seeds` {when}: the peer and "
                    "train .. evaluate per seed; sizes, MACs and latencies are seed 0's" if add.get("seeds") else
                    f"- table re-derived from the seeds' files by `--add-seeds` {when}, no training")
                   + (f"; {add['note']}" if add.get("note") else ""))
    add = doc.get("added_probe")
    if add:
        out.append(f"- convergence probe added by `--add-probe` (started {add.get('started')}, "
                   f"{_n(add.get('wall_s'), ',.0f')} s, git {(add.get('git') or {}).get('short')})"
                   + (f"; {add['note']}" if add.get("note") else ""))
    for cut in s.get("cut") or []:
        out.append(f"- left out of this run: {cut}")
    data = s.get("data") or {}
    model = s.get("model") or {}
    out += [f"- data: {data.get('note')}",
            f"- model: {model.get('arch')} width {model.get('width')}"
            + (f" (**width multiplier {model.get('width')} < 1**: {model.get('width_note')})"
               if (model.get("width") or 1) < 1 else "")]
    for note in s.get("notes") or []:
        out.append(f"- note: {note}")
    comp = doc.get("compression")
    if comp:
        p = comp.get("protocol", {})
        out += ["", "## Compression", "",
                f"Latency: batch {p.get('batch')}, {p.get('warmup')} warm-up + {p.get('runs')} timed calls, "
                f"{p.get('rounds')} interleaved round(s), {p.get('kept')}; `1 thr` = 1 thread, `all` = "
                f"{(p.get('threads') or {}).get('all_cores')} threads. Accuracy on the {p.get('accuracy')}; "
                "drop = points below the FP32 baseline in the same runtime. Ratios: times smaller / faster than "
                "FP32 PyTorch eager (PT) and FP32 OpenVINO (OV) of the baseline. Gate: "
                f"{(comp.get('gate') or {}).get('status')}, pick {comp.get('selected')}.", ""]
        searched = s.get("search")
        if searched:
            out += [f"Knobs of the compression stages from search {md_code(searched['name'])}, trial "
                    f"{md_text(searched['trial'])} ({md_code(searched['file'])}): "
                    f"{md_code(' '.join(searched['overrides']))}; its pick {md_code(searched['pick'])} "
                    f"scored {_n(searched.get('val_accuracy'), '.2f')} % on validation in the search. The search "
                    f"itself ({searched.get('trials')} trials, {_n(searched.get('trials_wall_s'), ',.0f')} s of "
                    "trial wall time) ran before this benchmark and is not in its wall time.", ""]
        out += compression_table(comp, (searched or {}).get("pick"))
        out += ["", "## Targets", ""] + targets_section(comp.get("targets") or {})
    out += peer_section(doc)
    cost = doc.get("cost") or {}
    if cost:
        out += ["", "## Pipeline cost", "",
                "Per stage: wall time around the stage's own process (`edgeopt <stage>`, incl. interpreter and "
                "library start-up), the stage function's own `cost.wall_s`, and the peak resident memory of that "
                "process (VmHWM at exit; in-process runs: the process peak so far)."]
        for label, c in cost.items():
            out += [""] + cost_table(label, c)
    tp = doc.get("training_throughput")
    if tp:
        met = "met" if tp.get("met") else "**NOT MET**"
        out += ["", "## Training throughput: train stage vs bare PyTorch loop", "",
                f"{tp['model']['arch']} width {tp['model']['width']}, batch {tp['batch_size']}, "
                f"{tp['epochs_per_measurement']} epoch(s) x {tp['repeats']} repeat(s). Compared: {tp['definition']}.", "",
                f"- bare PyTorch loop: {tp['bare_images_per_s']:.1f} img/s",
                f"- train stage: {tp['stage_images_per_s']:.1f} img/s",
                f"- overhead: {tp['overhead_pct']:+.1f} % (target <= {tp['target_overhead_pct']:.0f} %): {met}"]
        if tp.get("realistic_run_stage_images_per_s"):
            out.append(f"- for reference, the realistic run's train stage (augment={tp.get('realistic_run_augment')}, "
                       f"so not comparable): {tp['realistic_run_stage_images_per_s']:.1f} img/s")
    if doc.get("errors"):
        out += ["", "## Errors", ""] + [f"- {e}" for e in doc["errors"]]
    return "\n".join(out) + "\n"
