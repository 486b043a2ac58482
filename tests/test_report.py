"""Report stage: candidate table numbers, Pareto fronts, plots, HTML and the model card."""
from __future__ import annotations

import pytest
from PIL import Image

from edgeopt.errors import GateNonePassError
from edgeopt.io import read_json
from edgeopt.params import load_params
from edgeopt.paths import Paths
from stages.report import candidate_rows, markdown_table, pareto_front
from tests.release_helpers import release_project, release_template  # noqa: F401


def run_stages(root, *names, overrides=()):
    import importlib

    params = load_params(root / "params.yaml", list(overrides))
    return [importlib.import_module(f"stages.{n}").run(params, Paths(root)) for n in names]


def test_pareto_front_rule():
    rows = [{"name": "a", "x": 1.0, "accuracy": 90.0}, {"name": "b", "x": 2.0, "accuracy": 95.0},
            {"name": "c", "x": 2.0, "accuracy": 94.0},  # dominated by b (same x, less accurate)
            {"name": "d", "x": 3.0, "accuracy": 95.0},  # dominated by b (slower, as accurate)
            {"name": "e", "x": 0.5, "accuracy": None},  # no measurement: not plotted, not on the front
            {"name": "f", "x": 4.0, "accuracy": 96.0}]
    assert pareto_front(rows, "x") == ["a", "b", "f"]


def test_report_rows_files_and_model_card(release_project):
    root = release_project
    _, promoted, m = run_stages(root, "gate", "promote", "report")
    rows = {r["name"]: r for r in candidate_rows(read_json(root / "metrics" / "evaluate.json"),
                                                 read_json(root / "metrics" / "bench.json"),
                                                 read_json(root / "reports" / "gate.json"))}
    fp16 = rows["finetuned_ov_fp16"]
    assert fp16["p50_ms"] == pytest.approx(0.24) and fp16["drop"] == pytest.approx(0.2)
    assert fp16["speedup_pytorch"] == pytest.approx(1.0 / 0.24, abs=1e-3)     # PyTorch p50 1.0 ms
    assert fp16["speedup_baseline"] == pytest.approx(0.32 / 0.24, abs=1e-3)   # baseline_fp32_ov p50 0.32 ms
    assert fp16["verdict"] == "pass (selected)"
    assert rows["baseline_fp32_ort"]["speedup_baseline"] == pytest.approx(1.0)

    assert m["candidates"] == 4 and m["selected"] == "finetuned_ov_fp16" and m["release"] == promoted["release"]
    assert m["pareto_latency"] == ["finetuned_ov_fp16", "baseline_fp32_ov"]
    assert m["pareto_size"][:2] == ["finetuned_ort_int8_dynamic", "finetuned_ov_fp16"] and len(m["pareto_size"]) == 3
    assert read_json(root / "metrics" / "report.json")["pareto_latency"] == m["pareto_latency"]

    md = (root / "reports" / "report.md").read_text()
    table = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert len(table) == 1 + 4  # header + one row per candidate
    line = next(ln for ln in table if ln.startswith("| finetuned_ov_fp16 "))
    for cell in ("94.80", "+0.20", "0.240", "0.300", "4.17x", "1.33x", "pass (selected)", "1,000", "5,000"):
        assert f" {cell} |" in line, (cell, line)
    page = (root / "reports" / "report.html").read_text()
    assert page.count("<tr") == 5 and "<tr class='selected'><td>finetuned_ov_fp16</td>" in page
    for png in ("pareto_latency.png", "pareto_size.png"):
        with Image.open(root / "reports" / png) as im:
            assert im.format == "PNG" and im.size[0] > 400
    card = (root / "reports" / "model_card.md").read_text()
    assert "# Model card: digits-classifier 0.0.1" in card
    assert "Test accuracy 94.8 %" in card and "p90 0.3 ms" in card and "test-cpu" in card
    meta = read_json(root / "data" / "prepared" / "meta.json")
    assert f"mean {meta['mean']}" in card and "Colour L" not in card and "colour L" in card
    assert "## Limitations" in card and "## Intended use" in card


def test_report_after_failed_gate(release_project):
    root = release_project
    with pytest.raises(GateNonePassError):
        run_stages(root, "gate", overrides=["gate.max_accuracy_drop=0", "gate.max_latency_ms=0.31"])
    (m,) = run_stages(root, "report")
    assert m["selected"] is None and m["release"] is None
    md = (root / "reports" / "report.md").read_text()
    assert "## Rejected / failed" in md
    assert "- `finetuned_ov_fp16`: accuracy drop 0.20 pt > max 0.00 pt" in md
    assert "- `baseline_fp32_ort`: p90 latency 0.500 ms > max 0.310 ms" in md
    assert "no candidate passed the gate" in (root / "reports" / "model_card.md").read_text()
    assert markdown_table([]).count("\n") == 1
