"""The whole-chain search (flows/search.py): params.yaml `search` section, the space as Optuna distributions and
overrides, feasibility, evaluate.split, the study's resume logic (fast); the search itself on digits through
Prefect + a local Dask cluster, a pruned trial, the test split touched only for the winner, and a resume after
the search process is killed (slow: shared stages through DVC, then trials)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgeopt.params import Params, ParamsError, load_params
from tests.test_flows import artifacts_of, prefect_home  # noqa: F401  (prefect_home: a fixture)

REPO = Path(__file__).resolve().parents[1]
# the digits project: 100 images per class, a 4-epoch baseline (~93 % test); one epoch per trial stage
PROJECT = ["data.max_images_per_class=100", "train.epochs=4", "distill.epochs=1", "cluster.finetune_epochs=0",
           "quantize.calibration_size=64", "sensitivity.max_samples=64", "export.parity_samples=64",
           "bench.runs=20", "bench.warmup=2", "bench.rounds=1", "bench.pytorch_reference=false",
           "gate.max_accuracy_drop=100", "gate.max_latency_ms=1000"]
# a small space (ratio, importance, fine-tuning epochs, mode), a MAC budget the unpruned teacher (2.4 M) misses
SEARCH = ["search.space={prune: {ratio: {low: 0.2, high: 0.8, step: 0.1}, importance: [l1, random]}, "
          "finetune: {epochs: {low: 1, high: 2}}, quantize: {mode: [ov_int8, ort_int8_static]}}",
          "search.max_macs=1500000", "search.startup_trials=1", "search.seed=3"]
GOOD = {"prune.ratio": 0.3, "prune.importance": "l1", "finetune.epochs": 2, "quantize.mode": "ov_int8"}
BAD = {"prune.ratio": 0.8, "prune.importance": "random", "finetune.epochs": 1, "quantize.mode": "ov_int8"}


# --- params: the search section and evaluate.split -----------------------------------------------------------

def test_search_section_defaults_match_params_yaml_and_bad_spaces_name_the_knob():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    params = load_params(REPO / "params.yaml")
    assert params.search == Params().search and params.evaluate.split == Params().evaluate.split == "test"
    assert raw["search"]["space"]["prune"]["importance"] == Params().search.space["prune"]["importance"]
    for override, message in [
            ("search.space.prune.ratoi={low: 0.1, high: 0.5}", "prune has no key 'ratoi'"),
            ("search.space.distill={student_arch: [x]}", ""),  # a valid key; its values are checked by the flow
            ("search.space.model={arch: [resnet18]}", "model: not searchable: the search's shared stages"),
            ("search.space.train={epochs: {low: 1, high: 3}}", "train: not searchable"),
            ("search.space.gate={max_latency_ms: [1, 2]}", "gate: not searchable"),
            ("search.space.evaluate={split: [test]}", "evaluate: not searchable"),
            ("search.space.foo={x: [1]}", "foo: not a params section; search the stages each trial runs: prune"),
            ("search.space.finetune.epochs={low: 1.5, high: 3}", "whole number"),
            ("search.space.prune.ratio={low: 0.9, high: 0.1}", "low (0.9) must be <= high (0.1)"),
            ("search.space.prune.protect={low: 0, high: 1}", "a range needs a numeric knob"),
            ("search.space.quantize.mode={low: 0, high: 1}", "a list of quantization modes"),
            ("search.space.prune.importance=[]", "non-empty [list] of choices"),
            ("search.space.search={trials: [1]}", "search: not searchable"),
            ("search.trial_overrides=[bench.runs]", "write each as key=value"),
            ("evaluate.split=train", "evaluate.split")]:
        if not message:
            load_params(REPO / "params.yaml", [override])
            continue
        with pytest.raises(ParamsError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
            load_params(REPO / "params.yaml", [override])


def test_space_becomes_distributions_and_overrides():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from edgeopt.search_space import corner_overrides, distributions, trial_overrides, value_text

    params = load_params(REPO / "params.yaml")
    dists = distributions(params)
    assert dists["prune.ratio"] == FloatDistribution(0.2, 0.8, step=0.05)
    assert dists["finetune.epochs"] == IntDistribution(2, 8)
    assert dists["quantize.keep_sensitive"] == IntDistribution(0, 2)
    assert dists["quantize.mode"] == CategoricalDistribution(["ov_int8", "ort_int8_static"])
    assert trial_overrides({"prune.ratio": 0.30000000000000004, "quantize.mode": "ov_int8",
                            "prune.importance": "l1"}) == [
        "prune.ratio=0.3", "quantize.modes=[ov_int8]", "distill.quantize_modes=[ov_int8]", "prune.importance=l1"]
    assert value_text("true") == "'true'" and value_text(True) == "true"  # a string stays a string
    corners = corner_overrides(params)
    assert corners["search.space finetune.epochs=8"] == ["finetune.epochs=8"]
    assert corners["search.space quantize.mode=ort_int8_static"] == ["quantize.modes=[ort_int8_static]",
                                                                     "distill.quantize_modes=[ort_int8_static]"]
    assert len(corners) == sum(2 if isinstance(d, (FloatDistribution, IntDistribution)) else len(d.choices)
                               for d in dists.values())


def _row(name, acc, macs, lat, size, baseline=False, verdict="pass"):
    return {"name": name, "runtime": "openvino", "precision": "int8", "baseline": baseline, "accuracy": acc,
            "latency_ms": lat, "size_bytes": size, "metrics": {"macs": macs}, "latency": {"p50_ms": lat},
            "verdict": verdict, "reasons": [] if verdict != "rejected" else ["export: parity check failed"]}


def test_feasibility_uses_the_budgets_and_never_picks_a_baseline():
    from edgeopt.search_space import assess

    budgets = {"latency_ms": 1.0, "size_bytes": 100_000, "macs": 1_000_000}
    rows = [_row("baseline_fp32_ov", 99.0, 900_000, 0.1, 10_000, baseline=True),  # feasible, best: not the trial's
            _row("finetuned_fp32_ov", 97.0, 1_200_000, 0.2, 50_000),     # over the MAC budget
            _row("clustered_ov_int8", 95.0, 800_000, 0.3, 20_000),
            _row("student_ov_int8", 95.0, 500_000, 0.3, 20_000),         # as accurate, fewer MACs: the pick
            _row("student_fp32_ov", 96.0, 500_000, 1.5, 20_000),         # too slow
            _row("broken_ort_int8", None, None, None, None, verdict="rejected")]
    v = assess(rows, budgets)
    by = {c["name"]: c for c in v["candidates"]}
    assert v["feasible"] and v["pick"] == "student_ov_int8" and v["objective"] == 95.0
    assert v["best_val_accuracy"] == 97.0 and v["violation"] == pytest.approx(-0.5)
    assert by["finetuned_fp32_ov"]["reasons"] == ["MACs 1,200,000 > budget 1,000,000"]
    assert by["student_fp32_ov"]["reasons"] == ["latency 1.500 ms > budget 1.000 ms"]
    assert by["baseline_fp32_ov"]["feasible"] and not by["broken_ort_int8"]["measured"]
    tight = assess(rows, {**budgets, "macs": 100_000})  # nothing fits: infeasible, by how much the closest misses
    assert not tight["feasible"] and tight["pick"] is None and tight["objective"] is None
    assert tight["violation"] == pytest.approx(4.0)  # the 500,000-MAC students are 5x the budget
    assert tight["infeasible_reason"].startswith("no candidate within the budgets: finetuned_fp32_ov: MACs")
    assert assess(rows, {**budgets, "macs": 0})["pick"] == "finetuned_fp32_ov"  # 0 = no MAC budget


def test_evaluate_scores_the_split_it_is_given(tiny_project):
    from edgeopt.paths import Paths
    from stages import evaluate, export

    paths = Paths(tiny_project)
    export.run(load_params(tiny_project / "params.yaml", ["export.parity_samples=64"]), paths)
    on_val = evaluate.run(load_params(tiny_project / "params.yaml", ["evaluate.split=val"]), paths)
    on_test = evaluate.run(load_params(tiny_project / "params.yaml"), paths)
    assert on_val["split"] == "val" and on_val["images"] == len(np.load(paths.prepared / "val" / "labels.npy"))
    assert on_test["split"] == "test" and on_test["images"] == len(np.load(paths.prepared / "test" / "labels.npy"))
    assert on_val["images"] != on_test["images"]


def _record(n, state, cands=(), objective=None, pick=None, **extra):
    return {"trial": n, "state": state, "feasible": objective is not None, "objective": objective, "pick": pick,
            "params": {"prune.ratio": n / 10}, "overrides": [f"prune.ratio={n / 10}"], "workdir": f"w{n}",
            "candidates": [{"name": c, "baseline": c.startswith("baseline"), "measured": True, "feasible": f,
                            "val_accuracy": a, "macs": m, "latency_ms": t, "size_bytes": 1000, "runtime": "openvino",
                            "precision": "int8"} for c, a, m, t, f in cands],
            "intermediate": extra.pop("intermediate", {}), "duplicate_of": extra.pop("duplicate_of", None), **extra}


def test_the_best_trial_the_pareto_rows_and_the_history_plot_come_from_the_records(tmp_path):
    from flows.search_report import best_of, best_params_text, candidate_rows, history_png

    base = ("baseline_fp32_ov", 99.0, 2_000_000, 0.1, False)
    records = [_record(0, "complete", [base, ("student_ov_int8", 95.0, 600_000, 0.2, True)], 95.0, "student_ov_int8"),
               _record(1, "complete", [base, ("student_ov_int8", 95.0, 400_000, 0.3, True)], 95.0, "student_ov_int8"),
               _record(2, "complete", [base, ("finetuned_fp32_ov", 97.0, 1_800_000, 0.2, False)]),  # infeasible
               _record(3, "pruned", intermediate={"0": 40.0}),
               _record(4, "complete", [base, ("student_ov_int8", 95.0, 400_000, 0.3, True)], 95.0,
                       "student_ov_int8", duplicate_of=1)]
    best = best_of(records)  # equal accuracy: fewer MACs wins, then the earlier trial
    assert (best["trial"], best["macs"], best["overrides"]) == (1, 400_000, ["prune.ratio=0.1"])
    rows = candidate_rows(records, best)
    assert [r["name"] for r in rows] == ["trial-0/student_ov_int8", "trial-1/student_ov_int8",
                                         "trial-2/finetuned_fp32_ov"]  # no baseline, pruned trial or duplicate
    assert [r["selected"] for r in rows] == [False, True, False] and [r["feasible"] for r in rows] == [True, True, False]
    assert history_png(records).startswith(b"\x89PNG")
    assert best_of([records[2], records[3]]) is None
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    (tmp_path / "other.yaml").write_text(yaml.safe_dump({**yaml.safe_load((REPO / "params.yaml").read_text()),
                                                         "seed": 7}))
    text = best_params_text(tmp_path, "other.yaml", ["prune.ratio=0.35"])
    assert "# global seed" in text and yaml.safe_load(text)["seed"] == 7 and yaml.safe_load(text)["prune"]["ratio"] == 0.35


# --- the study: persistence, resume, duplicates (no Prefect) -------------------------------------------------

def test_a_resumed_study_reruns_only_interrupted_trials_and_refuses_other_terms(tmp_path):
    from optuna.trial import TrialState

    from edgeopt.search_space import distributions
    from flows import study as st
    from flows.search import study_terms

    params = load_params(REPO / "params.yaml", ["search.startup_trials=2"])
    dists = distributions(params)
    study = st.open_study(tmp_path, "s", params.search, study_terms(params, ["bench.runs=5"]))
    done = study.ask(dists)
    done.set_user_attr("result", {"violation": -0.1})
    study.tell(done, 90.0)
    lost = study.ask(dists)  # RUNNING when the search is killed
    assert lost.params != done.params

    again = st.open_study(tmp_path, "s", params.search, study_terms(params, ["bench.runs=5"]))  # a new process
    assert st.recover_interrupted(again) == [lost.number]
    trials = {t.number: t for t in again.get_trials()}
    assert trials[done.number].state == TrialState.COMPLETE and trials[done.number].value == 90.0
    assert trials[lost.number].state == TrialState.FAIL and trials[lost.number].user_attrs["interrupted"]
    assert [t.number for t in st.finished(again)] == [done.number]  # the interrupted one does not count
    rerun = again.ask(dists)
    assert rerun.params == lost.params and again.trials[rerun.number].user_attrs["rerun_of"] == lost.number
    fresh = again.ask(dists)  # the sampler was seeded past the trials already drawn: no repeat of trial 0
    assert fresh.params != done.params
    assert st.twin(again, dict(done.params)).number == done.number and st.twin(again, fresh.params) is None
    other = load_params(REPO / "params.yaml", ["search.space.prune.ratio={low: 0.1, high: 0.2}"])
    with pytest.raises(ParamsError, match="was run with other search space "):
        st.open_study(tmp_path, "s", other.search, study_terms(other, ["bench.runs=5"]))
    tighter = load_params(REPO / "params.yaml", ["search.startup_trials=2", "gate.max_latency_ms=0.5"])
    with pytest.raises(ParamsError, match=r"was run with other budgets \(budgets: \{'latency_ms': 5"):
        st.open_study(tmp_path, "s", tighter.search, study_terms(tighter, ["bench.runs=5"]))
    with pytest.raises(ParamsError, match="was run with other params overrides"):
        st.open_study(tmp_path, "s", params.search, study_terms(params, ["bench.runs=7"]))


def test_trials_read_a_snapshot_that_a_release_rerunning_train_does_not_change(tmp_path):
    from flows.scratch import SHARED_FILES, _link_tree, link_shared_inputs

    root = tmp_path / "proj"
    for rel, content in (("data/prepared/train/images.npy", b"old pixels"), ("models/baseline.pt", b"old model"),
                         ("dvc.yaml", b"stages: {}")):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(content)
    snapshot = tmp_path / "sweeps" / "s" / "shared"
    for rel in SHARED_FILES:
        _link_tree(root / rel, snapshot / rel)
    work = Path(link_shared_inputs.fn(str(snapshot), str(tmp_path / "sweeps" / "s" / "trial-0")))
    for rel in ("data/prepared/train/images.npy", "models/baseline.pt"):  # DVC replaces outputs, never edits them
        (root / (rel + ".new")).write_bytes(b"new")
        os.replace(root / (rel + ".new"), root / rel)
    assert (work / "models" / "baseline.pt").read_bytes() == b"old model"
    assert (work / "data" / "prepared" / "train" / "images.npy").read_bytes() == b"old pixels"


# --- the search on digits (Prefect + a local Dask cluster) --------------------------------------------------

@pytest.fixture(scope="module")
def search_project(tmp_path_factory) -> Path:
    """A fresh clone (git + DVC) of the project with PROJECT params, committed."""
    from edgeopt.params import render_params_file
    from tests.test_dvc_pipeline import fresh_clone

    root = fresh_clone(tmp_path_factory.mktemp("search") / "proj")
    (root / "params.yaml").write_text(render_params_file((REPO / "params.yaml").read_text(), PROJECT))  # commented
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "search params"],
                   cwd=root, check=True)
    return root


@pytest.fixture(scope="module")
def searched(prefect_home, search_project):  # noqa: F811
    """3 trials, one at a time: GOOD first, BAD second (pruned: its fine-tuned accuracy is below GOOD's), one
    sampled by TPE."""
    from flows.search import search

    state = search(root=str(search_project), overrides=SEARCH, name="t", trials=3, workers=1,
                   enqueue=[GOOD, BAD], return_state=True)
    return state, json.loads((search_project / "sweeps" / "t" / "search.json").read_text())


@pytest.mark.slow
def test_search_finds_a_feasible_config_and_writes_params_that_release_it(searched, search_project):
    state, doc = searched
    assert state.is_completed(), state.message
    assert doc == state.result() and doc["status"] == "found"
    trials = {r["trial"]: r for r in doc["trials"]}
    assert len(trials) == 3 and trials[0]["params"] == GOOD and trials[1]["params"] == BAD
    best = doc["best"]
    assert best["macs"] <= 1_500_000 and best["val_accuracy"] > 80
    complete = [r for r in trials.values() if r["state"] == "complete"]
    assert best["val_accuracy"] == max(r["objective"] for r in complete if r["feasible"])
    teacher = next(c for c in trials[0]["candidates"] if c["name"] == "baseline_fp32_ov")
    assert teacher["macs"] > 1_500_000 and teacher["baseline"]  # the project's baseline: over the budget anyway
    for r in complete:  # every candidate's verdict agrees with the budgets
        for c in r["candidates"]:
            if c["measured"]:
                assert c["feasible"] == (c["macs"] <= 1_500_000 and c["latency_ms"] <= 1000
                                         and c["size_bytes"] <= load_params(search_project / "params.yaml").gate.max_size_bytes)
    # best_params.yaml: params.yaml with the search's overrides and the winner's values, comments kept
    text = Path(doc["best_params"]).read_text()
    released = load_params(Path(doc["best_params"]))
    assert released.search.max_macs == 1_500_000 and released.evaluate.split == "test"
    for key, value in best["params"].items():
        if key == "quantize.mode":
            assert released.quantize.modes == released.distill.quantize_modes == [value]
        else:
            section, name = key.split(".")
            assert getattr(getattr(released, section), name) == value
    assert "# global seed" in text  # comments kept
    assert released.bench.runs == 20 and released.distill.also_without_kd  # trial speed-ups not written
    assert doc["release"]["cp"].startswith("cp sweeps/t/best_params.yaml params.yaml")
    assert "-S search.max_macs=1500000" in doc["release"]["dvc_exp_run"]
    assert doc["release"]["benchmark"] == "python -m benchmarks --search-result sweeps/t/search.json"
    # the Pareto fronts over all trials' feasible candidates
    feasible = {f"trial-{r['trial']}/{c['name']}": c for r in complete for c in r["candidates"]
                if c["feasible"] and not c["baseline"]}
    for key in ("macs", "latency_ms"):
        front = doc["pareto_front"][key]
        assert front and set(front) <= set(feasible)
        for name in front:
            a = feasible[name]
            assert not any(o[key] <= a[key] and o["val_accuracy"] >= a["val_accuracy"]
                           and (o[key] < a[key] or o["val_accuracy"] > a["val_accuracy"]) for o in feasible.values())
    arts = artifacts_of(state.state_details.flow_run_id)
    table = json.loads(arts["edge-search"].data)
    assert [r["trial"] for r in table] == [0, 1, 2] and [r["trial"] for r in table if r["best"]] == [best["trial"]]
    summary = arts["edge-search-summary"].data
    assert summary.count("data:image/png;base64,") == 3 and "dvc exp run" in summary


@pytest.mark.slow
def test_a_hopeless_trial_is_pruned_and_recorded(searched):
    _, doc = searched
    bad = doc["trials"][1]
    assert bad["state"] == "pruned" and bad["pruned_after"] == "finetune" and bad["pruned_step"] == 0
    assert bad["intermediate"]["0"] < doc["trials"][0]["intermediate"]["0"]
    assert not Path(bad["workdir"], "models", "exported").exists()  # stopped before export
    assert doc["counts"]["pruned"] == sum(r["state"] == "pruned" for r in doc["trials"]) >= 1


@pytest.mark.slow
def test_only_the_winner_touches_the_test_split(searched, search_project):
    _, doc = searched
    winner = doc["best"]["trial"]
    for r in doc["trials"]:
        evaluated = Path(r["workdir"], "metrics", "evaluate.json")
        if r["state"] != "complete":
            continue
        split = json.loads(evaluated.read_text())["split"]
        assert split == ("test" if r["trial"] == winner else "val"), r["trial"]
        assert Path(r["workdir"], "reports", "gate.json").exists() == (r["trial"] == winner)
    check = doc["winner_check"]
    n_test = len(np.load(search_project / "data" / "prepared" / "test" / "labels.npy"))
    assert check["split"] == "test" and check["images"] == n_test and check["gate_status"] == "pass"
    gate = json.loads(Path(check["gate_report"]).read_text())
    assert gate["evaluation"] == {"split": "test", "images": n_test} and gate["selected"] == check["gate_selected"]
    assert check["search_pick_test_accuracy"] > 80


def _trials(study_dir: Path) -> list:
    from flows.study import storage

    import optuna

    try:
        return optuna.load_study(study_name="r", storage=storage(study_dir)).get_trials(deepcopy=False)
    except KeyError:
        return []


@pytest.mark.slow
@pytest.mark.extended  # the resume logic: test_a_resumed_study_reruns_only_interrupted_trials_and_refuses_other_terms, in CI
def test_a_killed_search_resumes_without_rerunning_completed_trials(prefect_home, search_project):  # noqa: F811
    from optuna.trial import TrialState
    from prefect.settings import PREFECT_API_URL

    from flows.search import search

    cmd = [sys.executable, "-m", "flows.search", "--root", str(search_project), "--name", "r", "--trials", "3",
           "--workers", "1", *(a for o in SEARCH for a in ("--set", o))]
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_HOME": str(prefect_home),
           "PYTHONPATH": str(REPO), "EDGEOPT_NO_PROGRESS": "1"}
    log = open(search_project / "killed-search.log", "wb")
    proc = subprocess.Popen(cmd, cwd=search_project, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    study_dir = search_project / "sweeps" / "r" / "study"
    deadline = time.monotonic() + 900
    try:  # kill the whole process group (flow and Dask workers) once a trial completed and the next one runs
        while time.monotonic() < deadline and proc.poll() is None:
            states = [t.state for t in _trials(study_dir)]
            if TrialState.COMPLETE in states and TrialState.RUNNING in states:
                break
            time.sleep(1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        log.close()
    before = {t.number: t for t in _trials(study_dir)}
    done = {n: t for n, t in before.items() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}
    running = [n for n, t in before.items() if t.state == TrialState.RUNNING]
    assert done and len(running) == 1 and len(done) + 1 == len(before), \
        (search_project / "killed-search.log").read_text()[-3000:]
    winner_check = {"metrics/evaluate.json", "metrics/bench.json", "metrics/gate.json", "reports/gate.json"}
    kept_files = {p: p.stat().st_mtime_ns for t in done.values() for p in Path(t.user_attrs["workdir"]).rglob("*")
                  if p.is_file() and p.relative_to(t.user_attrs["workdir"]).as_posix() not in winner_check}

    state = search(root=str(search_project), overrides=SEARCH, name="r", trials=3, workers=1, return_state=True)
    assert state.is_completed() or state.result(raise_on_failure=False)["status"] != "none_feasible", state.message
    after = {t.number: t for t in _trials(study_dir)}
    for n, t in done.items():  # kept as they were
        assert (after[n].state, after[n].value, after[n].datetime_complete) == (t.state, t.value, t.datetime_complete)
    lost = after[running[0]]
    assert lost.state == TrialState.FAIL and lost.user_attrs["interrupted"]
    rerun = [t for t in after.values() if t.user_attrs.get("rerun_of") == running[0]]
    assert len(rerun) == 1 and rerun[0].params == lost.params and rerun[0].state != TrialState.RUNNING
    counted = [t for t in after.values() if not t.user_attrs.get("interrupted")]
    assert len(counted) == 3 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in counted)
    ran = [tuple(sorted(t.params.items())) for t in counted if "duplicate_of" not in t.user_attrs]
    assert len(set(ran)) == len(ran)  # no point run twice (a point TPE proposes again takes the earlier outcome)
    for t in counted:
        if "duplicate_of" in t.user_attrs:
            assert t.params == after[t.user_attrs["duplicate_of"]].params
    assert {p: p.stat().st_mtime_ns for p in kept_files} == kept_files  # the finished trials were not run again
    doc = json.loads((search_project / "sweeps" / "r" / "search.json").read_text())
    assert [r["state"] for r in doc["trials"]].count("interrupted") == doc["counts"]["interrupted"] == 1
    assert doc["trials"][running[0]]["state"] == "interrupted"
