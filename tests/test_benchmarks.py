"""The benchmark runner (benchmarks/): a tiny end-to-end run, plus its pure parts on synthetic inputs.

Performance goals live in the benchmark's own output (benchmark.json / benchmark.md), never here: these tests
check that the runner works and that its JSON holds every row with its ratios, not how fast anything is.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from benchmarks import compression, datasource, markdown, search_pick
from benchmarks.__main__ import main, split_overrides
from edgeopt.pipeline import stage_names

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.extended  # rows, ratios and targets: test_ratios_and_targets_from_synthetic_rows, in CI
def test_smoke_run_writes_every_row_ratio_target_and_stage_cost(tmp_path):
    out = tmp_path / "bench"
    searched = _search_result(tmp_path, ["prune.ratio=0.3", "distill.alpha=0.5"], pick="student_ov_int8")
    code = main(["--smoke", "--out", str(out), "--search-result", str(searched), "--set", "distill.alpha=0.6"])
    doc = json.loads((out / "benchmark.json").read_text())
    assert code == 0, doc["errors"]
    assert doc["errors"] == []
    # the search's knobs reach the chain's params; an explicit --set still wins
    chain_params = yaml.safe_load((out / "work" / "realistic" / "params.yaml").read_text())
    assert chain_params["prune"]["ratio"] == 0.3 and chain_params["distill"]["alpha"] == 0.6
    assert doc["settings"]["search"]["trial"] == 3 and doc["settings"]["search"]["pick"] == "student_ov_int8"
    assert doc["budget"]["goal_s"] == 180.0 and doc["budget"]["parts_s"]["chain realistic"] > 0
    assert doc["settings"]["cut"] == []  # the smoke mode's own seeds, a search result given

    env = doc["environment"]
    assert env["hardware"]["cpu"] and env["hardware"]["cores"] >= 1
    assert env["libraries"]["torch"] and env["libraries"]["openvino"] and env["libraries"]["onnxruntime"]
    assert "commit" in env["git"] and "dirty" in env["git"]
    assert doc["settings"]["model"]["width"] < 1 and doc["settings"]["model"]["width_note"]

    comp = doc["compression"]
    names = [r["name"] for r in comp["rows"]]
    cands = json.loads((out / "work" / "realistic" / "models" / "exported" / "candidates.json").read_text())
    expected = {"baseline_fp32_pytorch", "baseline_fp32_ort", "baseline_fp32_ov", "baseline_ov_int8",
                "peer_bare_script", "peer_bare_pruned_kd"}  # the external peer, measured like every row
    expected |= {c["name"] for c in cands["candidates"]}
    assert set(names) == expected and len(names) == len(expected)
    assert any(r["precision"] == "int8" and r["kind"] == "candidate" for r in comp["rows"])
    for r in comp["rows"]:
        assert r["status"] == "ok", (r["name"], r["reason"])
        for key in ("accuracy", "size_bytes", "gzip_bytes", "params", "macs"):
            assert r[key] is not None, (r["name"], key)
        assert r["drop"] is not None or r["kind"] == "peer"
        for setting in ("1_thread", "all_cores"):
            lat = r["latency"][setting]
            assert 0 < lat["p50_ms"] <= lat["p90_ms"] and lat["throughput_fps"] > 0, (r["name"], setting)
        for ref in ("pytorch_fp32", "openvino_fp32", "onnx_fp32", "baseline_ov_int8"):
            ratio = r["ratios"][ref]
            for key in ("size_x", "gzip_x", "p50_speedup_1_thread", "p50_speedup_all_cores"):
                assert ratio[key] is not None and ratio[key] > 0, (r["name"], ref, key)
    rows = {r["name"]: r for r in comp["rows"]}
    assert rows["baseline_fp32_pytorch"]["ratios"]["pytorch_fp32"]["size_x"] == 1.0
    peer = rows["peer_bare_pruned_kd"]  # 2 seeds in smoke mode: mean and spread beside the rows
    assert len(peer["seeds"]["accuracy"]) == 2 and peer["accuracy_mean"] is not None
    assert peer["macs"] < rows["peer_bare_script"]["macs"] * 0.35  # 50 % of the channels: about a quarter
    assert len(rows["baseline_fp32_ort"]["seeds"]["accuracy"]) == 2  # the pipeline's second seed
    assert len(doc["reference"]) == 2 and doc["seeds"]["chains"]["1"]["ok"]
    assert rows["baseline_fp32_ov"]["ratios"]["openvino_fp32"]["p50_speedup_1_thread"] == 1.0

    t = comp["targets"]
    assert t["candidate"] == comp["selected"] and t["candidate"] in rows
    assert [it["name"].split(" (")[0] for it in t["items"]] == [
        "baseline converged", "baseline converged", "baseline at least as accurate as the bare script",
        "accuracy drop vs the baseline",
        "MACs vs the baseline", "size vs FP32 ONNX baseline", "p50 latency vs FP32 PyTorch eager",
        "p50 latency vs plain NNCF INT8 of the unpruned baseline",
        "more accurate than the bare script + prune + KD at equal or fewer MACs", "passed edgeopt's own gate"]
    converged, probe, *measured = t["items"]
    assert all(it["value"] is not None and it["met"] in (True, False) for it in [probe, *measured])
    assert doc["convergence_probe"]["epochs"] == [1, 2] and doc["budget"]["parts_s"][
        "convergence probe (seed 0 trained longer)"] > 0
    # one smoke epoch has no "last 20 % of epochs": not measured, so the targets are never all met
    assert converged["value"] is None and converged["met"] is None and t["all_met"] is False

    stages = doc["cost"]["realistic"]["stages"]
    assert list(stages) == stage_names()
    assert all(s["status"] == "ok" and s["wall_s"] > 0 and s["peak_rss_mb"] > 0 for s in stages.values())
    assert doc["cost"]["baseline_int8"]["stages"]["quantize"]["status"] == "ok"
    tp = doc["training_throughput"]
    assert tp["bare_images_per_s"] > 0 and tp["stage_images_per_s"] > 0 and "overhead_pct" in tp

    md = (out / "benchmark.md").read_text()
    assert "## Targets" in md and "## Pipeline cost" in md and "baseline_ov_int8" in md
    assert "## The external peer" in md and "peer_bare_pruned_kd" in md
    assert ("NOT MET" in md) or ("ALL MET" in md)
    assert "search `s1`, trial 3" in md and "student_ov_int8 (the search's pick)" in md

    # a third seed added to the finished run: both spreads grow, seed 0's measurements stay
    p50 = rows[comp["selected"]]["latency"]["1_thread"]["p50_ms"]
    assert main(["--add-seeds", str(out), "--seeds", "3"]) == 0
    doc = json.loads((out / "benchmark.json").read_text())
    after = {r["name"]: r for r in doc["compression"]["rows"]}
    assert len(after["baseline_fp32_ort"]["seeds"]["accuracy"]) == 3 == len(doc["reference"])
    assert after["peer_bare_pruned_kd"]["seeds"]["accuracy"][:2] == peer["seeds"]["accuracy"]
    assert after[comp["selected"]]["latency"]["1_thread"]["p50_ms"] == p50
    assert doc["added_seeds"][0]["seeds"] == [2] and doc["seeds"]["chains"]["2"]["ok"]
    assert doc["budget"]["parts_s"]["seed 2 (train .. evaluate)"] > 0
    assert "seeds 2 added by `--add-seeds`" in (out / "benchmark.md").read_text()
    written = (out / "benchmark.json").read_bytes()
    assert main(["--add-seeds", str(out), "--seeds", "3"]) == 0
    assert (out / "benchmark.json").read_bytes() == written  # nothing left to add: nothing rewritten


def _search_result(tmp_path: Path, overrides: list[str], pick: str = "student_ov_int8") -> Path:
    """A search.json as `python -m flows.search` writes it (the fields the benchmark reads)."""
    path = tmp_path / "search.json"
    path.write_text(json.dumps({"name": "s1", "status": "found", "trials": [
        {"trial": 2, "wall_s": 100.0}, {"trial": 3, "wall_s": 20.5}, {"trial": 4, "wall_s": None}], "best": {
        "trial": 3, "overrides": overrides, "pick": pick, "val_accuracy": 71.5},
        "winner_check": {"search_pick_test_accuracy": 70.9}}))
    return path


def test_search_result_gives_the_winning_knobs(tmp_path):
    picked = search_pick.load(_search_result(tmp_path, ["prune.ratio=0.55", "quantize.modes=[ov_int8]"]))
    assert picked["trial"] == 3 and picked["test_accuracy"] == 70.9
    assert picked["trials"] == 3 and picked["trials_wall_s"] == 120.5  # the search's own cost, reported beside
    assert search_pick.as_overrides(picked) == {"prune.ratio": "0.55", "quantize.modes": "[ov_int8]"}
    crafted = tmp_path / "crafted.json"
    crafted.write_text(json.dumps({"name": "s", "trials": "x", "winner_check": [1], "best": {
        "trial": 1, "overrides": ["prune.ratio=0.5"], "pick": "p", "val_accuracy": "71 %"}}))
    odd = search_pick.load(crafted)  # figures that are not numbers become None: the report still renders
    assert odd["val_accuracy"] is None and odd["test_accuracy"] is None and odd["trials"] == 0


@pytest.mark.parametrize("content, message", [
    (None, "not found"),
    ("{not json", "not valid JSON"),
    ('{"a": 1}', "not a search result"),
    ('{"name": "s", "trials": [], "best": null, "message": "no trial was feasible"}', "no feasible configuration"),
    ('{"name": "s", "trials": [], "best": {"overrides": "prune.ratio=0.5"}}', "KEY=VALUE"),
    ('{"name": "s", "trials": [], "best": {"overrides": ["prune.ratio=0.5", "registry.root=/etc"]}}',
     "sets registry.root, outside the sections a search varies"),
    ('{"name": "s", "trials": [], "best": {"overrides": ["train.epochs=1"]}}', "sets train.epochs"),
])
def test_search_result_refused_with_what_to_do(tmp_path, content, message):
    path = tmp_path / "search.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(search_pick.SearchResultError, match=message):
        search_pick.load(path)


def test_budget_names_what_took_the_time_and_what_was_left_out():
    import argparse
    import dataclasses

    from benchmarks.summary import budget, cuts
    from benchmarks.profiles import FULL

    doc = {"duration_s": 3000.0, "settings": {"budget_s": 2400.0},
           "cost": {"realistic": {"total_wall_s": 2000.0, "stages": {"train": {"wall_s": 1500.0, "status": "ok"},
                                                                     "distill": {"wall_s": 400.0, "status": "ok"}}}},
           "reference": [{"wall_s": 700.0}], "seeds": {"chains": {}}, "training_throughput": None}
    b = budget(doc)
    assert b["met"] is False and b["over_s"] == 600.0
    assert b["parts_s"] == {"chain realistic": 2000.0, "external peer": 700.0, "measuring the rows and the rest": 300.0}
    assert list(b["longest_stages_s"]) == ["realistic: train", "realistic: distill"]
    args = argparse.Namespace(skip_digits=True, skip_throughput=False, search_result=None)
    left = cuts(args, dataclasses.replace(FULL, seeds=1))
    assert left[0].startswith("1 training seed(s) instead of the mode's 3") and "--skip-digits" in left[1]
    assert "--search-result" in left[-1] and len(left) == 3
    assert cuts(argparse.Namespace(skip_digits=False, skip_throughput=False, search_result="s.json"), FULL) == []
    no_probe = cuts(argparse.Namespace(skip_digits=False, skip_throughput=False, search_result="s.json",
                                       no_probe=True), FULL)
    assert len(no_probe) == 1 and "--no-probe" in no_probe[0] and "not shown" in no_probe[0]
    md = markdown.render({**doc, "reference": [], "budget": b, "settings": {**doc["settings"], "cut": left}})
    assert "time goal **NOT MET**: 3,000 s of 2,400 s" in md and "left out of this run: 1 training seed(s)" in md

    # --jobs: the parts ran at the same time; no remainder is derived from their sum
    jobs = budget({**doc, "settings": {"budget_s": 2400.0, "jobs": 3}})
    assert jobs["parts_overlap"] is True and "measuring the rows and the rest" not in jobs["parts_s"]
    assert "parts side by side (--jobs), overlapping: chain realistic 2,000 s" in markdown.render(
        {**doc, "reference": [], "budget": jobs, "settings": {"budget_s": 2400.0, "cut": []}})
    # under the goal: met only for a finished run; one that stopped at an error is not judged
    quick = {**doc, "duration_s": 600.0, "errors": [], "compression": {"rows": [{"name": "x"}]}}
    assert budget(quick)["met"] is True
    for broken in ({"errors": ["realistic chain failed: sensitivity: ..."]}, {"compression": None}):
        b = budget({**quick, **broken})
        assert b["met"] is None
        assert "time goal not judged (the run has errors or no table): 600 s" in markdown.render(
            {**quick, **broken, "reference": [], "budget": b})


def test_bad_search_result_exits_2_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["--smoke", "--out", str(out), "--search-result", str(tmp_path / "missing.json")]) == 2
    assert "--search-result" in capsys.readouterr().err and not (out / "work").exists()


def test_overrides_are_split_per_chain():
    assert split_overrides(["prune.ratio=0.55", "digits:train.epochs=2", "realistic:data.root=/a:b"]) == {
        "realistic": {"prune.ratio": "0.55", "data.root": "/a:b"}, "digits": {"train.epochs": "2"}}
    with pytest.raises(ValueError, match="unknown chain"):
        split_overrides(["other:train.epochs=2"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        split_overrides(["train.epochs"])


def test_data_falls_back_to_digits_with_a_note(tmp_path):
    d = datasource.resolve(None, tmp_path / "repo", "data/raw/images")
    assert d["source"] == "digits" and "NO REAL IMAGES" in d["note"]
    folder = tmp_path / "imgs"
    (folder / "cat").mkdir(parents=True)
    d = datasource.resolve(str(folder), tmp_path, "x")
    assert d["source"] == "imagefolder" and d["overrides"]["data.channels"] == 3
    (tmp_path / "c" / "cifar-10-batches-py").mkdir(parents=True)
    assert datasource.resolve(str(tmp_path / "c"), tmp_path, "x")["source"] == "cifar10"
    with pytest.raises(ValueError, match="not found"):
        datasource.resolve(str(tmp_path / "missing"), tmp_path, "x")


def _row(name, kind, runtime, acc, size, p50, macs=100):
    lat = {"p50_ms": p50, "p90_ms": p50 * 1.2, "throughput_fps": 1000 / p50}
    return {"name": name, "kind": kind, "runtime": runtime, "precision": "fp32", "status": "ok", "reason": None,
            "accuracy": acc, "size_bytes": size, "gzip_bytes": size // 2, "params": 10, "macs": macs,
            "latency": {"1_thread": lat, "all_cores": lat}}


def test_ratios_and_targets_from_synthetic_rows():
    rows = [_row("baseline_fp32_pytorch", "reference", "pytorch", 90.0, 4000, 10.0),
            _row("baseline_fp32_ort", "baseline", "onnxruntime", 90.0, 4000, 3.0),
            _row("baseline_fp32_ov", "baseline", "openvino", 90.0, 4000, 2.0),
            _row("baseline_ov_int8", "baseline", "openvino", 89.9, 1000, 1.0),
            _row("peer_bare_script", "peer", "onnxruntime", 89.5, 4000, 3.0),
            _row("peer_bare_pruned_kd", "peer", "onnxruntime", 89.0, 1000, 1.0, macs=25),
            _row("small_ov_int8", "candidate", "openvino", 89.7, 100, 0.25, macs=10)]
    refs = {"pytorch_fp32": "baseline_fp32_pytorch", "openvino_fp32": "baseline_fp32_ov",
            "onnx_fp32": "baseline_fp32_ort", "baseline_ov_int8": "baseline_ov_int8"}
    compression._drops(rows, {"openvino": "baseline_fp32_ov", "onnxruntime": "baseline_fp32_ort"})
    compression._ratios(rows, refs)
    small = rows[-1]
    assert small["drop"] == pytest.approx(0.3) and small["drop_against"] == "baseline_fp32_ov"
    assert small["ratios"]["pytorch_fp32"]["size_x"] == 40.0
    assert small["ratios"]["pytorch_fp32"]["p50_speedup_1_thread"] == 40.0
    assert small["ratios"]["openvino_fp32"]["p50_speedup_1_thread"] == 8.0
    assert small["ratios"]["openvino_fp32"]["macs_x"] == 10.0
    converged = {"converged": True, "in_run_converged": True, "val_gain": 0.1, "max_gain": 0.5, "epochs": 30,
                 "probe": _probe(90.0, 90.1)}
    passed = {"status": "pass", "selected": "small_ov_int8"}
    t = compression.targets(rows, "small_ov_int8", "gate", refs, converged, passed)
    assert [it["met"] for it in t["items"]] == [True] * 10 and t["all_met"]
    rows[-1]["latency"]["1_thread"] = {"p50_ms": 0.5, "p90_ms": 0.6}  # 20x PyTorch, 2x plain INT8: too slow
    rows[-2]["accuracy"] = 89.8  # and the peer's pruned model now beats it
    t = compression.targets(rows, "small_ov_int8", "gate", refs, converged, passed)
    assert [it["met"] for it in t["items"]] == [True] * 6 + [False] * 3 + [True]
    unconverged = compression.targets(rows, "small_ov_int8", "gate", refs, {**converged, "val_gain": 2.0,
                                                                              "converged": False})
    assert unconverged["items"][0]["met"] is False and "did not converge" in unconverged["note"]
    md = markdown.render({"mode": "test", "compression": {"rows": rows, "targets": t, "protocol": {},
                                                          "selected": "small_ov_int8"}})
    assert "**NOT MET**" in md and "| small_ov_int8 |" in md and "| peer_bare_pruned_kd |" in md


def test_when_the_gate_passes_none_the_targets_show_the_nearest_release_and_are_not_met(tmp_path, monkeypatch):
    """Nothing is promoted, so the targets fail; they are checked on the candidate nearest to a release: the most
    accurate within the MAC target, not the fastest (a far smaller student that says nothing of the recipe)."""
    from types import SimpleNamespace

    from edgeopt.paths import Paths

    rows = [_row("baseline_fp32_pytorch", "reference", "pytorch", 90.0, 4000, 10.0, macs=1000),
            _row("baseline_fp32_ort", "baseline", "onnxruntime", 90.0, 4000, 3.0, macs=1000),
            _row("baseline_fp32_ov", "baseline", "openvino", 90.0, 4000, 2.0, macs=1000),
            _row("student_ov_int8", "candidate", "openvino", 85.0, 50, 0.1, macs=50),
            _row("pruned_ov_int8", "candidate", "openvino", 89.3, 100, 0.3, macs=90),
            _row("wide_ov_int8", "candidate", "openvino", 89.4, 500, 1.0, macs=500)]
    refs = {"pytorch_fp32": "baseline_fp32_pytorch", "openvino_fp32": "baseline_fp32_ov",
            "onnx_fp32": "baseline_fp32_ort", "baseline_ov_int8": None}
    compression._drops(rows, {"openvino": "baseline_fp32_ov", "onnxruntime": "baseline_fp32_ort"})
    none_pass = {"status": "none_pass", "selected": None}
    pick, why = compression._selected(rows, none_pass, 0.5, refs)
    assert pick == "pruned_ov_int8" and "the one with the smallest drop within the MAC target" in why
    assert "nothing would be promoted" in why
    rows[-1]["macs"] = 90  # two within the MAC target: the more accurate one, however slow
    assert compression._selected(rows, none_pass, 0.5, refs)[0] == "wide_ov_int8"
    rows[3]["accuracy"] = 89.7  # now within the drop limit: the fastest of those
    pick, why = compression._selected(rows, none_pass, 0.5, refs)
    assert pick == "student_ov_int8" and "fastest candidate (1 thread p50) within the accuracy-drop limit" in why
    assert compression._selected(rows, {"status": "pass", "selected": "wide_ov_int8"}, 0.5, refs) == (
        "wide_ov_int8", "gate")

    rows[3]["accuracy"] = 85.0
    t = compression.targets(rows, "pruned_ov_int8", "fallback", refs, {"converged": True}, none_pass)
    gate_item = t["items"][-1]
    assert gate_item["value"] == "none_pass" and gate_item["met"] is False and t["all_met"] is False
    assert "| passed edgeopt's own gate (a release would be promoted) | none_pass | == pass | **NOT MET** |" in (
        markdown.render({"mode": "test", "compression": {"rows": rows, "targets": t, "protocol": {}}}))
    assert compression.targets(rows, "pruned_ov_int8", "fallback", refs, {"converged": True})["items"][-1][
        "met"] is None  # no gate report: not measured (so not all met)
    # the gate's own drop of the candidate, with its paired SE: a fail within one SE of the limit is chance
    report = {"status": "none_pass", "selected": None, "evaluation": {"split": "test", "images": 1017},
              "rows": [{"name": "pruned_ov_int8", "drop": 0.59, "drop_se": 0.7276}, {"name": "x", "drop": None}]}
    detail = compression.targets(rows, "pruned_ov_int8", "fallback", refs, {"converged": True},
                                 compression._gate_summary(report))["items"][-1]["detail"]
    assert "; pruned_ov_int8's drop at the gate 0.59 +- 0.73 pt (paired SE, 1017 test images)" in detail
    stale = {"status": "stale", "selected": None, "error": "older than the candidates"}
    assert compression._selected(rows, stale, 0.5, refs)[1].startswith("fallback (gate stale: nothing would be")

    # more seeds move the means, and a fallback pick is made again on them: the student's mean is now within
    rows[-1]["macs"] = 500
    pick, why = compression._selected(rows, none_pass, 0.5, refs)
    assert pick == "pruned_ov_int8"  # seed 0 alone: the student is 5 pt below
    for r in rows:
        r["selected"] = r["name"] == pick
    table = {"rows": rows, "references": refs, "gate": none_pass, "selected": pick, "selected_by": why}
    monkeypatch.setattr(compression, "peer_accuracy", lambda *a: [])
    params = SimpleNamespace(gate=SimpleNamespace(max_accuracy_drop=0.5))
    compression.add_seeds(table, Paths(tmp_path), params, [], {"baseline_fp32_ov": [90.0, 90.0],
                                                               "student_ov_int8": [92.5, 92.5]})
    assert table["selected"] == "student_ov_int8" and "within the accuracy-drop limit" in table["selected_by"]
    assert [r["name"] for r in rows if r["selected"]] == ["student_ov_int8"]
    assert table["targets"]["candidate"] == "student_ov_int8" and table["targets"]["all_met"] is False


def test_the_run_is_not_whole_when_a_row_was_not_measured_but_a_rejected_candidate_is_a_result():
    from benchmarks.__main__ import unmeasured_rows

    rows = [{"name": "baseline_ov_int8", "kind": "baseline", "status": "failed", "reason": "side quantize failed"},
            {"name": "finetuned_ov_int8", "kind": "candidate", "status": "failed", "reason": "parity 0.62 < 0.9"},
            {"name": "student_ov_int8", "kind": "candidate", "status": "failed", "reason": "latency: crashed"},
            {"name": "peer_bare_script", "kind": "peer", "status": "ok", "reason": None}]
    doc = {"errors": [], "compression": {"rows": rows}}
    assert unmeasured_rows(doc) == ["compression row baseline_ov_int8: side quantize failed",
                                    "compression row student_ov_int8: latency: crashed"]
    doc["errors"].append("baseline_int8 side run failed (the plain-INT8 row is missing): quantize: boom")
    assert unmeasured_rows(doc) == ["compression row student_ov_int8: latency: crashed"]  # said once


def test_etas_reuse_only_an_earlier_run_with_the_same_overrides(tmp_path):
    from benchmarks.chain import previous_timings, run_setup

    def write(name: str, mode: str, overrides: dict, distill_s: float) -> None:
        (tmp_path / name).mkdir()
        (tmp_path / name / "benchmark.json").write_text(json.dumps({
            "mode": mode, "settings": {"overrides": {"realistic": overrides}},
            "cost": {"realistic": {"stages": {"distill": {"status": "ok", "wall_s": distill_s}}}}}))

    same = {"model.width": 0.5, "distill.epochs": 20, "prune.protect": []}
    write("20260101-000000-full", "full", same, 360.0)
    write("20260102-000000-full", "full", {**same, "model.width": 0.25}, 48.0)   # newer, other settings
    write("20260103-000000-quick", "quick", same, 5.0)                           # newer, other mode
    assert previous_timings(tmp_path, "full", "realistic", overrides=same) == {"distill": 360.0}
    assert previous_timings(tmp_path, "full", "realistic", overrides={**same, "distill.epochs": 30}) == {}
    assert previous_timings(tmp_path, "full", "realistic") == {"distill": 48.0}  # no filter: the newest run

    # another machine, or the cores shared by --jobs: its stage times would mislead the ETAs
    here = {"cpu": "AMD EPYC", "cores": 2, "gpu": None, "jobs": 1}
    assert run_setup({"environment": {"hardware": {"cpu": "AMD EPYC", "cores": 2}}, "settings": {}}) == here
    for name, hw, jobs, distill_s in (("20260104-000000-full", "Xeon", None, 10.0),
                                      ("20260105-000000-full", "AMD EPYC", 4, 20.0),
                                      ("20260106-000000-full", "AMD EPYC", 1, 30.0)):
        write(name, "full", same, distill_s)
        doc = json.loads((tmp_path / name / "benchmark.json").read_text())
        doc["environment"] = {"hardware": {"cpu": hw, "cores": 2}}
        doc["settings"]["jobs"] = jobs
        (tmp_path / name / "benchmark.json").write_text(json.dumps(doc))
    assert previous_timings(tmp_path, "full", "realistic", overrides=same, setup=here) == {"distill": 30.0}
    assert previous_timings(tmp_path, "full", "realistic", overrides=same, setup={**here, "jobs": 4}) == {
        "distill": 20.0}
    assert previous_timings(tmp_path, "full", "realistic", overrides=same, setup={**here, "cpu": "Xeon"}) == {
        "distill": 10.0}
    assert previous_timings(tmp_path, "full", "realistic", overrides=same, setup={**here, "cores": 16}) == {}
    assert previous_timings(tmp_path, "full", "realistic", overrides=same, setup={**here, "gpu": "NVIDIA H200"}) == {}


def test_gpu_name_from_nvidia_smi_without_torch(tmp_path, monkeypatch):
    from benchmarks import environment

    monkeypatch.setenv("PATH", str(tmp_path))
    assert environment.gpu_name() is None  # no nvidia-smi: no GPU
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA H200'\necho 'NVIDIA H200'\n")
    smi.chmod(0o755)
    assert environment.gpu_name() == "NVIDIA H200"
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    assert environment.gpu_name() is None


def _seeded_doc(ref_seeds, chains):
    return {"reference": [{"seed": s} for s in ref_seeds],
            "seeds": {"chains": {str(k): {"ok": ok} for k, ok in chains.items()}}}


def test_add_seeds_plans_only_the_missing_seeds():
    from benchmarks.more_seeds import AddSeedsError, plan

    assert plan(_seeded_doc([0], {}), 3) == [1, 2]
    assert plan(_seeded_doc([0, 1], {1: True}), 3) == [2]
    assert plan(_seeded_doc([0, 1], {}), 3) == [1, 2]  # peer seed 1 done, the pipeline's not: redo from 1
    assert plan(_seeded_doc([0, 1, 2], {1: True, 2: True}), 3) == []
    assert plan(_seeded_doc([0], {}), 1) == []
    with pytest.raises(AddSeedsError, match="not 0..k-1"):
        plan(_seeded_doc([0, 2], {}), 3)
    with pytest.raises(AddSeedsError, match="not 0..k-1"):
        plan(_seeded_doc([0], {2: True}), 3)
    with pytest.raises(AddSeedsError, match="seed.* 1 of this run failed"):
        plan(_seeded_doc([0, 1], {1: False}), 3)
    with pytest.raises(AddSeedsError, match="no external peer"):
        plan(_seeded_doc([], {}), 3)
    assert plan(_seeded_doc([0], {1: True, 2: True}), 3) == [1, 2]  # the peer's seeds 1, 2 missing


def test_add_seeds_refuses_a_dir_it_cannot_extend(tmp_path, capsys):
    assert main(["--add-seeds", str(tmp_path / "none")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["--add-seeds", str(tmp_path), "--set", "prune.ratio=0.5"]) == 2
    assert "takes only --seeds" in capsys.readouterr().err
    assert main(["--add-seeds", str(tmp_path)]) == 2
    assert "cannot read benchmark.json" in capsys.readouterr().err
    (tmp_path / "benchmark.json").write_text('{"format": "something else"}')
    assert main(["--add-seeds", str(tmp_path)]) == 2
    assert "not an edgeopt-benchmark/1 result" in capsys.readouterr().err
    (tmp_path / "benchmark.json").write_text(json.dumps({"format": "edgeopt-benchmark/1", "mode": "full",
                                                         "compression": {"rows": [{"name": "x"}]}}))
    assert main(["--add-seeds", str(tmp_path), "--seeds", "2"]) == 2
    assert "benchmark.json is damaged: argv" in capsys.readouterr().err
    run = _finished_run(tmp_path)
    doc = json.loads((run / "benchmark.json").read_text())
    for path, value, message in ((("compression", "rows", 0, "accuracy"), "90 %", "numeric accuracy"),
                                 (("reference", 0, "bare"), None, "reference (peer) entry"),
                                 (("settings", "overrides"), [], "overrides.realistic"),
                                 (("convergence_probe",), "yes", "convergence_probe is not an object"),
                                 (("convergence_probe",), {"ok": True, "converged": True, "epochs": [40],
                                                           "test_accuracy": [1, 2]}, "convergence_probe lacks")):
        crafted = json.loads(json.dumps(doc))
        node = crafted
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        (run / "benchmark.json").write_text(json.dumps(crafted))
        assert main(["--add-seeds", str(run), "--seeds", "2"]) == 2
        assert "damaged: " in (err := capsys.readouterr().err) and message in err, err
        assert json.loads((run / "benchmark.json").read_text()) == crafted  # nothing written over
    (run / "benchmark.json").write_text(json.dumps(doc))
    (run / "work" / "realistic" / "params.yaml").unlink()
    assert main(["--add-seeds", str(run), "--seeds", "2"]) == 2
    assert "params.yaml is missing" in capsys.readouterr().err
    (tmp_path / "benchmark.json").write_text("{not json")
    assert main(["--add-seeds", str(tmp_path)]) == 2
    assert "cannot read benchmark.json" in capsys.readouterr().err
    assert (tmp_path / "benchmark.json").read_text() == "{not json"  # nothing written over


def test_add_seeds_refuses_another_recipe(tmp_path, monkeypatch):
    import re
    import subprocess

    from benchmarks.chain import Chain
    from benchmarks.more_seeds import AddSeedsError, check_recipe

    over = {"train.epochs": 3, "prune.ratio": 0.5}
    real = tmp_path / "run" / "work" / "realistic"
    Chain("realistic", real, over).setup(REPO / "params.yaml")
    repo = tmp_path / "repo"
    (repo / "edgeopt").mkdir(parents=True)
    (repo / "edgeopt" / "training.py").write_text("EPOCHS = 1\n")
    for rel in ("stages/prune.py", "benchmarks/reference.py", "benchmarks/chain.py"):  # every path it compares
        (repo / rel).parent.mkdir(exist_ok=True)
        (repo / rel).write_text("")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "-C", str(repo), "add", "-A"], check=True)
    subprocess.run([*git, "-C", str(repo), "commit", "-qm", "first run"], check=True)
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    from benchmarks.environment import hardware, library_versions

    doc = {"settings": {"overrides": {"realistic": over}}, "reference": [{"recipe": {"epochs": 15, "kd_epochs": 5}}],
           "environment": {"git": {"commit": commit.strip()}, "libraries": library_versions(),
                           "hardware": {"cpu": hardware()["cpu"]}}}
    assert check_recipe(doc, real, REPO / "params.yaml", repo, (15, 5)) is None  # same params, code, machine
    assert check_recipe({**doc, "reference": []}, real, REPO / "params.yaml", repo) is None  # --add-probe: no peer
    with pytest.raises(AddSeedsError, match=r"peer's epochs differ.*\(10, 5\) now"):
        check_recipe(doc, real, REPO / "params.yaml", repo, (10, 5))
    old_torch = {**doc, "environment": {**doc["environment"], "libraries": {**library_versions(), "torch": "1.0"}}}
    with pytest.raises(AddSeedsError, match="library versions changed.*torch 1.0 ->"):
        check_recipe(old_torch, real, REPO / "params.yaml", repo)
    other_cpu = {**doc, "environment": {**doc["environment"], "hardware": {"cpu": "another CPU"}}}
    with pytest.raises(AddSeedsError, match="another CPU model"):
        check_recipe(other_cpu, real, REPO / "params.yaml", repo)
    # the params the new seeds would get differ from the first run's
    changed = tmp_path / "params.yaml"
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    base["train"]["label_smoothing"] = 0.0
    changed.write_text(yaml.safe_dump(base))
    with pytest.raises(AddSeedsError, match="params differ.*train.label_smoothing"):
        check_recipe(doc, real, changed, repo)
    # the training code changed since the commit that ran the first seed
    (repo / "edgeopt" / "training.py").write_text("EPOCHS = 2\n")
    with pytest.raises(AddSeedsError, match=r"(?s)training code changed.*edgeopt/training.py") as refused:
        check_recipe(doc, real, REPO / "params.yaml", repo)
    advice = re.search(r"`(git restore [^`]+)`", str(refused.value)).group(1)
    (repo / "edgeopt" / "added.py").write_text("")  # a file added since counts, and the advice removes it too
    subprocess.run(["git", "add", "edgeopt/added.py"], cwd=repo, check=True)
    subprocess.run(advice.split(), cwd=repo, check=True)  # the advice, followed, clears the refusal
    assert check_recipe(doc, real, REPO / "params.yaml", repo) is None and not (repo / "edgeopt" / "added.py").exists()
    (repo / "edgeopt" / "training.py").write_text("EPOCHS = 1\n")
    (repo / "stages" / "train.py").write_text("")  # a new, uncommitted file counts too
    with pytest.raises(AddSeedsError, match="(?s)training code changed.*new files: stages/train.py"):
        check_recipe(doc, real, REPO / "params.yaml", repo)
    no_git = {**doc, "environment": {**doc["environment"], "git": {}}}
    assert "no git commit" in check_recipe(no_git, real, REPO / "params.yaml", repo)
    # the first run trained on a GPU (its peer, or its train stage), this machine would train on the CPU
    from benchmarks import more_seeds

    monkeypatch.setattr(more_seeds, "training_devices_now",
                        lambda real: {"the peer": "cpu", "edgeopt's train stage": "cpu"})
    on_gpu = {**no_git, "reference": [{**doc["reference"][0], "device": "cuda"}]}
    with pytest.raises(AddSeedsError, match="the peer trained on cuda in the first run and would train on cpu"):
        check_recipe(on_gpu, real, REPO / "params.yaml", repo)
    (real / "metrics").mkdir(exist_ok=True)
    (real / "metrics" / "train.json").write_text(json.dumps({"device": "cuda"}))
    with pytest.raises(AddSeedsError, match="edgeopt's train stage trained on cuda"):
        check_recipe(no_git, real, REPO / "params.yaml", repo)
    (real / "metrics" / "train.json").write_text(json.dumps({"device": "cpu"}))
    assert "no git commit" in check_recipe({**no_git, "reference": [{**doc["reference"][0], "device": "cpu"}]},
                                           real, REPO / "params.yaml", repo)
    # another GPU model: the train stage recorded the first run's
    monkeypatch.setattr(more_seeds, "training_devices_now",
                        lambda real: {"the peer": "cuda", "edgeopt's train stage": "cuda: NVIDIA A100"})
    (real / "metrics" / "train.json").write_text(json.dumps({"device": "cuda", "device_name": "NVIDIA H200"}))
    with pytest.raises(AddSeedsError, match="trained on cuda: NVIDIA H200 in the first run and would train on "
                                            "cuda: NVIDIA A100"):
        check_recipe(no_git, real, REPO / "params.yaml", repo)
    monkeypatch.undo()
    (real / "metrics" / "train.json").unlink()
    # here, asked of a child process (the runner stays free of torch): a CPU machine trains both on the CPU
    import torch

    here = {"the peer": "cpu", "edgeopt's train stage": "cpu"} if not torch.cuda.is_available() else {
        "the peer": "cuda", "edgeopt's train stage": f"cuda: {torch.cuda.get_device_name(0)}"}
    assert more_seeds.training_devices_now(real) == here
    dirty = {**doc, "environment": {**doc["environment"], "git": {"commit": commit.strip(), "dirty": True}}}
    assert "uncommitted changes" in check_recipe(dirty, real, REPO / "params.yaml", repo)


def _one_seed_table() -> dict:
    """A finished one-seed table: seed 0 of the pick and the baseline at 90 %, the peer's pruned model at 89 %."""
    rows = [_row("baseline_fp32_pytorch", "reference", "pytorch", 90.0, 4000, 10.0),
            _row("baseline_fp32_ort", "baseline", "onnxruntime", 90.0, 4000, 3.0),
            _row("baseline_ov_int8", "baseline", "openvino", 89.9, 1000, 1.0),
            _row("peer_bare_script", "peer", "onnxruntime", 89.5, 4000, 3.0),
            _row("peer_bare_pruned_kd", "peer", "onnxruntime", 89.0, 1000, 1.0, macs=25),
            _row("small_ov_int8", "candidate", "openvino", 90.0, 100, 0.25, macs=10)]
    refs = {"pytorch_fp32": "baseline_fp32_pytorch", "openvino_fp32": None, "onnx_fp32": "baseline_fp32_ort",
            "baseline_ov_int8": "baseline_ov_int8"}
    return {"rows": rows, "references": refs, "selected": "small_ov_int8", "selected_by": "gate",
            "gate": {"status": "pass", "selected": "small_ov_int8"}}


def test_add_seeds_moves_means_spreads_and_targets(tmp_path, monkeypatch):
    from edgeopt.paths import Paths

    table = _one_seed_table()
    rows = table["rows"]
    measured = {"bare": [89.5, 88.5, 89.0], "pruned_kd": [89.0, 90.5, 90.0]}  # seed 0 as in the table
    monkeypatch.setattr(compression, "peer_accuracy", lambda runs, key, paths, params: measured[key][:len(runs)])
    peers = [{"seed": s, "bare": {"train_s": 10.0}, "pruned_kd": {"train_s": 2.0}} for s in range(3)]
    compression.add_seeds(table, Paths(tmp_path), None, peers,
                          {"baseline_fp32_ort": [91.0, 92.0], "small_ov_int8": [88.0, 89.0]})
    by = {r["name"]: r for r in rows}
    assert by["small_ov_int8"]["seeds"]["accuracy"] == [90.0, 88.0, 89.0]
    assert by["small_ov_int8"]["accuracy_mean"] == 89.0 and by["small_ov_int8"]["accuracy_std"] == 1.0
    assert by["baseline_fp32_ort"]["accuracy_mean"] == 91.0
    assert by["peer_bare_pruned_kd"]["seeds"] == {"seeds": [0, 1, 2], "accuracy": [89.0, 90.5, 90.0],
                                                  "train_s": [2.0, 2.0, 2.0]}
    assert "seeds" not in by["baseline_ov_int8"] and by["small_ov_int8"]["accuracy"] == 90.0  # seed 0 kept
    items = {it["name"].split(" (")[0]: it for it in table["targets"]["items"]}
    # on seed 0 alone the drop was 0 and the lead over the peer 1 pt; on the means both targets fail
    assert items["accuracy drop vs the baseline"]["value"] == 2.0
    assert items["accuracy drop vs the baseline"]["met"] is False
    assert items["more accurate than the bare script + prune + KD at equal or fewer MACs"]["value"] == -0.8333
    assert "3 seed(s), std 1.0" in items["accuracy drop vs the baseline"]["detail"]


def test_a_drop_compares_only_the_seeds_both_rows_have(tmp_path, monkeypatch):
    """Seed 1 of the candidate has no figure (its chain failed there): its mean over seeds 0 and 2 against the
    baseline's over 0, 1 and 2 would compare different seeds (here: drop -1.33, 'better than its baseline')."""
    from edgeopt.paths import Paths

    table = _one_seed_table()
    monkeypatch.setattr(compression, "peer_accuracy", lambda *a: [])
    compression.add_seeds(table, Paths(tmp_path), None, [],
                          {"baseline_fp32_ort": [86.0, 90.0], "small_ov_int8": [None, 90.0]})
    item = next(it for it in table["targets"]["items"] if it["name"] == "accuracy drop vs the baseline")
    assert item["value"] == 0.0 and "the drop on the 2 seed(s) both have" in item["detail"]
    assert compression._mean_drop({"drop_against": "b", "accuracy": 1.0}, {"b": {"accuracy": 3.0}}) == 2.0


def _finished_run(tmp_path: Path) -> Path:
    """A finished one-seed run as the benchmark leaves it (the files --add-seeds reads), with synthetic rows."""
    from benchmarks.__main__ import FORMAT
    from benchmarks.chain import Chain

    out, over = tmp_path / "run", {"train.epochs": 3}
    real = out / "work" / "realistic"
    Chain("realistic", real, over).setup(REPO / "params.yaml")
    for f in (real / "data" / "prepared" / "meta.json", real / "metrics" / "evaluate.json",
              out / "work" / "reference" / "seed0" / "bare.onnx", out / "work" / "reference" / "seed0" / "kd.onnx"):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("{}")
    peer0 = {"seed": 0, "recipe": {"epochs": 15, "kd_epochs": 5}, "wall_s": 50.0,
             "bare": {"onnx": str(out / "work/reference/seed0/bare.onnx"), "train_s": 40.0, "macs": 4000},
             "pruned_kd": {"onnx": str(out / "work/reference/seed0/kd.onnx"), "train_s": 10.0, "macs": 1000}}
    doc = {"format": FORMAT, "mode": "full", "argv": ["--seeds", "1"], "duration_s": 100.0, "errors": [],
           "settings": {"overrides": {"realistic": over}, "execution": "subprocess per stage", "budget_s": 2400.0,
                        "notes": []},
           "compression": _one_seed_table(),
           "reference": [peer0], "seeds": {"seeds": [0], "chains": {}, "accuracy": {}}, "cost": {},
           "environment": {}}
    (out / "benchmark.json").write_text(json.dumps(doc))
    return out


def test_add_seeds_keeps_every_finished_seed_when_a_later_step_fails(tmp_path, monkeypatch):
    from benchmarks import more_seeds, seed_runs

    out = _finished_run(tmp_path)
    calls = []
    monkeypatch.setattr(more_seeds, "check_recipe", lambda *a, **k: None)
    monkeypatch.setattr(compression, "peer_accuracy", lambda runs, key, paths, params: [89.0 + r["seed"] for r in runs])

    def peer(prepared, where, seed, profile, say, doc):
        calls.append(("peer", seed))
        if broken["peer"]:
            broken["peer"] = False
            doc["errors"].append(f"reference seed {seed}: exit 1: out of memory")
            return None
        (where / f"seed{seed}").mkdir(parents=True)
        (where / f"seed{seed}" / "model.onnx").write_text("{}")
        onnx = str(where / f"seed{seed}" / "model.onnx")
        return {"seed": seed, "wall_s": 5.0, "bare": {"onnx": onnx, "train_s": 4.0, "macs": 4000},
                "pruned_kd": {"onnx": onnx, "train_s": 1.0, "macs": 1000}}

    def chain(real, overrides, base, stages, work, in_process, seed, say):
        calls.append(("chain", seed))
        if seed == 2 and broken["chain"]:
            return {"ok": False}, {}
        return ({"ok": True, "total_wall_s": 7.0, "workdir": str(work / f"seed{seed}")},
                {"baseline_fp32_ort": 90.0 + seed, "small_ov_int8": 90.0 - seed})

    broken = {"chain": True, "peer": True}
    monkeypatch.setattr(seed_runs, "reference_seed", peer)
    monkeypatch.setattr(seed_runs, "pipeline_seed", chain)
    read = lambda: json.loads((out / "benchmark.json").read_text())  # noqa: E731
    # the peer's seed 1 fails first: nothing trained after it, the error says to retry
    assert main(["--add-seeds", str(out), "--seeds", "3"]) == 1
    assert calls == [("peer", 1)] and "peer seed 1 failed" in read()["errors"][-1]
    calls[:] = []
    # seed 2's chain fails: seed 1 is in the table, seed 2's peer run is kept, the error says what to do
    assert main(["--add-seeds", str(out), "--seeds", "3"]) == 1
    doc = read()
    assert calls == [("peer", 1), ("chain", 1), ("peer", 2), ("chain", 2)]
    assert [r["seed"] for r in doc["reference"]] == [0, 1, 2] and list(doc["seeds"]["chains"]) == ["1"]
    assert any("pipeline seed 2 failed" in e and "rerun --add-seeds" in e for e in doc["errors"])
    assert {r["name"]: r for r in doc["compression"]["rows"]}["small_ov_int8"]["seeds"]["accuracy"] == [90.0, 89.0]
    # the retry runs only seed 2's chain, and its error goes
    broken["chain"], calls[:] = False, []
    assert main(["--add-seeds", str(out), "--seeds", "3"]) == 0
    doc = read()
    assert calls == [("chain", 2)] and doc["errors"] == [] and doc["seeds"]["seeds"] == [0, 1, 2]
    rows = {r["name"]: r for r in doc["compression"]["rows"]}
    assert rows["small_ov_int8"]["seeds"]["accuracy"] == [90.0, 89.0, 88.0]
    assert rows["peer_bare_pruned_kd"]["seeds"]["accuracy"] == [89.0, 90.0, 91.0]
    assert doc["budget"]["parts_s"]["external peer"] == 60.0 and doc["duration_s"] > 100.0
    assert [a["seeds"] for a in doc["added_seeds"]] == [[], [1], [2]]  # the failed try is on record
    # a run made without the convergence probe says so, and how to add it
    assert any("convergence probe" in c and "--add-probe DIR" in c for c in doc["settings"]["cut"])
    assert doc["compression"]["targets"]["items"][1]["met"] is None and "not shown" in doc["compression"][
        "targets"]["note"]
    # a table that cannot be rebuilt keeps the seed's runs; the next call rebuilds it without training
    calls[:] = []
    monkeypatch.setattr(compression, "peer_accuracy", lambda *a: 1 / 0)
    assert main(["--add-seeds", str(out), "--seeds", "4"]) == 1
    doc = read()
    assert calls == [("peer", 3), ("chain", 3)] and doc["seeds"]["table_stale"] and "3" in doc["seeds"]["chains"]
    assert any("could not be rebuilt" in e for e in doc["errors"])
    monkeypatch.setattr(compression, "peer_accuracy", lambda runs, key, paths, params: [89.0] * len(runs))
    calls[:] = []
    assert main(["--add-seeds", str(out), "--seeds", "4"]) == 0
    doc = read()
    assert calls == [] and "table_stale" not in doc["seeds"] and doc["errors"] == []
    assert len({r["name"]: r for r in doc["compression"]["rows"]}["small_ov_int8"]["seeds"]["accuracy"]) == 4
    # a table derived by an older version (here: another verdict) is derived again from the files, no training
    # (the training code may have changed since: nothing trains, so the recipe is not checked)
    doc["compression"]["targets"]["all_met"] = "derived otherwise"
    (out / "benchmark.json").write_text(json.dumps(doc))
    from benchmarks import more_seeds

    monkeypatch.setattr(more_seeds, "check_recipe", lambda *a: 1 / 0)
    assert main(["--add-seeds", str(out), "--seeds", "4"]) == 0
    assert calls == [] and read()["compression"]["targets"]["all_met"] is False
    assert "table re-derived from the seeds' files by `--add-seeds`" in (out / "benchmark.md").read_text()
    written = (out / "benchmark.json").read_bytes()
    assert main(["--add-seeds", str(out), "--seeds", "4"]) == 0 and (out / "benchmark.json").read_bytes() == written


def test_add_probe_runs_the_probe_a_run_left_out_and_the_targets_follow_it(tmp_path, monkeypatch, capsys):
    """A run made in sittings (--no-probe) could never show a converged baseline: --add-probe trains seed 0's
    baseline longer on the same images, records the verdict, and the targets and the cut list follow it."""
    from types import SimpleNamespace

    from benchmarks import chain as ch
    from benchmarks import convergence_probe, more_probe, more_seeds, seed_runs

    clock = iter(range(0, 10**6, 60))  # each reading a minute later: the probe's wall time is never 0
    monkeypatch.setattr(convergence_probe, "time", SimpleNamespace(perf_counter=lambda: float(next(clock))))
    out = _finished_run(tmp_path)
    real = out / "work" / "realistic"
    doc = json.loads((out / "benchmark.json").read_text())
    doc["argv"] = ["--seeds", "1", "--no-probe"]
    doc["cost"] = {"realistic": {"total_wall_s": 50.0, "max_peak_rss_mb": 900, "stages": {"train": {"status": "ok"}}}}
    doc["settings"]["cut"] = ["the convergence probe (--no-probe): ..."]
    (out / "benchmark.json").write_text(json.dumps(doc))
    (real / "metrics" / "train.json").write_text(json.dumps(
        {"test_accuracy": 90.0, "val_accuracy": 91.0, "epochs_run": 3, "converged": True,
         "val_gain_last_20pct": 0.0}))
    recipe_checked = []
    monkeypatch.setattr(more_probe, "check_recipe", lambda *a, **k: recipe_checked.append(a[1]))
    monkeypatch.setattr(compression, "peer_accuracy", lambda runs, key, paths, params: [89.0] * len(runs))
    trained, result = [], {"status": "failed", "test_accuracy": 90.3}

    def fake_run(self, stages, eta=None, total=None):
        trained.append((self.label, stages, self.params.train.epochs, (self.workdir / "data/prepared").resolve()))
        self.runs["train"] = ch.StageRun("train", status=result["status"], wall_s=2.0)
        if result["status"] == "ok":
            (self.workdir / "metrics" / "train.json").parent.mkdir(exist_ok=True)
            (self.workdir / "metrics" / "train.json").write_text(json.dumps(
                {"test_accuracy": result["test_accuracy"], "val_accuracy": 91.0, "epochs_run": 5}))
        return result["status"] == "ok"

    monkeypatch.setattr(ch.Chain, "run", fake_run)
    read = lambda: json.loads((out / "benchmark.json").read_text())  # noqa: E731
    probe_item = lambda d: next(i for i in d["compression"]["targets"]["items"]  # noqa: E731
                                if "convergence probe" in i["name"])
    # the probe's training fails: exit 1, the error says so, the table says "not measured"
    assert main(["--add-probe", str(out)]) == 1
    doc = read()
    assert trained == [("probe", ["train"], 5, (real / "data" / "prepared").resolve())]
    assert recipe_checked == [real]  # it trains: the recipe must be the first run's
    assert doc["convergence_probe"]["ok"] is False and any(e.startswith("convergence probe:") for e in doc["errors"])
    assert probe_item(doc)["met"] is None and doc["compression"]["targets"]["all_met"] is False
    # run again: it retries and trains; the table cannot be derived (a peer model unreadable): exit 1, the probe kept
    result["status"], trained[:] = "ok", []
    monkeypatch.setattr(compression, "peer_accuracy", lambda *a: 1 / 0)
    assert main(["--add-probe", str(out)]) == 1
    doc = read()
    assert len(trained) == 1 and doc["convergence_probe"]["ok"] and doc["seeds"]["table_stale"]
    assert any(e.startswith("--add-probe: the table could not") for e in doc["errors"])
    # once fixed, run again: no training, the table derived; +0.3 pt from 3 -> 5 epochs is within 0.5: converged,
    # the errors and the cut go
    monkeypatch.setattr(compression, "peer_accuracy", lambda runs, key, paths, params: [89.0] * len(runs))
    trained[:] = []
    assert main(["--add-probe", str(out)]) == 0
    doc = read()
    assert trained == [] and "table_stale" not in doc["seeds"]
    assert doc["convergence_probe"]["converged"] is True and doc["convergence_probe"]["test_gain"] == 0.3
    assert probe_item(doc)["met"] is True and probe_item(doc)["value"] == 0.3
    assert not any("probe" in e for e in doc["errors"])
    assert not any("probe" in c for c in doc["settings"]["cut"]) and doc["errors"] == []
    assert doc["budget"]["parts_s"]["convergence probe (seed 0 trained longer)"] == 60.0
    md = (out / "benchmark.md").read_text()
    assert "-> 5 epochs 90.30 % test (+0.30 pt" in md and "convergence probe added by `--add-probe`" in md
    # a run with its probe: nothing to do, nothing rewritten
    written, trained[:] = (out / "benchmark.json").read_bytes(), []
    assert main(["--add-probe", str(out)]) == 0 and trained == []
    assert (out / "benchmark.json").read_bytes() == written
    # seeds added afterwards keep the probe and do not call it a cut again
    monkeypatch.setattr(more_seeds, "check_recipe", lambda *a, **k: None)
    monkeypatch.setattr(seed_runs, "reference_seed", lambda prepared, where, seed, *a: {
        **read()["reference"][0], "seed": seed})
    monkeypatch.setattr(seed_runs, "pipeline_seed", lambda real, o, b, st, work, ip, seed, say: (
        {"ok": True, "total_wall_s": 7.0, "workdir": str(work / f"seed{seed}")}, {"small_ov_int8": 90.0}))
    assert main(["--add-seeds", str(out), "--seeds", "2"]) == 0
    doc = read()
    assert not any("probe" in c for c in doc["settings"]["cut"]) and probe_item(doc)["met"] is True
    # refused (exit 2), nothing written: other options, a run whose baseline never finished
    capsys.readouterr()
    assert main(["--add-probe", str(out), "--seeds", "3"]) == 2
    assert "--add-probe takes no other option" in capsys.readouterr().err
    doc["cost"]["realistic"]["stages"]["train"]["status"] = "failed"
    doc.pop("convergence_probe")
    (out / "benchmark.json").write_text(json.dumps(doc))
    assert main(["--add-probe", str(out)]) == 2
    assert "train stage did not finish" in capsys.readouterr().err and "convergence_probe" not in read()


def test_convergence_is_checked_on_every_seed(tmp_path):
    """A mean over seeds needs every seed's baseline at its plateau: one unconverged seed fails the target."""
    from edgeopt.paths import Paths

    def train_metrics(root: Path, converged: bool, gain: float) -> Path:
        (root / "metrics").mkdir(parents=True)
        (root / "metrics" / "train.json").write_text(json.dumps({
            "converged": converged, "val_gain_last_20pct": gain, "epochs_run": 40,
            "ran_with": {"params": {"train": {"converged_max_gain": 0.5}}}}))
        return root

    paths = Paths(train_metrics(tmp_path / "seed0", True, 0.2))
    assert compression._training(paths)["val_images"] is None  # no prepared data: not said
    paths.prepared.mkdir(parents=True)
    (paths.prepared / "meta.json").write_text(json.dumps({"counts": {"val": {"cat": 300, "dog": 200}}}))
    assert compression._training(paths)["in_run_converged"] is True
    assert compression._training(paths)["converged"] is None  # the probe not run: not shown
    assert compression._training(paths, [], _probe(80.0, 80.1))["converged"] is True
    late = [train_metrics(tmp_path / "seed1", True, 0.1), train_metrics(tmp_path / "seed2", False, 2.5)]
    training = compression._training(paths, late, _probe(80.0, 80.1))
    assert training["converged"] is False and training["val_gain"] == 2.5
    assert training["val_gain_per_seed"] == [0.2, 0.1, 2.5]
    t = compression.targets(_one_seed_table()["rows"], "small_ov_int8", "gate", _one_seed_table()["references"],
                            training, _one_seed_table()["gate"])  # the gate passed: only convergence fails
    assert t["items"][0]["met"] is False and "gain per seed [0.2, 0.1, 2.5]" in t["items"][0]["detail"]
    assert "one validation image = 0.20 pt (500 images)" in t["items"][0]["detail"]
    assert t["all_met"] is False and "did not converge" in t["note"]


def _probe(first: float, longer: float, limit: float = 0.5) -> dict:
    from benchmarks import convergence_probe

    return convergence_probe.compare({"test_accuracy": first, "val_accuracy": 75.0, "epochs_run": 40},
                                     {"test_accuracy": longer, "val_accuracy": 78.0, "epochs_run": 60}, 1.5, limit)


def test_convergence_probe_flags_a_baseline_that_gains_from_more_epochs():
    """The case the in-run check missed here: seed 0 passed it at 40 epochs, then 60 epochs gave +4.03 pt."""
    from benchmarks.convergence_probe import describe, probe_epochs

    assert [probe_epochs(40, 1.5), probe_epochs(1, 1.5), probe_epochs(3, 1.2), probe_epochs(7, 1.5)] == [60, 2, 4, 11]
    under = _probe(72.17, 76.20)
    assert under["converged"] is False and under["test_gain"] == pytest.approx(4.03) and under["val_gain"] == 3.0
    assert under["epochs"] == [40, 60] and under["ok"] is True
    assert "40 epochs 72.17 % -> 60 epochs 76.20 % test (+4.03 pt" in describe(under)
    assert "NOT converged" in describe(under)
    assert _probe(76.20, 76.60)["converged"] is True and _probe(76.2, 75.0)["converged"] is True  # no gain: plateau
    assert _probe(76.2, 76.8)["converged"] is False and _probe(76.2, 76.8, limit=1.0)["converged"] is True
    missing = _probe(76.2, None)
    assert missing["ok"] is False and missing["converged"] is None


def test_targets_need_the_in_run_check_and_the_probe(tmp_path):
    from edgeopt.paths import Paths

    root = tmp_path
    (root / "metrics").mkdir()
    (root / "metrics" / "train.json").write_text(json.dumps({
        "converged": True, "val_gain_last_20pct": 0.196, "epochs_run": 40,
        "ran_with": {"params": {"train": {"converged_max_gain": 0.5}}}}))
    table = _one_seed_table()

    def check(probe):
        training = compression._training(Paths(root), [], probe)
        return training, compression.targets(table["rows"], "small_ov_int8", "gate", table["references"], training,
                                             table["gate"])

    training, t = check(_probe(72.17, 76.20))  # passed in-run, failed the probe: not converged
    assert training["in_run_converged"] is True and training["converged"] is False
    in_run, probe_item = t["items"][:2]
    assert in_run["name"].startswith("baseline converged (val gain") and in_run["met"] is True
    assert probe_item["name"].startswith("baseline converged (convergence probe")
    assert probe_item["met"] is False and probe_item["value"] == pytest.approx(4.03) and probe_item["limit"] == 0.5
    assert "did not converge" in t["note"] and t["all_met"] is False
    training, t = check(None)  # not run: convergence not shown, the targets are not met
    assert training["converged"] is None and t["items"][1]["met"] is None and t["all_met"] is False
    assert "not shown" in t["note"] and "skipped" in t["items"][1]["detail"]
    training, t = check(_probe(76.20, 76.40))
    assert training["converged"] is True and t["items"][1]["met"] is True and t["note"] is None
    assert t["all_met"] is True  # so above, convergence alone failed the targets
    md = markdown.render({"mode": "test", "compression": {**table, "targets": t, "protocol": {}}})
    assert ("| baseline converged (convergence probe: test gain from training it longer) | +0.20 pt | <= 0.5 pt "
            "| met |") in md


def test_convergence_probe_trains_the_same_baseline_longer_on_the_same_images(tmp_path, monkeypatch):
    from benchmarks import chain as ch
    from benchmarks import convergence_probe
    from benchmarks.more_seeds import probe_shape_problem

    over = {"train.epochs": 40, "seed": 7}
    real = ch.Chain("realistic", tmp_path / "work" / "realistic", over)
    real.setup(REPO / "params.yaml")
    real.runs["train"] = ch.StageRun("train", status="ok")  # this run's own train stage finished
    (real.workdir / "data" / "prepared").mkdir(parents=True)
    (real.workdir / "metrics").mkdir()
    (real.workdir / "metrics" / "train.json").write_text(json.dumps(
        {"test_accuracy": 72.17, "val_accuracy": 75.05, "epochs_run": 40}))
    ran = []

    def fake_run(self, stages, eta=None, total=None, status="ok", write=True):
        ran.append((self.label, stages, self.params.train.epochs, self.params.seed,
                    (self.workdir / "data" / "prepared").resolve()))
        self.runs["train"] = ch.StageRun("train", status=status, wall_s=1.0)
        if write:
            (self.workdir / "metrics").mkdir(exist_ok=True)
            (self.workdir / "metrics" / "train.json").write_text(json.dumps(
                {"test_accuracy": 76.2, "val_accuracy": 78.0, "epochs_run": self.params.train.epochs}))
        return status == "ok"

    def probe(**fake):
        monkeypatch.setattr(ch.Chain, "run", lambda self, *a, **k: fake_run(self, *a, **fake))
        return convergence_probe.run(real, over, REPO / "params.yaml", tmp_path / "work", True, 1.5, lines.append)

    lines = []
    result = probe()
    # the same seed and images (linked), 1.5x the epochs, only the train stage
    assert ran == [("probe", ["train"], 60, 7, (real.workdir / "data" / "prepared").resolve())]
    assert result["converged"] is False and result["epochs"] == [40, 60] and result["wall_s"] >= 0
    assert any("NOT converged" in ln for ln in lines)
    assert probe_shape_problem(json.loads(json.dumps(result))) is None  # what it writes, --add-seeds reads back

    # the first probe's metrics file is still there: a stage that "succeeds" without writing must not reuse it
    stale = probe(write=False)
    assert stale["ok"] is False and stale["converged"] is None and "lack test_accuracy" in stale["reason"]
    failed = probe(status="failed", write=False)
    assert failed["ok"] is False and failed["converged"] is None and "train stage failed" in failed["reason"]

    def broken(self, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ch.Chain, "run", broken)  # whatever goes wrong, the benchmark goes on without a verdict
    crashed = convergence_probe.run(real, over, REPO / "params.yaml", tmp_path / "work", True, 1.5, lines.append)
    assert crashed["ok"] is False and crashed["converged"] is None and "disk full" in crashed["reason"]
    assert probe_shape_problem(json.loads(json.dumps(crashed))) is None

    real.runs["train"].status = "failed"  # a train.json left by an earlier run in the same directory
    assert "did not finish in this run" in probe()["reason"]


@pytest.mark.parametrize("change, message", [
    ({"ok": False}, "yet has a verdict"),  # a failed probe edited to pass
    ({"converged": True}, "does not follow"),  # gain 4.03 > 0.5 edited to "converged"
    ({"test_gain": 0.1}, "does not follow"),
    ({"wall_s": "x"}, "must be numbers or null"),
    ({"limit": float("nan")}, "must be numbers or null"),
    ({"test_accuracy": [72.17]}, "lacks its two runs"),
    ({"epochs": [40, True]}, "lacks its two runs"),
])
def test_a_hand_edited_probe_is_refused(change, message):
    from benchmarks.convergence_probe import shape_problem

    assert shape_problem(_probe(72.17, 76.20)) is None
    assert message in (shape_problem({**_probe(72.17, 76.20), **change}) or "")


def test_jobs_train_side_by_side_then_leave_latency_to_run_alone(tmp_path, monkeypatch):
    """--jobs N: the realistic chain, every peer seed, seeds 1.. and the probe are in flight together (a barrier
    that only concurrent tasks pass), each on its own share of the cores, the probe starts after the realistic
    train stage, bench .. report are left to the caller (on every core), and the doc reads as a one-at-a-time
    run's would (seed order, peers 0..k-1)."""
    import dataclasses
    import threading

    from benchmarks import chain as ch
    from benchmarks import convergence_probe, seed_runs
    from benchmarks.profiles import SMOKE

    monkeypatch.setattr(seed_runs.os, "sched_getaffinity", lambda pid: set(range(14)), raising=False)
    profile = dataclasses.replace(SMOKE, seeds=3)
    real = ch.Chain("realistic", tmp_path / "work" / "realistic", {"train.epochs": 1})
    real.setup(REPO / "params.yaml")
    stages = stage_names(REPO)
    together = threading.Barrier(6, timeout=20)  # realistic + 3 peers + 2 seeds; the probe comes later
    ran, order, held = [], [], {}

    def fake_chain_run(self, names, eta=None, total=None):
        if names[0] == "train":
            held["realistic"] = self.cpus
            together.wait()  # fails (BrokenBarrierError) unless all six run at once
        ran.extend(names)
        for n in names:
            self.runs[n] = ch.StageRun(n, status="ok")
        return True

    def fake_peer(prepared, out, seed, profile, say, doc, cpus=None):
        held[f"peer{seed}"] = cpus
        together.wait()
        order.append(("peer", seed))
        return None if seed == 1 else {"seed": seed}  # seed 1 fails: the peers stop at 0, as one at a time

    def fake_seed(workdir, overrides, base, stages, work, in_process, seed, say, cpus=None):
        held[f"seed{seed}"] = cpus
        together.wait()
        assert in_process is False
        if seed == 1:
            threading.Event().wait(0.3)  # seed 2 finishes first: the doc keeps seed order anyway
        order.append(("seed", seed))
        return {"ok": True, "workdir": str(work / f"seed{seed}")}, {"row": float(seed)}

    def fake_probe(real_, overrides, base, work, in_process, factor, say, cpus=None):
        assert real_.runs["train"].status == "ok" and in_process is False and cpus
        return {"ok": False, "converged": None, "reason": "fake"}

    monkeypatch.setattr(ch.Chain, "run", fake_chain_run)
    monkeypatch.setattr(seed_runs, "reference_seed", fake_peer)
    monkeypatch.setattr(seed_runs, "pipeline_seed", fake_seed)
    monkeypatch.setattr(convergence_probe, "run", fake_probe)
    doc = {"errors": []}
    peers, accs = seed_runs.train_side_by_side(real, stages, None, 7, {}, REPO / "params.yaml", tmp_path / "work",
                                               profile, True, print, doc)
    assert ran == stages[stages.index("train"):stages.index("bench")]  # bench .. report: not here
    assert real.cpus is None  # ... and they get every core
    shares = list(held.values())  # the six that ran at once: 2 of the 14 cores each, none shared
    assert len(shares) == 6 and all(len(c) == 2 for c in shares) and len(set().union(*shares)) == 12
    assert peers == [{"seed": 0}] == doc["reference"]
    assert list(doc["seeds"]["chains"]) == ["1", "2"] and accs == {"row": [1.0, 2.0]}
    assert order.index(("seed", 2)) < order.index(("seed", 1))
    assert doc["convergence_probe"]["reason"] == "fake" and doc["errors"] == ["convergence probe: fake"]

    doc = {"errors": []}  # no probe asked for: none run
    seed_runs.train_side_by_side(real, stages, None, 7, {}, REPO / "params.yaml", tmp_path / "work", profile,
                                 False, print, doc)
    assert "convergence_probe" not in doc


def test_jobs_fewer_than_the_work_queue_it_and_a_failing_job_leaves_the_rest(tmp_path, monkeypatch):
    """--jobs 2 for 6 jobs: they queue; a job that raises is an error in the doc, not a lost run."""
    import dataclasses

    from benchmarks import chain as ch
    from benchmarks import convergence_probe, seed_runs
    from benchmarks.profiles import SMOKE

    real = ch.Chain("realistic", tmp_path / "work" / "realistic", {"train.epochs": 1})
    real.setup(REPO / "params.yaml")
    stages = stage_names(REPO)

    def fake_chain_run(self, names, eta=None, total=None):
        for n in names:
            self.runs[n] = ch.StageRun(n, status="ok")
        return True

    def fake_seed(workdir, overrides, base, stages, work, in_process, seed, say, cpus=None):
        if seed == 2:
            raise RuntimeError("boom")
        return {"ok": True, "workdir": str(work / f"seed{seed}")}, {"row": 1.0}

    monkeypatch.setattr(ch.Chain, "run", fake_chain_run)
    monkeypatch.setattr(seed_runs, "reference_seed", lambda *a, cpus=None: {"seed": a[2]})
    monkeypatch.setattr(seed_runs, "pipeline_seed", fake_seed)
    monkeypatch.setattr(convergence_probe, "run", lambda *a, cpus=None: {"ok": True, "converged": True})
    doc = {"errors": []}
    peers, accs = seed_runs.train_side_by_side(real, stages, None, 2, {}, REPO / "params.yaml", tmp_path / "work",
                                               dataclasses.replace(SMOKE, seeds=3), True, print, doc)
    assert [p["seed"] for p in peers] == [0, 1, 2] and doc["convergence_probe"]["converged"] is True
    assert doc["errors"] == ["pipeline seed 2: RuntimeError: boom"]
    assert doc["seeds"]["chains"]["2"] == {"ok": False, "workdir": str(tmp_path / "work" / "seed2")}
    assert accs == {"row": [1.0, None]}


def test_core_shares_split_the_cores_a_job_may_use(monkeypatch):
    from benchmarks import seed_runs

    monkeypatch.setattr(seed_runs.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    shares = seed_runs.core_shares(7)
    assert [len(s) for s in shares] == [3, 3, 2, 2, 2, 2, 2] and set().union(*shares) == set(range(16))
    monkeypatch.setattr(seed_runs.os, "sched_getaffinity", lambda pid: {4, 9}, raising=False)
    assert seed_runs.core_shares(3) == [{4}, {9}, {4}]  # more jobs than cores: reused round-robin


@pytest.mark.skipif(len(__import__("os").sched_getaffinity(0)) < 2, reason="pinning to one of one core shows nothing")
def test_a_stage_process_runs_on_its_share_and_sizes_torch_by_it(tmp_path, monkeypatch):
    """The chain pins its stage process to `cpus`; edgeopt's training sizes torch's threads by the cores it may
    use (a container's cpuset, a --jobs share), not by every core of the machine."""
    import os

    import torch

    from benchmarks import chain as ch
    from edgeopt import training

    core = min(os.sched_getaffinity(0))
    monkeypatch.setattr(ch, "CLI_WITH_HWM", "import os, time; time.sleep(0.5); "
                        "print(sorted(os.sched_getaffinity(0)), os.environ.get('OMP_NUM_THREADS'))")
    c = ch.Chain("pinned", tmp_path, {}, cpus=frozenset({core}))
    (tmp_path / "logs").mkdir()
    run = ch.StageRun("train")
    c._run_subprocess(run)
    assert run.exit_code == 0 and (tmp_path / "logs" / "train.log").read_text().strip() == f"[{core}] 1"

    before = torch.get_num_threads()
    monkeypatch.setattr(training, "usable_cores", lambda: 1)
    try:
        training.set_seed(0)
        assert torch.get_num_threads() == 1
        training.set_seed(0, threads=2)  # train.threads, when set, still wins
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("argv", [["--smoke", "--jobs", "2"], ["--quick", "--in-process", "--jobs", "3"]])
def test_jobs_refuse_in_process_stages(tmp_path, capsys, argv):
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    assert "--jobs runs stages side by side in their own processes" in capsys.readouterr().err


def test_an_interrupt_stops_every_job_process_and_starts_no_more(monkeypatch):
    import subprocess
    import sys

    from benchmarks import chain as ch

    monkeypatch.setattr(ch, "_STOPPING", __import__("threading").Event())  # this test's own flag
    procs = [ch.start([sys.executable, "-c", "import time; time.sleep(60)"], None) for _ in range(2)]
    ch.stop_all()
    assert all(p.wait(timeout=10) != 0 for p in procs)  # killed, not left to run out
    for p in procs:
        ch.finished(p)
    with pytest.raises(KeyboardInterrupt):
        ch.start([sys.executable, "-c", "pass"], None, stdout=subprocess.DEVNULL)
