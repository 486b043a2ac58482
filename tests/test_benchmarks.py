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
        "baseline converged", "baseline at least as accurate as the bare script", "accuracy drop vs the baseline",
        "MACs vs the baseline", "size vs FP32 ONNX baseline", "p50 latency vs FP32 PyTorch eager",
        "p50 latency vs plain NNCF INT8 of the unpruned baseline",
        "more accurate than the bare script + prune + KD at equal or fewer MACs"]
    converged, *measured = t["items"]
    assert all(it["value"] is not None and it["met"] in (True, False) for it in measured)
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

    from benchmarks.__main__ import budget, cuts
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
    md = markdown.render({**doc, "reference": [], "budget": b, "settings": {**doc["settings"], "cut": left}})
    assert "time goal **NOT MET**: 3,000 s of 2,400 s" in md and "left out of this run: 1 training seed(s)" in md


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
    converged = {"converged": True, "val_gain": 0.1, "max_gain": 0.5, "epochs": 30}
    t = compression.targets(rows, "small_ov_int8", "gate", refs, converged)
    assert [it["met"] for it in t["items"]] == [True] * 8 and t["all_met"]
    rows[-1]["latency"]["1_thread"] = {"p50_ms": 0.5, "p90_ms": 0.6}  # 20x PyTorch, 2x plain INT8: too slow
    rows[-2]["accuracy"] = 89.8  # and the peer's pruned model now beats it
    t = compression.targets(rows, "small_ov_int8", "gate", refs, converged)
    assert [it["met"] for it in t["items"]] == [True, True, True, True, True, False, False, False]
    unconverged = compression.targets(rows, "small_ov_int8", "gate", refs, {**converged, "val_gain": 2.0,
                                                                              "converged": False})
    assert unconverged["items"][0]["met"] is False and "did not converge" in unconverged["note"]
    md = markdown.render({"mode": "test", "compression": {"rows": rows, "targets": t, "protocol": {},
                                                          "selected": "small_ov_int8"}})
    assert "**NOT MET**" in md and "| small_ov_int8 |" in md and "| peer_bare_pruned_kd |" in md


def test_etas_reuse_only_an_earlier_run_with_the_same_overrides(tmp_path):
    from benchmarks.chain import previous_timings

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
