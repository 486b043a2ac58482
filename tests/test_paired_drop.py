"""The accuracy drop with its paired spread: evaluate counts the images each candidate lost and gained against
its baseline (same images, same runtime), the gate shows drop +- SE and, with gate.accuracy_confidence, judges the
drop's upper bound instead of the measured drop. Recorded counts that cannot describe a real evaluation fail that
candidate; a confidence rule without recorded counts is a stale input (exit 4)."""
from __future__ import annotations

import math

import pytest
from tests.release_helpers import gate_json, release_project, release_template, run_cli  # noqa: F401

from edgeopt.accuracy import paired_drop, upper_bound
from edgeopt.errors import StaleInputsError
from edgeopt.io import read_json, write_json
from edgeopt.params import ParamsError, load_params
from edgeopt.paths import Paths

FP16, INT8 = "finetuned_ov_fp16", "finetuned_ort_int8_dynamic"


def test_paired_drop_counts_only_the_images_that_changed_answer():
    d = paired_drop(30, 24, 1017)
    assert d["drop"] == pytest.approx(100 * 6 / 1017, abs=1e-4)
    # Agresti-Min: half an image in each cell, n + 2
    p, q = 30.5 / 1019, 24.5 / 1019
    assert d["drop_se"] == pytest.approx(100 * math.sqrt((p + q - (p - q) ** 2) / 1019), abs=1e-4)
    # more changed answers, same net drop: wider; no changed answer still claims no certainty
    assert paired_drop(60, 54, 1017)["drop_se"] > d["drop_se"] > paired_drop(6, 0, 1017)["drop_se"] > 0
    assert paired_drop(0, 0, 1017)["drop_se"] > 0
    assert upper_bound(0.59, 0.7276, 0.95) == pytest.approx(0.59 + 1.6449 * 0.7276, abs=1e-3)
    for bad in ((-1, 0, 10), (6, 5, 10), (0, 0, 0)):
        with pytest.raises(ValueError, match="do not fit"):
            paired_drop(*bad)


def test_evaluate_records_lost_and_gained_images_that_give_the_drop(release_project):
    from stages.evaluate import run

    root = release_project
    out = run(load_params(root / "params.yaml"), Paths(root))
    n = out["images"]
    for name, r in out["candidates"].items():
        assert r["status"] == "ok", (name, r["reason"])
        assert r["drop"] == pytest.approx(100 * (r["lost"] - r["gained"]) / n, abs=1e-3)
        if r["baseline"] == name:
            assert (r["lost"], r["gained"], r["drop_se"]) == (0, 0, 0.0)
        else:
            assert r["drop_se"] == paired_drop(r["lost"], r["gained"], n)["drop_se"]


def test_lost_and_gained_pair_each_image_with_the_baselines_answer():
    import numpy as np

    from stages.evaluate import _add_drops

    base = np.array([1, 1, 1, 1, 0, 0, 1, 0], dtype=bool)
    cand = np.array([1, 0, 0, 1, 1, 0, 1, 0], dtype=bool)  # lost images 1 and 2, gained image 4
    results = {"b": {"runtime": "openvino", "accuracy": 62.5, "status": "ok"},
               "c": {"runtime": "openvino", "accuracy": 50.0, "status": "ok"}}
    _add_drops(results, {"openvino": "b"}, {"b": base, "c": cand})
    assert (results["c"]["lost"], results["c"]["gained"], results["c"]["drop"]) == (2, 1, 12.5)
    assert results["c"]["drop_se"] == paired_drop(2, 1, 8)["drop_se"]
    assert (results["b"]["lost"], results["b"]["gained"], results["b"]["drop_se"]) == (0, 0, 0.0)


def _paired(root, counts: dict[str, tuple[int, int]], drop_se: bool = True) -> None:
    """evaluate.json as evaluate writes it: each candidate's lost / gained images out of 360, the accuracies
    and drops they give and the paired SE (only the accuracies and drops when `drop_se` is False: an older
    evaluate)."""
    path = root / "metrics" / "evaluate.json"
    doc = read_json(path)
    n = doc["images"]
    for name, e in doc["candidates"].items():
        lost, gained = counts.get(name, (0, 0))
        own = e["baseline"] == name
        d = paired_drop(lost, gained, n)
        e.update(accuracy=e["baseline_accuracy"] - d["drop"], drop=d["drop"], lost=lost, gained=gained,
                 drop_se=0.0 if own else d["drop_se"])
        if not drop_se:
            for key in ("lost", "gained", "drop_se"):
                del e[key]
    write_json(path, doc)


def gate(root, *overrides):
    from stages.gate import run

    return run(load_params(root / "params.yaml", list(overrides)), Paths(root))


def test_confidence_rule_fails_a_drop_within_the_limit_only_by_chance(release_project):
    root = release_project
    _paired(root, {FP16: (5, 3), INT8: (2, 0)})  # both drop 2 images (0.56 pt); FP16 changed 8 answers, INT8 2
    gate(root, "gate.max_accuracy_drop=1.5")
    report = gate_json(root)
    assert report["selected"] == FP16 and {FP16, INT8} <= set(report["passed"])  # measured: both within 1.5
    row = next(r for r in report["rows"] if r["name"] == FP16)
    assert row["drop_se"] == paired_drop(5, 3, 360)["drop_se"] and row["metrics"]["lost"] == 5

    gate(root, "gate.max_accuracy_drop=1.5", "gate.accuracy_confidence=0.95")
    report = gate_json(root)
    rows = {r["name"]: r for r in report["rows"]}
    bound = upper_bound(rows[FP16]["drop"], rows[FP16]["drop_se"], 0.95)
    assert 1.5 < bound and rows[FP16]["verdict"] == "fail"
    assert rows[FP16]["reasons"] == [f"accuracy drop 0.56 pt, its 95 % upper bound {bound:.2f} pt > max 1.50 pt"]
    g = rows[INT8]["gates"]["accuracy_drop"]
    assert g["passed"] and g["measured"] == rows[INT8]["drop"] and g["value"] < 1.5 and g["confidence"] == 0.95
    assert report["selected"] == INT8  # the faster FP16 is no longer proven within the limit
    res = run_cli(root, "gate", "--set", "gate.max_accuracy_drop=1.5", "--set", "gate.accuracy_confidence=0.95")
    assert res.returncode == 0 and "+-" in res.stdout and "<95% bound" in res.stdout, res.stdout + res.stderr


def test_confidence_rule_without_recorded_spread_is_a_stale_input(release_project):
    root = release_project
    _paired(root, {FP16: (5, 3)}, drop_se=False)
    gate(root)  # the measured drop needs no spread
    with pytest.raises(StaleInputsError, match="no drop_se for .*; rerun `edgeopt evaluate`"):
        gate(root, "gate.accuracy_confidence=0.9")


@pytest.mark.parametrize("fields, reason", [
    ({"lost": -1}, "evaluate lost -1 / gained 3 of 360 images"),
    ({"lost": 400}, "evaluate lost 400 / gained 3 of 360 images"),
    ({"gained": 2.5}, "gained 2.5 of 360"),
    ({"drop_se": "0.3"}, "drop_se '0.3'"),
    ({"drop_se": 0.01}, "give drop 0.5556 +- "),  # a spread smaller than the counts give
    ({"lost": 9}, "give drop 1.6667 +- "),  # counts that do not give the recorded drop
    ({"lost": 10**400}, "evaluate lost 1000"),  # beyond any float: no OverflowError traceback
    ({"drop_se": 10**400}, "drop_se 1000"),
    ({"gained": True}, "gained True of 360"),
    ({"drop_se": float("nan")}, "drop_se nan"),
    ({"lost": 4, "gained": 342}, "not a whole number of right answers that 4 lost / 342 gained"),  # 18 wrong only
    ({"drop": None, "lost": 9, "gained": 3}, "give drop 1.6667 +- "),  # judged on baseline - accuracy: checked
    ({"baseline": FP16, "lost": 0, "gained": 0, "drop": 0.0, "drop_se": 0.0,  # a claim to be its own baseline
      "accuracy": 95.0}, "give drop 0.0 +- 0.2762, not the recorded 0.0 +- 0.0"),
])
def test_counts_no_evaluation_can_give_fail_the_candidate(release_project, fields, reason):
    root = release_project
    _paired(root, {FP16: (5, 3)})
    doc = read_json(root / "metrics" / "evaluate.json")
    doc["candidates"][FP16].update(fields)
    (root / "metrics" / "evaluate.json").write_text(__import__("json").dumps(doc))  # as a hand edit writes it
    gate(root)
    row = next(r for r in gate_json(root)["rows"] if r["name"] == FP16)
    assert row["verdict"] == "fail" and any(reason in r for r in row["reasons"]), row["reasons"]


@pytest.mark.parametrize("value", ["0.2", "1.0", "-0.1", ".nan"])
def test_a_confidence_that_bounds_nothing_is_refused(value):
    from tests.conftest import REPO

    with pytest.raises(ParamsError, match=r"gate\.accuracy_confidence"):
        load_params(REPO / "params.yaml", [f"gate.accuracy_confidence={value}"])


@pytest.mark.parametrize("images", ["360", 0, -5, 10**12, True, 3.5, None])
def test_an_evaluation_of_no_real_image_count_stops_the_gate(release_project, images):
    root = release_project
    _paired(root, {FP16: (5, 3)})
    doc = read_json(root / "metrics" / "evaluate.json")
    if images is None:
        del doc["images"]
    else:
        doc["images"] = images
    write_json(root / "metrics" / "evaluate.json", doc)
    with pytest.raises(StaleInputsError, match="'images' must be the whole number of images evaluated"):
        gate(root)
    res = run_cli(root, "gate")
    assert res.returncode == 4 and len(res.stderr.splitlines()) == 1, res.stderr


def test_the_confidence_rule_needs_the_prepared_splits_image_count(release_project):
    """A record claiming more images (a smaller SE) than the split has would pass the bound by fiat."""
    root = release_project
    meta = read_json(root / "data" / "prepared" / "meta.json")
    n = sum(meta["counts"]["test"].values())
    _paired(root, {FP16: (5, 3)})
    doc = read_json(root / "metrics" / "evaluate.json")
    assert doc["images"] == n  # the fixture evaluates the whole test split
    doc["images"] = 10 * n
    for e in doc["candidates"].values():  # consistent counts for the claimed images
        d = paired_drop(e["lost"], e["gained"], 10 * n)
        e.update(accuracy=e["baseline_accuracy"] - d["drop"], drop=d["drop"],
                 drop_se=0.0 if e["baseline"] == e.get("name", e["baseline"]) and e["lost"] == 0 else d["drop_se"])
    write_json(root / "metrics" / "evaluate.json", doc)
    with pytest.raises(StaleInputsError, match=f"evaluated {10 * n} images, but the prepared 'test' split has {n}"):
        gate(root, "gate.accuracy_confidence=0.95")


def test_the_card_and_the_tables_say_what_was_judged(release_project):
    from edgeopt.results import COLUMNS, candidate_rows
    from stages.report import _gate_text

    root = release_project
    _paired(root, {FP16: (5, 3)})
    gate(root, "gate.max_accuracy_drop=2", "gate.accuracy_confidence=0.95")
    report = gate_json(root)
    row = next(r for r in report["rows"] if r["name"] == FP16)
    text = _gate_text("accuracy_drop", row["gates"]["accuracy_drop"])
    assert text.startswith("accuracy drop's 95 % upper bound 1.92") and text.endswith("(pass)"), text
    assert ("drop_se", "+- SE pt", "{:.2f}") in COLUMNS
    rows = candidate_rows(read_json(root / "metrics" / "evaluate.json"), read_json(root / "metrics" / "bench.json"),
                          report)
    assert next(r for r in rows if r["name"] == FP16)["drop_se"] == row["drop_se"]


def test_the_run_summary_states_the_picks_drop_with_its_spread(release_project):
    from edgeopt.summary import summary

    root = release_project
    _paired(root, {FP16: (5, 3)})
    gate(root)
    assert gate_json(root)["selected"] == FP16
    assert "(drop +0.56 +- 0.83 pt vs baseline_fp32_ov, 5 images lost, 3 gained)" in summary(root)
