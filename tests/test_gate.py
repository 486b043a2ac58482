"""Gate stage: thresholds, selection rule, report integrity, exit codes 0/3/4 and stale-input detection."""
from __future__ import annotations

import json
import os

import pytest
from tests.release_helpers import (gate_json, release_project, release_template, run_cli,  # noqa: F401
                             write_measurements)

from edgeopt.errors import GateNonePassError, StaleInputsError
from edgeopt.io import read_json, sha256_json, write_json
from edgeopt.params import load_params
from edgeopt.paths import Paths


def gate(root, *overrides, latency_report=None):
    from stages.gate import run

    params = load_params(root / "params.yaml", list(overrides))
    return run(params, Paths(root), latency_report=latency_report)


def rows(root):
    return {r["name"]: r for r in gate_json(root)["rows"]}


def test_default_picks_fastest_non_baseline_and_reports_margins(release_project):
    m = gate(release_project)
    assert m["status"] == "pass" and m["selected"] == "finetuned_ov_fp16"
    assert m["passed"] == 4 and m["selected_latency_ms"] == pytest.approx(0.30)
    report = gate_json(release_project)
    body = {k: v for k, v in report.items() if k != "digest"}
    assert report["digest"] == sha256_json(body)
    # baselines rank last although baseline_fp32_ov (0.40 ms) is faster than nothing else
    assert report["passed"] == ["finetuned_ov_fp16", "finetuned_ort_int8_dynamic", "baseline_fp32_ov",
                                "baseline_fp32_ort"]
    r = rows(release_project)["finetuned_ort_int8_dynamic"]
    assert r["gates"]["accuracy_drop"] == {"value": pytest.approx(0.5), "threshold": 1.0,
                                           "margin": pytest.approx(0.5), "passed": True}
    assert r["gates"]["latency"]["margin"] == pytest.approx(5.0 - 0.35)
    files = release_project / "models" / "exported" / "finetuned_ort_int8_dynamic" / "model.onnx"
    assert r["size_bytes"] == files.stat().st_size
    assert set(report["inputs"]) == {"models/exported/candidates.json", "metrics/evaluate.json",
                                     "metrics/bench.json"}
    assert set(report["sha256"]["finetuned_ov_fp16"]) == {"finetuned_ov_fp16/model.xml", "finetuned_ov_fp16/model.bin"}
    assert read_json(release_project / "metrics" / "gate.json")["selected"] == "finetuned_ov_fp16"


def test_over_latency_budget_is_rejected_with_reason(release_project):
    write_measurements(release_project, latency={"finetuned_ov_fp16": 9.0})
    m = gate(release_project)
    r = rows(release_project)["finetuned_ov_fp16"]
    assert r["verdict"] == "fail"
    assert r["reasons"] == ["p90 latency 9.000 ms > max 5.000 ms"]
    assert r["gates"]["latency"]["margin"] == pytest.approx(-4.0)
    assert m["selected"] == "finetuned_ort_int8_dynamic"


def test_over_accuracy_drop_is_rejected_with_reason(release_project):
    write_measurements(release_project, accuracy={"finetuned_ort_int8_dynamic": 93.0})
    gate(release_project, "gate.rank_by=size")
    r = rows(release_project)["finetuned_ort_int8_dynamic"]
    assert r["verdict"] == "fail" and r["reasons"] == ["accuracy drop 2.00 pt > max 1.00 pt"]
    assert r["gates"]["accuracy_drop"]["margin"] == pytest.approx(-1.0)
    # the smallest passing candidate, now that the (smaller) int8 model failed
    assert gate_json(release_project)["selected"] == "finetuned_ov_fp16"


@pytest.mark.parametrize("rank_by,expected", [("size", "finetuned_ort_int8_dynamic"),
                                              ("accuracy", "finetuned_ov_fp16"),
                                              ("latency", "finetuned_ov_fp16")])
def test_rank_by(release_project, rank_by, expected):
    assert gate(release_project, f"gate.rank_by={rank_by}")["selected"] == expected


def test_accuracy_ties_broken_by_latency(release_project):
    write_measurements(release_project, accuracy={"finetuned_ort_int8_dynamic": 94.8},
                       latency={"finetuned_ort_int8_dynamic": 0.2})
    assert gate(release_project, "gate.rank_by=accuracy")["selected"] == "finetuned_ort_int8_dynamic"


def test_baseline_only_when_nothing_else_passes(release_project):
    write_measurements(release_project, accuracy={"finetuned_ov_fp16": 90.0, "finetuned_ort_int8_dynamic": 90.0})
    m = gate(release_project)
    assert m["selected"] == "baseline_fp32_ov" and m["passed"] == 2 and m["failed"] == 2


def test_failed_export_and_excluded_runtime_are_rejected(release_project):
    path = release_project / "models" / "exported" / "candidates.json"
    doc = read_json(path)
    doc["candidates"][2].update(status="failed", reason="parity: agreement 0.80 < 0.90")
    write_json(path, doc)
    write_measurements(release_project)
    gate(release_project, "target.runtime=onnxruntime", "quantize.modes=[ort_int8_static]",
         "distill.quantize_modes=[]")
    r = rows(release_project)
    assert r["finetuned_ov_fp16"]["verdict"] == "rejected"
    assert r["finetuned_ov_fp16"]["reasons"] == ["export: parity: agreement 0.80 < 0.90"]
    assert r["baseline_fp32_ov"]["reasons"] == ["runtime 'openvino' excluded by target.runtime='onnxruntime'"]
    assert gate_json(release_project)["selected"] == "finetuned_ort_int8_dynamic"


def test_device_latency_report_replaces_bench(release_project, tmp_path):
    device = tmp_path / "device.json"
    write_measurements(release_project, latency={"finetuned_ov_fp16": 7.5, "finetuned_ort_int8_dynamic": 2.0},
                       path=device)
    m = gate(release_project, latency_report=device)
    report = gate_json(release_project)
    assert m["selected"] == "finetuned_ort_int8_dynamic"
    assert report["latency_source"]["device_report"] is True
    assert report["latency_source"]["path"] == str(device.resolve())
    assert str(device.resolve()) in report["inputs"] and "metrics/bench.json" not in report["inputs"]
    assert rows(release_project)["finetuned_ov_fp16"]["reasons"] == ["p90 latency 7.500 ms > max 5.000 ms"]


def test_none_passes_writes_report_then_raises(release_project):
    with pytest.raises(GateNonePassError, match="no candidate passes"):
        gate(release_project, "gate.max_latency_ms=0.1")
    report = gate_json(release_project)
    assert report["status"] == "none_pass" and report["selected"] is None
    assert all(r["verdict"] == "fail" for r in report["rows"])
    assert read_json(release_project / "metrics" / "gate.json")["status"] == "none_pass"


def test_changed_model_byte_is_stale(release_project):
    f = release_project / "models" / "exported" / "finetuned_ov_fp16" / "model.bin"
    data = bytearray(f.read_bytes())
    data[100] ^= 1
    f.write_bytes(bytes(data))
    with pytest.raises(StaleInputsError, match="finetuned_ov_fp16"):
        gate(release_project)
    assert gate_json(release_project)["status"] == "stale"
    assert read_json(release_project / "metrics" / "gate.json")["status"] == "stale"


def test_metrics_without_hashes_older_than_model_is_stale(release_project):
    path = release_project / "metrics" / "evaluate.json"
    doc = read_json(path)
    for entry in doc["candidates"].values():
        entry.pop("sha256")
    write_json(path, doc)
    gate(release_project)  # no hashes but newer than the models: accepted
    # older than the exported files (their mtimes come from the session fixture, possibly long ago)
    oldest = min(f.stat().st_mtime for f in (release_project / "models" / "exported").rglob("*") if f.is_file())
    os.utime(path, (oldest - 100, oldest - 100))
    with pytest.raises(StaleInputsError, match="older than the files"):
        gate(release_project)


def test_bench_measured_other_candidate_set_is_stale(release_project):
    path = release_project / "metrics" / "bench.json"
    doc = read_json(path)
    del doc["candidates"]["finetuned_ov_fp16"]
    write_json(path, doc)
    with pytest.raises(StaleInputsError, match=r"different candidate set .*not measured: \['finetuned_ov_fp16'\]"):
        gate(release_project)


def test_no_candidate_at_all_is_an_input_problem_not_none_passes(release_project):
    """exit 4 (inputs), not 3 ("no candidate passes"): a CI reading 3 as "the model was not good enough"
    would be misled by an export that produced nothing."""
    for name in ("models/exported/candidates.json", "metrics/evaluate.json", "metrics/bench.json"):
        path = release_project / name
        doc = read_json(path)
        doc["candidates"] = [] if isinstance(doc["candidates"], list) else {}
        write_json(path, doc)
    with pytest.raises(StaleInputsError, match="lists no candidate, so there is nothing to gate"):
        gate(release_project)


def test_exit_codes_in_subprocess(release_project, tmp_path):
    ok = run_cli(release_project, "gate")
    assert ok.returncode == 0, ok.stderr
    assert "finetuned_ov_fp16" in ok.stdout and "*selected*" in ok.stdout
    assert json.loads(ok.stdout.strip().splitlines()[-1])["selected"] == "finetuned_ov_fp16"

    none = run_cli(release_project, "gate", "--set", "gate.max_size_bytes=1000")
    assert none.returncode == 3, none.stderr
    assert "no candidate passes" in none.stderr and "size" in none.stderr
    assert gate_json(release_project)["status"] == "none_pass"

    device = tmp_path / "device.json"
    write_measurements(release_project, path=device)
    doc = read_json(device)
    doc["candidates"]["baseline_fp32_ort"]["sha256"] = {"baseline_fp32_ort/model.onnx": "0" * 64}
    write_json(device, doc)
    stale = run_cli(release_project, "gate", "--latency-report", str(device))
    assert stale.returncode == 4, stale.stderr
    assert "baseline_fp32_ort was measured on other files" in stale.stderr
    assert len(stale.stderr.strip().splitlines()) == 1

    (release_project / "metrics" / "evaluate.json").unlink()
    missing = run_cli(release_project, "gate")
    assert missing.returncode == 4 and "metrics/evaluate.json: evaluation missing" in missing.stderr
    assert gate_json(release_project)["status"] == "stale"


# --- the pick is on the Pareto front (issue: a dominated candidate was picked) -------------------------------
def _row(name, acc, lat, size, baseline=False):
    return {"name": name, "accuracy": acc, "latency_ms": lat, "size_bytes": size, "baseline": baseline}


def test_equal_latency_goes_to_the_more_accurate_candidate():
    from edgeopt.gating import rank_rows

    # measured: student_fp32_ort 98.06 % and student_nokd_fp32_ort 99.44 % at the same p50 0.027 ms
    rows = [_row("student_fp32_ort", 98.06, 0.027, 76800), _row("student_nokd_fp32_ort", 99.44, 0.027, 76800)]
    assert [r["name"] for r in rank_rows(rows, "latency", 0.05)] == ["student_nokd_fp32_ort", "student_fp32_ort"]
    # within the noise (2 % faster) is still a tie: accuracy decides; beyond it (20 % faster) latency decides
    rows[0]["latency_ms"] = 0.0265
    assert rank_rows(rows, "latency", 0.05)[0]["name"] == "student_nokd_fp32_ort"
    rows[0]["latency_ms"] = 0.020
    assert rank_rows(rows, "latency", 0.05)[0]["name"] == "student_fp32_ort"


@pytest.mark.parametrize("rank_by", ["latency", "size", "accuracy"])
def test_the_pick_is_never_dominated(rank_by):
    import random

    from edgeopt.gating import dominates, rank_rows

    rng = random.Random(7)
    for trial in range(200):
        rows = [_row(f"c{i}", rng.choice([90.0, 91.0, 92.5, 93.0]), rng.choice([0.10, 0.102, 0.2, 0.3]),
                     rng.choice([1000, 2000, 4000])) for i in range(rng.randint(1, 7))]
        rows.append(_row("baseline", 99.0, 0.05, 500, baseline=True))  # best at everything, but last resort
        ranked = rank_rows(rows, rank_by, 0.05)
        pick = ranked[0]
        assert not pick["baseline"]
        assert not any(dominates(o, pick, 0.05) for o in rows if not o["baseline"]), (trial, rows, pick)
        assert sorted(r["name"] for r in ranked) == sorted(r["name"] for r in rows)  # nothing lost


def test_gate_report_marks_the_front_and_picks_on_it(release_project):
    # the int8 model: as fast as fp16 within the noise, more accurate and smaller: fp16 is dominated
    write_measurements(release_project, accuracy={"finetuned_ort_int8_dynamic": 94.9},
                       latency={"finetuned_ort_int8_dynamic": 0.305})
    assert gate(release_project)["selected"] == "finetuned_ort_int8_dynamic"
    r = rows(release_project)
    assert r["finetuned_ort_int8_dynamic"]["pareto_front"] and not r["finetuned_ov_fp16"]["pareto_front"]
