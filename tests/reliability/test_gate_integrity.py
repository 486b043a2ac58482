"""Issue 7, item 5: gate integrity. Promotion is refused without a passing gate result, with a stale one (files or
measurements changed after the gate), or with a hand-edited gate report: a digest mismatch, and also an edit whose
digest was recomputed (the digest is not keyed, so promote re-derives the report from its inputs). Nothing is
written to the registry; rerunning the gate recovers."""
from __future__ import annotations

import json
import stat

import pytest
from tests.release_helpers import release_project, release_template, run_cli, write_measurements  # noqa: F401

from edgeopt.errors import GateNonePassError, RegistryError, StaleInputsError
from edgeopt.io import read_json, sha256_json, write_json
from edgeopt.params import load_params
from edgeopt.paths import Paths

INT8 = "finetuned_ort_int8_dynamic"


def gate(root, *overrides, latency_report=None):
    from stages.gate import run

    return run(load_params(root / "params.yaml", list(overrides)), Paths(root), latency_report=latency_report)


def promote(root, **kw):
    from stages.promote import run

    return run(load_params(root / "params.yaml"), Paths(root), **kw)


def _edit_report(root, fn, reseal: bool) -> None:
    path = root / "reports" / "gate.json"
    doc = read_json(path)
    fn(doc)
    if reseal:  # what a forger does: recompute the (unkeyed) digest over the edited content
        doc.pop("digest")
        doc["digest"] = sha256_json(doc)
    write_json(path, doc)


def _pass_failed_int8(doc) -> None:
    """Turn the INT8 candidate's failed accuracy gate into a pass and make it the pick."""
    row = next(r for r in doc["rows"] if r["name"] == INT8)
    row.update(verdict="pass", reasons=[])
    row["gates"]["accuracy_drop"].update(passed=True, threshold=10.0)
    doc["passed"].insert(0, INT8)
    doc["selected"] = INT8


def _flip(path, offset=300):
    path.chmod(path.stat().st_mode | stat.S_IWUSR)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _setup(root, tmp_path, case):
    """Leave the project in the faulty state; return (promote kwargs, exception type, exact message start)."""
    report = "reports/gate.json"
    if case == "no_gate_report":
        return {}, StaleInputsError, f"{root}/{report}: gate report missing; run `edgeopt gate` first"
    if case == "none_passes":
        with pytest.raises(GateNonePassError):
            gate(root, "gate.max_latency_ms=0.01")
        return {}, GateNonePassError, "the gate report has no passing candidate; nothing to promote"
    write_measurements(root, accuracy={INT8: 90.0})  # the INT8 candidate fails the accuracy gate (5 pt drop)
    gate(root)
    if case == "candidate_failed_gate":
        return {"candidate": INT8}, RegistryError, (f"candidate '{INT8}' did not pass the gate (accuracy drop 5.00 pt "
                                                    f"> max 1.00 pt); it cannot be promoted")
    if case == "candidate_unknown":
        return {"candidate": "nope"}, RegistryError, "candidate 'nope' is not in the gate report (candidates: "
    if case == "threshold_hand_edited":
        _edit_report(root, lambda d: d["thresholds"].update(max_accuracy_drop=10.0), reseal=False)
        return {}, StaleInputsError, f"{root}/{report}: digest does not match its content (edited by hand?)"
    if case == "verdict_forged_digest_recomputed":
        _edit_report(root, _pass_failed_int8, reseal=True)
        return {}, StaleInputsError, (f"{root}/{report}: does not match a re-evaluation of its own inputs (edited by "
                                      "hand and the digest recomputed?); rerun `edgeopt gate`")
    if case == "thresholds_forged_digest_recomputed":
        def loosen(doc):
            doc["thresholds"]["max_accuracy_drop"] = 10.0
            _pass_failed_int8(doc)
        _edit_report(root, loosen, reseal=True)
        return {}, StaleInputsError, f"{root}/{report}: does not match a re-evaluation of its own inputs"
    if case == "metrics_forged_digest_recomputed":
        _edit_report(root, lambda d: next(r for r in d["rows"] if r["name"] == "finetuned_ov_fp16")
                     ["metrics"].update(accuracy=99.9), reseal=True)
        return {}, StaleInputsError, f"{root}/{report}: does not match a re-evaluation of its own inputs"
    if case == "report_truncated":
        path = root / report
        path.write_text(path.read_text()[:500])
        return {}, StaleInputsError, f"{root}/{report}: gate report is not valid JSON"
    if case == "stale_status":
        (root / "metrics" / "bench.json").rename(tmp_path / "bench.json")
        with pytest.raises(StaleInputsError):
            gate(root)
        (tmp_path / "bench.json").rename(root / "metrics" / "bench.json")
        return {}, StaleInputsError, f"{root}/{report}: the gate found stale inputs (metrics/bench.json: latency " \
                                     "report missing"
    if case == "model_changed_after_gate":
        _flip(root / "models" / "exported" / "finetuned_ov_fp16" / "model.bin")
        return {}, StaleInputsError, (f"{root}/models/exported/finetuned_ov_fp16/model.bin: differs from what the gate "
                                      "measured (sha256); rerun `edgeopt gate`")
    if case == "bench_changed_after_gate":
        write_measurements(root, accuracy={INT8: 90.0}, latency={"finetuned_ov_fp16": 0.25})
        return {}, StaleInputsError, "metrics/bench.json: changed or missing since the gate ran; rerun `edgeopt gate`"
    if case == "evaluate_changed_after_gate":
        write_measurements(root, accuracy={INT8: 94.9})
        return {}, StaleInputsError, "metrics/evaluate.json: changed or missing since the gate ran"
    if case == "candidates_changed_after_gate":
        doc = read_json(root / "models" / "exported" / "candidates.json")
        doc["candidates"][0]["technique"] = "edited"
        write_json(root / "models" / "exported" / "candidates.json", doc)
        return {}, StaleInputsError, "models/exported/candidates.json: changed or missing since the gate ran"
    if case == "device_report_changed_after_gate":
        device = tmp_path / "device.json"
        write_measurements(root, path=device)
        gate(root, latency_report=device)
        write_measurements(root, latency={"finetuned_ov_fp16": 9.0}, path=device)
        return {}, StaleInputsError, f"{device}: changed or missing since the gate ran"
    raise AssertionError(case)


CASES = ["no_gate_report", "none_passes", "candidate_failed_gate", "candidate_unknown", "threshold_hand_edited",
         "verdict_forged_digest_recomputed", "thresholds_forged_digest_recomputed",
         "metrics_forged_digest_recomputed", "report_truncated", "stale_status", "model_changed_after_gate",
         "bench_changed_after_gate", "evaluate_changed_after_gate", "candidates_changed_after_gate",
         "device_report_changed_after_gate"]


@pytest.mark.parametrize("case", CASES)
def test_promotion_refused_without_a_valid_current_passing_gate(release_project, tmp_path, case):
    root = release_project
    kwargs, error, message = _setup(root, tmp_path, case)
    with pytest.raises(error) as err:
        promote(root, **kwargs)
    assert str(err.value).startswith(message), str(err.value)
    assert not (root / "registry").exists()
    record = json.loads((root / "metrics" / "promote.json").read_text())  # a failure record, not a release
    assert record["status"] == "failed" and "ran_with" not in record and "version" not in record
    if case in ("threshold_hand_edited", "verdict_forged_digest_recomputed", "report_truncated", "stale_status"):
        gate(root)  # recovered: a fresh gate report promotes the gate's real pick
        assert promote(root)["candidate"] == "finetuned_ov_fp16"


def test_forged_gate_report_through_the_cli_exits_4(release_project):
    root = release_project
    write_measurements(root, accuracy={INT8: 90.0})
    assert run_cli(root, "gate").returncode == 0
    _edit_report(root, _pass_failed_int8, reseal=True)
    res = run_cli(root, "promote")
    assert res.returncode == 4 and "Traceback" not in res.stderr
    assert res.stderr.splitlines() == ["edgeopt promote: error: reports/gate.json: does not match a re-evaluation of "
                                       "its own inputs (edited by hand and the digest recomputed?); rerun "
                                       "`edgeopt gate`"]
    assert not (root / "registry").exists()
    report = json.loads((root / "reports" / "gate.json").read_text())
    assert report["selected"] == INT8  # the forged pick, refused
