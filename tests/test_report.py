"""Report stage: candidate table numbers, Pareto fronts, plots, HTML, the model card, escaping, and the page as a
real browser renders it."""
from __future__ import annotations

import math
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from edgeopt.errors import GateNonePassError
from edgeopt.io import read_json, write_json
from edgeopt.params import load_params
from edgeopt.paths import Paths
from stages.report import TABLE, candidate_rows, markdown_table, model_card, params_diff, pareto_front
from tests.release_helpers import REPO, release_project, release_template  # noqa: F401

HOSTILE = "<b>x<|y\nz"


def run_stages(root, *names, overrides=()):
    import importlib

    params = load_params(root / "params.yaml", list(overrides))
    return [importlib.import_module(f"stages.{n}").run(params, Paths(root)) for n in names]


class Tags(HTMLParser):
    """Start tags of a page, and its text."""

    def __init__(self, page: str):
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def _table_lines(md: str) -> list[str]:
    return [ln for ln in md.splitlines() if ln.startswith("| ")]


def _cells(line: str) -> int:
    """Table cells of a Markdown row: pipes not escaped with a backslash, minus one."""
    return len(re.findall(r"(?<!\\)\|", line)) - 1


def test_pareto_front_rule():
    from edgeopt.pareto import dominated_by

    rows = [{"name": "a", "x": 1.0, "accuracy": 90.0}, {"name": "b", "x": 2.0, "accuracy": 95.0},
            {"name": "c", "x": 2.0, "accuracy": 94.0},  # dominated by b (same x, less accurate)
            {"name": "d", "x": 3.0, "accuracy": 95.0},  # dominated by b (slower, as accurate)
            {"name": "e", "x": 0.5, "accuracy": None},  # no measurement: not plotted, not on the front
            {"name": "n", "x": math.nan, "accuracy": 99.0},  # NaN is no measurement either
            {"name": "f", "x": 4.0, "accuracy": 96.0}]
    assert pareto_front(rows, "x") == ["a", "b", "f"]
    assert dominated_by(rows, "d", minimize=("x",), maximize=("accuracy",)) == ["b"]
    assert dominated_by(rows, "b", minimize=("x",), maximize=("accuracy",)) == []


def test_report_rows_files_and_model_card(release_project):
    root = release_project
    _, promoted, m = run_stages(root, "gate", "promote", "report")
    rows = {r["name"]: r for r in candidate_rows(read_json(root / "metrics" / "evaluate.json"),
                                                 read_json(root / "metrics" / "bench.json"),
                                                 read_json(root / "reports" / "gate.json"))}
    fp16 = rows["finetuned_ov_fp16"]
    assert fp16["p50_ms"] == pytest.approx(0.24) and fp16["drop"] == pytest.approx(0.2)
    assert fp16["latency_ms"] == pytest.approx(0.30) and fp16["latency_percentile"] == "p90"  # what the gate ranks
    assert fp16["speedup_pytorch"] == pytest.approx(1.0 / 0.24, abs=1e-3)     # PyTorch p50 1.0 ms
    assert fp16["speedup_baseline"] == pytest.approx(0.32 / 0.24, abs=1e-3)   # baseline_fp32_ov p50 0.32 ms
    assert fp16["verdict"] == "pass (selected)" and fp16["index"] == 3
    assert rows["baseline_fp32_ort"]["speedup_baseline"] == pytest.approx(1.0)

    assert m["candidates"] == 4 and m["selected"] == "finetuned_ov_fp16" and m["release"] == promoted["release"]
    assert m["pareto_latency"] == ["finetuned_ov_fp16", "baseline_fp32_ov"]
    assert m["pareto_size"] == ["finetuned_ort_int8_dynamic", "finetuned_ov_fp16", "baseline_fp32_ort"]
    assert m["selected_on_front"] == {"latency": True, "size": True}
    assert m["params_changed"] == {} and m["run"]["data_hash"] == "test"
    assert read_json(root / "metrics" / "report.json")["pareto_latency"] == m["pareto_latency"]

    md = (root / "reports" / "report.md").read_text()
    table = _table_lines(md)
    assert len(table) == 1 + 4 and all(_cells(ln) == len(TABLE) for ln in table)  # header + one row each
    line = next(ln for ln in table if ln.startswith("| 3 | finetuned_ov_fp16 | pass (selected) |"))
    for cell in ("94.80", "+0.20", "0.240", "0.300", "4.17x", "1.33x", "1,000", "5,000", "174.3"):
        assert f" {cell} |" in line, (cell, line)
    assert "The gate's pick finetuned_ov_fp16 is on this front." in md
    assert "- Date: " in md and "content hash `test`" in md and "0 differ from the defaults" in md
    link = re.search(r"\[manifest\]\(([^)]+)\)", md).group(1)  # opens from reports/
    assert read_json(root / "reports" / link)["version"] == "0.0.1"
    page = (root / "reports" / "report.html").read_text()
    assert page.count("<tr") == 5 and "<tr class='selected'><td class=''>3</td><td class='t'>finetuned_ov_fp16" in page
    assert "src='pareto_latency.png'" not in page and page.count("src='data:image/png;base64,") == 2  # embedded
    for png in ("pareto_latency.png", "pareto_size.png"):
        with Image.open(root / "reports" / png) as im:
            assert im.format == "PNG" and im.size[0] > 400
    card = (root / "reports" / "model_card.md").read_text()
    assert "# Model card: digits-classifier 0.0.1" in card
    assert "Test accuracy 94.80 % on 360 test images" in card and "p90 0.300 ms" in card and "test-cpu" in card
    assert "parent release -" in card and "None" not in card
    assert "accuracy drop 0.20 pt <= 1.00 pt (pass)" in card and "size 174.3 KB <= 2.00 MB (pass)" in card
    meta = read_json(root / "data" / "prepared" / "meta.json")
    assert f"mean {meta['mean']}" in card and "Colour L" not in card and "colour L" in card
    assert "16x16-pixel grayscale" in card and "## Limitations" in card and "## Intended use" in card
    # no unrounded float anywhere people read
    for text in (md, card):
        assert not re.search(r"\d\.\d{5,}", text.replace(str(meta["mean"]), "").replace(str(meta["std"]), ""))


def test_report_after_failed_gate(release_project):
    root = release_project
    with pytest.raises(GateNonePassError):
        run_stages(root, "gate", overrides=["gate.max_accuracy_drop=0", "gate.max_latency_ms=0.31"])
    (m,) = run_stages(root, "report")
    assert m["selected"] is None and m["release"] is None and m["selected_on_front"] == {"latency": None,
                                                                                          "size": None}
    md = (root / "reports" / "report.md").read_text()
    assert "## Rejected / failed" in md
    assert "- #3 `finetuned_ov_fp16`: accuracy drop 0.20 pt > max 0.00 pt" in md
    assert "- #2 `baseline_fp32_ort`: p90 latency 0.500 ms > max 0.310 ms" in md
    assert "no candidate passed the gate" in (root / "reports" / "model_card.md").read_text()
    assert markdown_table([]).count("\n") == 1


def test_a_pick_off_a_front_is_shown_truthfully(release_project):
    """rank_by=size picks the INT8 model: on the size front, but on the latency chart the FP16 model is faster
    and more accurate. The report says so rather than drawing the pick onto a front it is not on."""
    root = release_project
    _, m = run_stages(root, "gate", "report", overrides=["gate.rank_by=size"])
    assert m["selected"] == "finetuned_ort_int8_dynamic"
    assert m["selected_on_front"] == {"latency": False, "size": True}
    md = (root / "reports" / "report.md").read_text()
    assert ("The gate's pick finetuned_ort_int8_dynamic is not on this front: dominated by #3 finetuned_ov_fp16 "
            "(pass)." in md)
    assert "Pareto front (accuracy vs size): #4 finetuned_ort_int8_dynamic, #3 finetuned_ov_fp16, " in md


def test_params_diff_against_repo_defaults(release_project):
    """The report shows the params the candidates were built with (the stages' records), against the defaults."""
    from tests.release_helpers import write_stage_records

    root = release_project
    write_stage_records(root, ["train.epochs=3", "prune.protect=[first_conv]"])
    (m,) = run_stages(root, "report")
    assert m["params_changed"] == {"prune.protect": {"default": ["first_conv", "classifier"], "run": ["first_conv"]},
                                   "train.epochs": {"default": 15, "run": 3}}
    md = (root / "reports" / "report.md").read_text()
    assert "| train.epochs | 15 | 3 |" in md and "2 differ from the defaults (params.yaml at commit" in md
    assert params_diff({"a": {"b": 1, "c": 2}}, {"a": {"b": 1}, "d": 0}) == [("a.c", None, 2)]


def _rendered(md: str) -> Tags:
    """Markdown as GitHub / the Prefect UI render it (CommonMark + tables)."""
    markdown_it = pytest.importorskip("markdown_it")
    return Tags(markdown_it.MarkdownIt("commonmark").enable("table").render(md))


def test_hostile_names_are_escaped_everywhere(release_project):
    """A candidate, class or param named `<b>x<|y\\nz` (markup, a table pipe, a newline) stays text."""
    root = release_project
    ev, bench = read_json(root / "metrics" / "evaluate.json"), read_json(root / "metrics" / "bench.json")
    ev["candidates"][HOSTILE] = ev["candidates"].pop("finetuned_ov_fp16")
    bench["candidates"][HOSTILE] = bench["candidates"].pop("finetuned_ov_fp16")
    write_json(root / "metrics" / "evaluate.json", ev)
    write_json(root / "metrics" / "bench.json", bench)  # no gate: the report works from the measurements alone
    from tests.release_helpers import write_stage_records

    write_stage_records(root, ["data.root=<script>window.pwned=1</script>|`x"])  # what the stages ran with
    (m,) = run_stages(root, "report")
    assert HOSTILE in m["pareto_latency"]
    md = (root / "reports" / "report.md").read_text()
    assert "<b>" not in md and "<script" not in md and "\nz" not in md
    assert all(_cells(ln) in (len(TABLE), 3) for ln in _table_lines(md))  # candidates and params tables intact
    shown = _rendered(md)
    assert not {"b", "script"} & set(shown.tags)
    assert shown.tags.count("tr") == 1 + 4 + 1 + 1  # candidates: header + 4 rows; params: header + 1 row
    assert "<b>x<|y\\nz" in shown.text and "<script>window.pwned=1</script>|`x" in shown.text  # shown literally

    page = (root / "reports" / "report.html").read_text()
    tags = Tags(page)
    assert not {"b", "script"} & set(tags.tags)  # no pipeline section here: no <b> of our own
    assert HOSTILE in tags.text and "<script>window.pwned=1</script>|`x" in tags.text

    card = model_card({"name": "m", "version": "1.0.0", "classes": ["<b>x<", "a|b", "new\nline", "`tick`"],
                       "candidate": HOSTILE, "metrics": {"accuracy": 98.05555555555556},
                       "lineage": {"parent": None}, "input": {"channels": 3, "resize": {"size": [32, 32]}}},
                      None, None)
    shown = _rendered(card)
    assert "b" not in shown.tags and "h1" in shown.tags and shown.tags.count("h2") == 7
    text = "".join(shown.text)
    assert "classes (<b>x<, a|b, new\\nline, `tick`)" in text and "Candidate <b>x<|y\\nz:" in text
    assert "98.06 %" in card and "98.0555" not in card and "parent release -" in card


def test_markup_helpers():
    from edgeopt import markup as mk

    assert mk.md_cell("a|b") == "a\\|b" and mk.md_cell(None) == "-" and mk.md_cell("") == "-"
    assert mk.md_text("# title", line_start=True) == "\\# title" and mk.md_text("1. x", line_start=True) == "1\\. x"
    assert mk.md_text("# title") == "# title" and mk.md_text("-") == "-"  # mid-line: no noise
    assert mk.md_text("[a](javascript:x)") == "\\[a\\](javascript:x)" and mk.md_text("*b*") == "\\*b\\*"
    assert mk.md_text("finetuned_ov_fp16 (+0.20 pt)") == "finetuned_ov_fp16 (+0.20 pt)"  # readable raw
    assert mk.md_code("x`y") == "``x`y``" and mk.md_code("a|b", in_table=True) == "`a\\|b`"
    assert mk.html_text("<b>'\"&") == "&lt;b&gt;&#x27;&quot;&amp;"
    assert mk.one_line("a\nb\tc\x07") == "a\\nb c\\x07"
    assert (mk.pct(98.05555555555556), mk.pct(None), mk.pt(0.2), mk.ms(0.0381), mk.size(36000)) == \
        ("98.06 %", "-", "+0.20 pt", "0.038 ms", "36.0 KB")
    assert [mk.human(v) for v in (None, 72666, 15.0, 0.0005, 98.05555555555556, True, [1, 2.5])] == \
        ["-", "72,666", "15", "0.0005", "98.06", "true", "[1, 2.5]"]


# --- the page in a real browser ------------------------------------------------------------------------------

def _history(n: int, top: float) -> list[dict]:
    return [{"epoch": e, "train_loss": 1.8 * math.exp(-e / 3) + 0.05, "val_loss": 1.7 * math.exp(-e / 3) + 0.09,
             "train_accuracy": 40 + (top - 40) * (1 - math.exp(-e / 2)),
             "val_accuracy": 40 + (top - 41.5) * (1 - math.exp(-e / 2))} for e in range(1, n + 1)]


def _with_training_records(root: Path, overrides: list[str] | None = None) -> None:
    """What train / finetune / distill (DVCLive) / sensitivity leave for the report, written directly, with the
    params records (`ran_with`) the stages write."""
    from stages.sensitivity import _plot
    from tests.release_helpers import write_stage_records

    write_json(root / "metrics" / "train.json", {"test_accuracy": 97.22222222222223, "best_epoch": 9,
                                                 "history": _history(10, 99)})
    write_json(root / "metrics" / "finetune.json", {"test_accuracy": 96.4, "best_epoch": 6, "history": _history(6, 98)})
    write_json(root / "metrics" / "distill.json", {"test_accuracy": 95.0, "student": {"best_epoch": 8}})
    live = root / "dvclive" / "distill" / "plots" / "metrics"
    for split in ("train", "val"):
        (live / split).mkdir(parents=True)
        for metric in ("accuracy", "loss"):
            rows = _history(8, 97)
            (live / split / f"{metric}.tsv").write_text(
                f"step\t{metric}\n" + "".join(f"{i}\t{r[f'{split}_{metric}']}\n" for i, r in enumerate(rows)))
    ranking = [{"rank": i, "layer": n, "drop": d, "output_nmse": e} for i, (n, d, e) in
               enumerate([("features.0", 0.56, 1.2e-3), ("features.3", 0.28, 4.6e-4), ("classifier.1", 0.0, 3e-6)], 1)]
    _plot(root / "reports" / "sensitivity.png", ranking, "clustered: per-layer INT8 sensitivity", keep=1)
    write_json(root / "reports" / "sensitivity.json", {"enabled": True, "samples": 180, "ranking": ranking})
    write_stage_records(root, overrides)


def test_report_curves_from_history_and_dvclive(release_project):
    root = release_project
    (root / "reports").mkdir(exist_ok=True)
    _with_training_records(root)
    (m,) = run_stages(root, "report")
    assert m["curves"] == ["train: baseline", "finetune: pruned model", "distill: student with KD"]
    with Image.open(root / "reports" / "curves.png") as im:
        assert im.size[0] == 1000 and im.size[1] > 3 * 200  # three rows of (accuracy, loss)
    md = (root / "reports" / "report.md").read_text()
    assert "![training curves](curves.png)" in md and "![per-layer INT8 sensitivity](sensitivity.png)" in md
    assert "most sensitive: features.0 (+0.56 pt), features.3 (+0.28 pt)" in md


def test_report_renders_in_chromium(release_project):
    """The HTML report in headless Chromium: it renders, every image decodes, nothing is wider than the window
    (at 1280 and at 800 px), injected text stays text. The screenshot is kept as reports/report.png."""
    from tests.browser import PAGE_CHECKS, Browser, require_chromium

    require_chromium()
    root = release_project
    (root / "reports").mkdir(exist_ok=True)
    hostile = ["data.root=<script>window.pwned=1</script>"]
    _with_training_records(root, hostile)
    run_stages(root, "gate", "promote", "report", overrides=hostile)
    page = root / "reports" / "report.html"
    for width in (1280, 800):
        with Browser(width=width, height=900) as b:
            b.open(page)
            checks = b.evaluate(PAGE_CHECKS)
            assert b.evaluate("window.pwned === undefined")
            if width == 1280:
                shot = b.screenshot(root / "reports" / "report.png", full_page=True)
        assert checks["title"] == "edgeopt run: 4 candidates on cpu-x86-avx512"
        assert checks["headings"][1:] == ["Run", "Candidates", "Pareto charts", "Training curves",
                                          "Quantization sensitivity", "Pipeline",
                                          "Params that differ from the defaults", "Model card"], checks["headings"]
        assert len(checks["images"]) == 4 and all(i["loaded"] and i["width"] >= 500 for i in checks["images"]), checks
        assert all(0 < i["shown"] <= width for i in checks["images"]), checks["images"]
        assert checks["scrollWidth"] <= checks["viewport"] and checks["wide"] == [], checks
    with Image.open(shot) as im:
        assert im.size[0] == 1280 and im.size[1] > 2000
        colours = im.convert("RGB").resize((64, 256)).getcolors(64 * 256)
        assert len(colours) > 50  # not a blank page
    kept = REPO / "reports" / "report.png"
    kept.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, kept)
    print(f"\nscreenshot: {kept}")
