"""Issue 13, class 3: measurements no real run can produce. A negative, zero, infinite or NaN latency, size or
accuracy, percentiles out of order, a drop that contradicts the accuracies, or a value of the wrong type in a stage
record fail that candidate at the gate with the reason (never ranked, never released); gate.json stays strict JSON.
A record of the wrong shape stops the gate (exit 4) with one line. Bench budgets and run counts no run can finish
with are refused when params are validated and as `edgeopt bench` flags (exit 2), never hang or raise IndexError."""
from __future__ import annotations

import json
import math

import pytest
from tests.release_helpers import gate_json, release_project, release_template, run_cli  # noqa: F401

from edgeopt.errors import GateNonePassError, StaleInputsError
from edgeopt.io import read_json, sha256_file, write_json
from edgeopt.params import ParamsError, load_params
from edgeopt.paths import Paths
from edgeopt.runtime import BenchSettingsError, time_calls

FP16 = "finetuned_ov_fp16"  # the gate's pick with honest numbers (p90 0.30 ms)


def gate(root, *overrides):
    from stages.gate import run

    return run(load_params(root / "params.yaml", list(overrides)), Paths(root))


def strict_json(path):
    """json.loads that refuses NaN/Infinity, as every non-Python JSON reader does."""
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(path.read_text(), parse_constant=refuse)


def edit_measurement(root, record: str, name: str, raw: bool = False, **fields) -> None:
    path = root / "metrics" / f"{record}.json"
    doc = read_json(path)
    doc["candidates"][name].update(fields)
    if raw:  # what a hand edit or another tool writes: bare NaN / Infinity
        path.write_text(json.dumps(doc))
    else:
        write_json(path, doc)


BENCH_CASES = {
    "negative_p90": ({"p90_ms": -0.5}, "impossible measurement: latency p90_ms = -0.5 (a latency is a finite number "
                                       "> 0 ms)"),
    "zero_p90": ({"p50_ms": 0.0, "p90_ms": 0.0, "min_ms": 0.0}, "latency p90_ms = 0.0"),
    "nan_p90": ({"p90_ms": math.nan}, "latency p90_ms = nan"),
    "infinite_p90": ({"p90_ms": math.inf, "p99_ms": math.inf}, "latency p90_ms = inf"),
    "string_p90": ({"p90_ms": "0.1"}, "latency p90_ms = '0.1'"),
    "bool_p90": ({"p90_ms": True}, "latency p90_ms = True"),
    "list_p90": ({"p90_ms": [0.1]}, "latency p90_ms = [0.1]"),
    "negative_p50_only": ({"p50_ms": -1.0}, "latency p50_ms = -1.0"),
    "p50_above_p90": ({"p50_ms": 0.9, "p90_ms": 0.3}, "latency percentiles out of order (min <= p50 <= p90 <= p99 "
                                                      "must hold: [0.9, 0.3, "),
    "zero_runs": ({"runs": 0}, "latency runs = 0"),
    "negative_throughput": ({"throughput_fps": -5}, "latency throughput_fps = -5"),
}
EVAL_CASES = {
    "negative_accuracy": ({"accuracy": -3.0}, "evaluate accuracy = -3.0 (an accuracy is a % in (0, 100])"),
    "accuracy_above_100": ({"accuracy": 150.0, "drop": -55.0}, "evaluate accuracy = 150.0"),
    "zero_accuracy": ({"accuracy": 0.0, "drop": 95.0}, "evaluate accuracy = 0.0"),
    "nan_accuracy": ({"accuracy": math.nan}, "evaluate accuracy = nan"),
    "nan_drop": ({"drop": math.nan}, "evaluate drop = nan"),
    "forged_drop": ({"drop": 0.0, "accuracy": 50.0}, "evaluate drop 0.0 != baseline_accuracy 95.0 - accuracy 50.0"),
    "string_accuracy": ({"accuracy": "94.8"}, "evaluate accuracy = '94.8'"),
}


@pytest.mark.parametrize("case", sorted(BENCH_CASES) + sorted(EVAL_CASES))
def test_impossible_measurement_fails_the_gate_with_the_reason(release_project, case):
    root = release_project
    fields, reason = BENCH_CASES[case] if case in BENCH_CASES else EVAL_CASES[case]
    edit_measurement(root, "bench" if case in BENCH_CASES else "evaluate", FP16, raw=True, **fields)
    gate(root)  # others still pass
    report = gate_json(root)
    row = next(r for r in report["rows"] if r["name"] == FP16)
    assert row["verdict"] == "fail" and any(reason in r for r in row["reasons"]), row["reasons"]
    assert FP16 not in report["passed"] and report["selected"] == "finetuned_ort_int8_dynamic"
    strict_json(root / "reports" / "gate.json")  # no bare NaN/Infinity
    strict_json(root / "metrics" / "gate.json")


def test_all_candidates_impossible_means_none_passes_exit_3(release_project):
    root = release_project
    doc = read_json(root / "metrics" / "bench.json")
    for entry in doc["candidates"].values():
        entry["p90_ms"] = -1.0
    (root / "metrics" / "bench.json").write_text(json.dumps(doc))
    with pytest.raises(GateNonePassError, match="impossible measurement: latency p90_ms = -1.0"):
        gate(root)
    res = run_cli(root, "gate")
    assert res.returncode == 3 and "Traceback" not in res.stderr
    assert gate_json(root)["selected"] is None


def test_empty_model_files_are_an_impossible_size(release_project):
    root = release_project
    exported = root / "models" / "exported"
    (exported / "finetuned_ort_int8_dynamic" / "model.onnx").write_bytes(b"")
    doc = read_json(exported / "candidates.json")
    c = next(c for c in doc["candidates"] if c["name"] == "finetuned_ort_int8_dynamic")
    c["sha256"] = {f: sha256_file(exported / f) for f in c["files"]}
    write_json(exported / "candidates.json", doc)
    from tests.release_helpers import write_measurements

    write_measurements(root)
    gate(root, "gate.rank_by=size")  # an empty file would otherwise be the smallest and win
    row = next(r for r in gate_json(root)["rows"] if r["name"] == "finetuned_ort_int8_dynamic")
    assert row["verdict"] == "fail" and row["reasons"] == ["impossible measurement: size 0 B (the model files are "
                                                           "empty)"]
    assert gate_json(root)["selected"] == FP16


@pytest.mark.parametrize("case", ["evaluate_candidates_a_list", "bench_entry_a_string", "candidates_a_dict",
                                  "duplicate_candidate", "files_a_string", "baselines_a_list"])
def test_records_of_the_wrong_shape_stop_the_gate_with_one_line(release_project, case):
    root = release_project
    ev, bench = root / "metrics" / "evaluate.json", root / "metrics" / "bench.json"
    cands = root / "models" / "exported" / "candidates.json"
    if case == "evaluate_candidates_a_list":
        doc = read_json(ev)
        doc["candidates"] = list(doc["candidates"].values())
        write_json(ev, doc)
        message = "metrics/evaluate.json: 'candidates' must be an object of candidate name -> measurement object"
    elif case == "bench_entry_a_string":
        doc = read_json(bench)
        doc["candidates"][FP16] = "0.3 ms"
        write_json(bench, doc)
        message = "metrics/bench.json: 'candidates' must be an object"
    else:
        doc = read_json(cands)
        if case == "candidates_a_dict":
            doc["candidates"] = {c["name"]: c for c in doc["candidates"]}
            message = "'candidates' must be a list of objects with a 'name'"
        elif case == "duplicate_candidate":
            doc["candidates"].append(dict(doc["candidates"][0]))
            message = "candidate name(s) ['baseline_fp32_ov'] appear twice (ambiguous)"
        elif case == "files_a_string":
            doc["candidates"][2]["files"] = "finetuned_ov_fp16/model.xml"
            message = "candidate 'finetuned_ov_fp16': 'files' must be a list of file names"
        else:
            doc["baselines"] = ["baseline_fp32_ov"]
            message = "'baselines' must be an object of runtime -> candidate name"
        write_json(cands, doc)
    with pytest.raises(StaleInputsError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        gate(root)
    res = run_cli(root, "gate")
    assert res.returncode == 4 and len(res.stderr.splitlines()) == 1 and "Traceback" not in res.stderr


# --- bench settings ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override, key", [("bench.runs=0", "runs"), ("bench.runs=1000000000", "runs"),
                                           ("bench.warmup=1000000000", "warmup"), ("bench.warmup=-1", "warmup"),
                                           ("bench.time_budget_s=.inf", "time_budget_s"),
                                           ("bench.time_budget_s=.nan", "time_budget_s"),
                                           ("bench.time_budget_s=1e999", "time_budget_s"),
                                           ("bench.time_budget_s=86400", "time_budget_s"),
                                           ("bench.threads=0", "threads"), ("bench.streams=1000", "streams")])
def test_absurd_bench_params_refused_at_validation(tmp_path, override, key):
    from tests.conftest import REPO

    with pytest.raises(ParamsError, match=rf"invalid parameter bench\.{key}: "):
        load_params(REPO / "params.yaml", [override])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("flags, shown", [(["--runs", "0"], "runs=0 (allowed: integer 1..100000)"),
                                          (["--runs", "-5"], "runs=-5"),
                                          (["--time-budget", "inf"], "time_budget_s=inf (allowed: 0..3600)"),
                                          (["--time-budget", "nan"], "time_budget_s=nan"),
                                          (["--warmup", "99999999"], "warmup=99999999"),
                                          (["--threads", "0"], "threads=0"), (["--streams", "-1"], "streams=-1")])
def test_absurd_bench_flags_refused_exit_2_without_hang(release_project, flags, shown):
    model = "models/exported/finetuned_ort_int8_dynamic/model.onnx"
    res = run_cli(release_project, "bench", "--model", model, *flags, timeout=100)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"edgeopt bench: error: bench settings refused: {shown}"), lines
    assert lines[0].endswith("set them with --threads/--streams/--warmup/--runs/--time-budget, or bench.* in "
                             "params.yaml")


def test_time_calls_refuses_settings_that_cannot_finish():
    calls = []
    for kw in ({"warmup": 0, "runs": 0}, {"warmup": 0, "runs": 1, "time_budget_s": math.inf},
               {"warmup": -1, "runs": 1}, {"warmup": 0, "runs": 2.5}):
        with pytest.raises(BenchSettingsError, match="bench settings refused"):
            time_calls(lambda: calls.append(1), **kw)
    assert calls == []  # refused before anything ran
    assert time_calls(lambda: calls.append(1), warmup=1, runs=3)["runs"] == 3 and len(calls) == 4
