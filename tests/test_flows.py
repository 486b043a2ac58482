"""Prefect flows: DAG and cache keys from dvc.yaml, retries, failure states, UI artifacts, real runs.

The flow tests run against Prefect's test harness (a temporary local server and database, PREFECT_HOME in a
temp dir); nothing reaches ~/.prefect or the network.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FAST = ["data.max_images_per_class=60", "train.epochs=1", "finetune.epochs=1", "distill.epochs=1",
        "distill.also_without_kd=false", "distill.quantize_modes=[]", "cluster.finetune_epochs=0",
        "quantize.modes=[ov_int8, ort_int8_dynamic]", "quantize.calibration_size=64",
        "sensitivity.max_samples=64", "export.parity_samples=64", "bench.runs=10", "bench.warmup=2",
        "bench.pytorch_reference=false", "gate.max_accuracy_drop=100", "gate.max_latency_ms=1000"]


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory):
    """PREFECT_HOME in a temp dir (also for worker processes) and a temporary Prefect server + database."""
    from prefect.settings import PREFECT_HOME, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect_home")
    with pytest.MonkeyPatch.context() as mp, temporary_settings({PREFECT_HOME: str(home)}):
        mp.setenv("PREFECT_HOME", str(home))
        with prefect_test_harness(server_startup_timeout=240):
            yield home


def task_states(flow_run_id) -> dict[str, str]:
    """Task-run name -> state name, as the server recorded them."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    import time

    deadline = time.monotonic() + 60  # the server records task-run states asynchronously (slower under load)
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            if all(r.state is not None for r in runs) or time.monotonic() > deadline:
                break
            time.sleep(1)
    return {r.name: r.state.name if r.state else "<no state>" for r in runs}


def artifacts_of(flow_run_id) -> dict[str, object]:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key: a for a in arts}


# --- the graph and the cache keys, from dvc.yaml ----------------------------------------------------------
def test_stage_graph_follows_dvc_yaml():
    from flows.pipeline import closure, execution_order, load_pipeline, upstream

    specs = load_pipeline(REPO)
    order = execution_order(specs)
    assert len(order) == 15 and order[:3] == ["prepare", "validate", "train"] and order[-1] == "report"
    ups = upstream(specs)
    writers = lambda path: {n for n, sp in specs.items() if path in sp.outs}  # noqa: E731
    for name, spec in specs.items():  # a stage waits for exactly the stages writing (into) one of its deps
        expected = set().union(*(writers(d) | {n for n, sp in specs.items() for o in sp.outs
                                               if d.startswith(o + "/") or o.startswith(d + "/")}
                                 for d in spec.deps)) - {name}
        assert ups[name] == expected, name
        assert all(order.index(u) < order.index(name) for u in ups[name])
    assert "finetune" in ups["distill"] and "cluster" not in ups["distill"]  # distill runs next to cluster
    assert "distill" not in ups["cluster"] and "distill" not in ups["sensitivity"]
    assert "export" in ups["evaluate"] and "export" in ups["bench"]  # evaluate and bench side by side
    assert "bench" not in ups["evaluate"] and "evaluate" not in ups["bench"]
    assert {"evaluate", "bench"} <= ups["gate"] and "gate" in ups["promote"]
    assert "prepare" in ups["promote"]  # data/prepared/meta.json lies in prepare's out data/prepared
    assert closure(specs, ["validate"]) == ["prepare", "validate"]
    assert closure(specs, ["gate"], downstream_of=["train"]) == [
        "prune", "finetune", "cluster", "distill", "sensitivity", "quantize", "export", "evaluate", "bench", "gate"]


def test_cache_key_hits_only_when_inputs_and_outs_are_unchanged(tiny_project):
    from flows.caching import StageInputsAndOutputs, stamp_path, write_stamp
    from flows.pipeline import load_pipeline, project_params

    root = tiny_project
    policy = StageInputsAndOutputs()
    params = project_params("params.yaml", [], root)
    key = lambda p: policy.compute_key(None, {"stage": "prune", "params": p, "root": str(root)}, {})  # noqa: E731
    first = key(params)
    assert first.startswith("prune-") and key(params) != first  # no stamp: every run is a miss
    (root / "models" / "pruned.pt").write_bytes(b"pruned")
    (root / "reports").mkdir(exist_ok=True)
    (root / "reports" / "prune_layers.md").write_text("layers")
    (root / "metrics").mkdir(exist_ok=True)
    (root / "metrics" / "prune.json").write_text("{}")
    write_stamp(root, "prune", first)
    assert json.loads(stamp_path(root, "prune").read_text())["key"] == first
    assert key(params) == first                                                     # hit
    assert key(project_params("params.yaml", ["train.epochs=3"], root)) == first   # not a prune param
    assert key(project_params("params.yaml", ["prune.ratio=0.3"], root)) != first  # its params section
    (root / "models" / "baseline.pt").write_bytes(b"other baseline")               # a dep changed
    assert key(params) != first
    second = key(params)
    write_stamp(root, "prune", second)                                              # as after a rerun
    assert key(params) == second                                                    # hit again
    shutil.copy(root / "models" / "pruned.pt", root / "pruned.bak")
    (root / "models" / "pruned.pt").write_bytes(b"edited by hand")                 # an out changed
    assert key(params) != second
    (root / "pruned.bak").replace(root / "models" / "pruned.pt")
    assert key(params) == second
    (root / "reports" / "prune_layers.md").unlink()                                 # an out missing
    assert key(params) != second
    assert len(load_pipeline(root)["prune"].outs) == 3


def test_only_transient_io_errors_are_retried():
    from prefect.states import Failed

    from edgeopt.errors import GateNonePassError
    from edgeopt.params import ParamsError
    from flows.tasks import is_transient_io_error

    retry = lambda exc: is_transient_io_error(None, None, Failed(data=exc))  # noqa: E731
    assert retry(OSError(5, "Input/output error")) and retry(TimeoutError()) and retry(ConnectionResetError())
    assert not retry(FileNotFoundError("models/baseline.pt"))
    assert not retry(ParamsError("train.epochs: bad")) and not retry(GateNonePassError("none"))
    assert not retry(ValueError("x"))


# --- the flow with fake stages (in-process threads, so monkeypatching reaches them) ------------------------
class FakeStages:
    """Stand-ins for stages/<name>.py:run that write the outs dvc.yaml names and record when they ran."""

    def __init__(self, root: Path, sleep: dict[str, float] | None = None, fail: dict | None = None,
                 content: dict[str, dict] | None = None):
        from flows.pipeline import load_pipeline

        self.specs, self.sleep, self.fail = load_pipeline(root), sleep or {}, fail or {}
        self.content = content or {}
        self.spans: dict[str, tuple[float, float]] = {}
        self.calls: dict[str, int] = {}

    def __call__(self, name: str):
        import time

        def run(params, paths):
            self.calls[name] = self.calls.get(name, 0) + 1
            t0 = time.monotonic()
            time.sleep(self.sleep.get(name, 0.0))
            failure = self.fail.get(name)
            if callable(failure):
                failure(paths, self.calls[name])
            for out in self.specs[name].outs:
                target = paths.root / out
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.suffix:
                    target.write_text(json.dumps(self.content.get(out, {"stage": name})))
                else:
                    target.mkdir(exist_ok=True)
                    (target / "content.txt").write_text(name)
            self.spans[name] = (t0, time.monotonic())
            return {"stage": name, "selected": "clustered_ov_int8" if name == "gate" else None}

        return run


MEASURED = {  # what fake evaluate and bench stages write for one candidate
    "metrics/evaluate.json": {"split": "test", "images": 360, "candidates": {"clustered_ov_int8": {
        "runtime": "openvino", "precision": "int8", "accuracy": 96.5, "drop": 0.4, "file_bytes": 40960,
        "params": 70000, "macs": 2000000, "unique_weights": 300, "status": "ok"}}},
    "metrics/bench.json": {"candidates": {"clustered_ov_int8": {"runtime": "openvino", "p50_ms": 0.04,
                                                                "p90_ms": 0.05}}}}


def gate_none_pass(paths, attempt):
    from edgeopt.errors import GateNonePassError

    paths.report("gate.json").parent.mkdir(parents=True, exist_ok=True)
    paths.report("gate.json").write_text(json.dumps({
        "thresholds": {"max_accuracy_drop": 1.0, "latency_percentile": "p90", "max_latency_ms": 0.01,
                       "max_size_bytes": 1000},
        "selected": None,
        "rows": [{"name": "clustered_ov_int8", "runtime": "openvino", "precision": "int8", "accuracy": 96.5,
                  "drop": 0.4, "latency_ms": 0.05, "size_bytes": 40960, "verdict": "fail",
                  "reasons": ["p90 latency 0.050 ms > max 0.010 ms"]}]}))
    raise GateNonePassError("no candidate passes the gates (clustered_ov_int8: p90 latency 0.050 ms > max 0.010 ms); "
                            "see reports/gate.json")


def run_with_fakes(monkeypatch, root: Path, fakes: FakeStages, **kwargs):
    from prefect.task_runners import ThreadPoolTaskRunner

    import flows.tasks
    from flows.edge_release import edge_release

    monkeypatch.setattr(flows.tasks, "stage_function", fakes)
    monkeypatch.setattr(flows.tasks, "run_stage", flows.tasks.run_stage.with_options(retry_delay_seconds=0))
    flow = edge_release.with_options(task_runner=ThreadPoolTaskRunner(max_workers=4))
    return flow(params_file="params.yaml", root=str(root), return_state=True, **kwargs)


def test_flow_runs_stages_in_dag_order_concurrently_and_caches(prefect_home, tiny_project, monkeypatch):
    from flows.pipeline import load_pipeline, upstream

    fakes = FakeStages(tiny_project, sleep={"distill": 1.5, "cluster": 1.5, "sensitivity": 0.5,
                                            "evaluate": 1.0, "bench": 1.0})
    state = run_with_fakes(monkeypatch, tiny_project, fakes)
    assert state.is_completed(), state.message
    assert set(fakes.spans) == set(load_pipeline(tiny_project))
    for name, ups in upstream(load_pipeline(tiny_project)).items():
        for up in ups:  # every stage starts after the stages writing its deps ended
            assert fakes.spans[up][1] <= fakes.spans[name][0], (up, name)
    overlap = lambda a, b: fakes.spans[a][0] < fakes.spans[b][1] and fakes.spans[b][0] < fakes.spans[a][1]  # noqa
    assert overlap("distill", "cluster") and overlap("evaluate", "bench")
    assert state.result()["selected"] == "clustered_ov_int8"

    again = run_with_fakes(monkeypatch, tiny_project, fakes)
    states = task_states(again.state_details.flow_run_id)
    assert again.is_completed()
    assert {states[s] for s in load_pipeline(tiny_project)} == {"Cached"}
    assert all(n == 1 for n in fakes.calls.values())  # nothing ran a second time


def test_io_errors_are_retried_but_stage_errors_are_not(prefect_home, tiny_project, monkeypatch):
    from edgeopt.stage import StageError

    def flaky(paths, attempt):
        if attempt == 1:
            raise OSError(5, "Input/output error", str(paths.root / "models"))

    def broken(paths, attempt):
        raise StageError("prune.protect names layer 'conv9', which the model does not have")

    fakes = FakeStages(tiny_project, fail={"train": flaky, "prune": broken})
    state = run_with_fakes(monkeypatch, tiny_project, fakes)
    assert fakes.calls["train"] == 2 and fakes.calls["prune"] == 1
    assert state.is_failed()
    assert state.message.startswith("prune: prune.protect names layer 'conv9'")
    assert "not run: finetune" in state.message
    states = task_states(state.state_details.flow_run_id)
    assert states["train"] == "Completed" and states["prune"] == "Failed" and states["finetune"] == "NotReady"
    assert "distill" not in fakes.calls


def test_gate_with_no_passing_candidate_ends_failed_with_the_verdict(prefect_home, tiny_project, monkeypatch):
    fakes = FakeStages(tiny_project, fail={"gate": gate_none_pass}, content=MEASURED)
    state = run_with_fakes(monkeypatch, tiny_project, fakes)
    assert state.is_failed()
    assert state.message.startswith("gate: no candidate passes the gates (clustered_ov_int8: p90 latency")
    assert state.message.endswith("not run: promote, report")
    arts = artifacts_of(state.state_details.flow_run_id)
    table = json.loads(arts["edge-release-candidates"].data)
    assert table == [{"candidate": "clustered_ov_int8", "runtime": "openvino", "precision": "int8",
                      "accuracy %": 96.5, "drop pt": 0.4, "size KB": 40.96, "params": 70000, "MACs": 2000000,
                      "unique weights": 300, "p50 ms": 0.04, "p90 ms": 0.05, "speed-up vs FP32 PyTorch": None,
                      "speed-up vs FP32 runtime": None, "gate": "fail",
                      "reasons": "p90 latency 0.050 ms > max 0.010 ms"}]
    summary = arts["edge-release-summary"].data
    assert "**Stopped**: gate: no candidate passes" in summary and "| promote | NotReady |" in summary
    assert "`clustered_ov_int8`" in summary and "![accuracy vs latency](data:image/png;base64," in summary
    assert "edge-release-registry" not in arts
    assert "promote" not in fakes.calls


def test_bad_overrides_fail_the_flow_with_the_key_named(prefect_home, tiny_project, monkeypatch):
    fakes = FakeStages(tiny_project)
    state = run_with_fakes(monkeypatch, tiny_project, fakes, overrides=["train.epochs=zero"])
    assert state.is_failed() and "train.epochs" in state.message and not fakes.calls


# --- the real pipeline on the tiny digits project (worker processes, real stages) ------------------------
def file_hashes(root: Path) -> dict[str, str]:
    from edgeopt.io import sha256_file

    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*"))
            if p.is_file() and ".prefect" not in p.parts}


@pytest.fixture(scope="module")
def release_project(_tiny_project_template, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("release") / "proj"
    shutil.copytree(_tiny_project_template, root)
    return root


@pytest.fixture(scope="module")
def two_runs(prefect_home, release_project):
    """The flow twice on the same project: the first computes everything, the second should reuse it."""
    from flows.edge_release import edge_release

    first = edge_release(params_file="params.yaml", overrides=FAST, root=str(release_project), return_state=True)
    after_first = file_hashes(release_project)
    second = edge_release(params_file="params.yaml", overrides=FAST, root=str(release_project), return_state=True)
    return first, after_first, second


def test_release_flow_writes_what_dvc_would_and_publishes_artifacts(two_runs, release_project):
    from flows.pipeline import load_pipeline

    first, _, _ = two_runs
    assert first.is_completed(), first.message
    specs = load_pipeline(release_project)
    for spec in specs.values():  # every out, metrics file and plot dvc.yaml names, under the same name
        for out in spec.outs:
            assert (release_project / out).exists(), f"{spec.name}: {out} missing"
        metrics = json.loads((release_project / "metrics" / f"{spec.name}.json").read_text())
        assert metrics["cost"]["wall_s"] >= 0
    result = first.result()
    assert set(result["stages"]) == set(specs) and set(result["stages"].values()) == {"Completed"}
    gate = json.loads((release_project / "reports" / "gate.json").read_text())
    promoted = json.loads((release_project / "metrics" / "promote.json").read_text())
    assert result["selected"] == gate["selected"] == promoted["candidate"]
    assert result["release"]["release"] == promoted["release"] == "digits-classifier@0.0.1"
    assert (release_project / promoted["path"] / "manifest.json").exists()

    run_id = first.state_details.flow_run_id
    arts = artifacts_of(run_id)
    assert {"edge-release-candidates", "edge-release-summary", "edge-release-registry",
            "edge-release-model-card"} <= set(arts)
    table = json.loads(arts["edge-release-candidates"].data)
    evaluated = json.loads((release_project / "metrics" / "evaluate.json").read_text())["candidates"]
    assert sorted(r["candidate"] for r in table) == sorted(evaluated)
    for row in table:
        assert row["accuracy %"] == pytest.approx(evaluated[row["candidate"]]["accuracy"], abs=1e-3)
    assert [r["gate"] for r in table].count("pass (selected)") == 1
    summary = arts["edge-release-summary"].data
    assert "**Released** `digits-classifier@0.0.1`" in summary and "(data:image/png;base64," in summary
    uri = (release_project / promoted["path"]).resolve().as_uri()
    assert arts["edge-release-registry"].data == f"[digits-classifier@0.0.1]({uri})"

    from prefect import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        logs = client.read_logs(log_filter=_logs_of(run_id))
    assert run.name.startswith("small_cnn on digits 16px, 20")
    text = "\n".join(entry.message for entry in logs)
    assert "train: done in" in text and "gate: done in" in text
    assert "agreement" in text  # a stage's own `edgeopt.export` log record reached the run's log


def _logs_of(run_id):
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    return LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))


def test_second_run_takes_every_stage_from_the_cache(two_runs, release_project):
    from flows.pipeline import load_pipeline

    first, after_first, second = two_runs
    assert second.is_completed(), second.message
    states = task_states(second.state_details.flow_run_id)
    assert {states[s] for s in load_pipeline(release_project)} == {"Cached"}
    assert set(second.result()["stages"].values()) == {"Cached"}
    assert second.result()["selected"] == first.result()["selected"]
    assert file_hashes(release_project) == after_first  # no stage rewrote anything


def test_a_deleted_output_reruns_only_its_stage(two_runs, release_project):
    from flows.edge_release import edge_release

    (release_project / "reports" / "report.md").unlink()
    state = edge_release(params_file="params.yaml", overrides=FAST, root=str(release_project), return_state=True)
    assert state.is_completed(), state.message
    stages = state.result()["stages"]
    assert stages.pop("report") == "Completed" and set(stages.values()) == {"Cached"}
    assert (release_project / "reports" / "report.md").exists()


def copy_of(project: Path, tmp_path: Path) -> Path:
    """The released project with its cache (stamps, results), so a failure test leaves the original as it was."""
    dst = tmp_path / "copy"
    shutil.copytree(project, dst, symlinks=True)
    return dst


def failed_release(project: Path, tmp_path: Path, override: str):
    """Run the flow on a copy of the released project with one failing override; its root, state, task states."""
    from flows.edge_release import edge_release

    root = copy_of(project, tmp_path)
    state = edge_release(params_file="params.yaml", overrides=FAST + [override], root=str(root), return_state=True)
    assert state.is_failed()
    return root, state, task_states(state.state_details.flow_run_id)


def test_real_gate_failure_ends_failed_with_the_verdict(two_runs, release_project, tmp_path):
    root, state, states = failed_release(release_project, tmp_path, "gate.max_latency_ms=0.000001")
    assert state.message.startswith("gate: no candidate passes the gates (")
    assert "latency" in state.message and state.message.endswith("not run: promote, report")
    assert states["gate"] == "Failed" and states["promote"] == states["report"] == "NotReady"
    assert states["export"] == states["evaluate"] == states["bench"] == "Cached"  # only the gate's params changed
    gate = json.loads((root / "reports" / "gate.json").read_text())
    assert gate["status"] == "none_pass" and gate["selected"] is None
    table = json.loads(artifacts_of(state.state_details.flow_run_id)["edge-release-candidates"].data)
    assert len(table) == len(gate["rows"]) and not any(r["gate"].startswith("pass") for r in table)


def test_real_validation_failure_stops_before_training(two_runs, release_project, tmp_path):
    _, state, states = failed_release(release_project, tmp_path, "validate.min_images_per_class=100000")
    assert state.message.startswith("validate: data validation failed; training is blocked:")
    assert "not run: train, prune" in state.message
    assert states["prepare"] == "Cached" and states["validate"] == "Failed" and states["train"] == "NotReady"


# --- the sweep on a local Dask cluster -----------------------------------------------------------------------
SWEEP_FAST = ["finetune.epochs=1", "cluster.finetune_epochs=0", "distill.enabled=false", "sensitivity.enabled=false",
              "quantize.calibration_size=64", "export.parity_samples=64", "bench.runs=10", "bench.warmup=2",
              "bench.pytorch_reference=false", "train.threads=1", "target.runtime=openvino",
              "gate.max_accuracy_drop=100", "gate.max_latency_ms=1000"]


def dask_processes() -> list:
    import psutil

    return [p for p in psutil.Process().children(recursive=True)
            if "distributed" in " ".join(p.cmdline()) or "dask" in " ".join(p.cmdline())]


def write_config_results(work: Path, cands: dict[str, tuple[float, float]], selected: str | None,
                         baseline: str = "baseline_fp32_ov") -> None:
    """evaluate/bench/gate files of one sweep configuration: name -> (accuracy, p50 ms)."""
    (work / "metrics").mkdir(parents=True)
    (work / "reports").mkdir()
    (work / "metrics" / "evaluate.json").write_text(json.dumps({"candidates": {
        n: {"accuracy": a, "drop": 97.0 - a, "file_bytes": 1000, "status": "ok"} for n, (a, _) in cands.items()}}))
    (work / "metrics" / "bench.json").write_text(json.dumps({"candidates": {
        n: {"p50_ms": t, "p90_ms": t * 1.2} for n, (_, t) in cands.items()}}))
    (work / "reports" / "gate.json").write_text(json.dumps({"selected": selected, "rows": [
        {"name": n, "baseline": n == baseline, "accuracy": a, "drop": 97.0 - a, "latency_ms": t * 1.2,
         "size_bytes": 1000, "verdict": "pass" if n == selected else "fail", "reasons": []}
        for n, (a, t) in cands.items()]}))


def test_sweep_results_rank_configs_like_the_gate_and_keep_the_pareto_front(tmp_path):
    from flows.sweep import config_grid, sweep_results

    configs = config_grid([0.25, 0.5], [16, 64], ["ov_int8"])
    assert [c["id"] for c in configs] == ["prune0.25-k16-ov_int8", "prune0.25-k64-ov_int8",
                                          "prune0.5-k16-ov_int8", "prune0.5-k64-ov_int8"]
    assert configs[2]["overrides"] == ["prune.ratio=0.5", "cluster.n_clusters=16", "quantize.modes=[ov_int8]"]
    for c in configs:
        c["workdir"] = str(tmp_path / c["id"])
    base = {"baseline_fp32_ov": (97.0, 0.05)}  # fastest and most accurate, but never part of the sweep result
    write_config_results(Path(configs[0]["workdir"]), {**base, "clustered_ov_int8": (95.0, 0.20)}, "clustered_ov_int8")
    write_config_results(Path(configs[1]["workdir"]), {**base, "clustered_ov_int8": (93.0, 0.10)}, "clustered_ov_int8")
    write_config_results(Path(configs[2]["workdir"]), {**base, "clustered_ov_int8": (90.0, 0.30)}, None)
    doc, rows = sweep_results(configs, {configs[3]["id"]: "prune: boom"}, "latency")
    assert [c["status"] for c in doc["configs"]] == ["pass", "pass", "none_pass", "failed"]
    assert doc["configs"][3]["reason"] == "prune: boom"
    assert doc["best"]["id"] == "prune0.25-k64-ov_int8" and doc["best"]["latency_ms"] == pytest.approx(0.12)
    assert doc["pareto_front"] == ["prune0.25-k64-ov_int8/clustered_ov_int8", "prune0.25-k16-ov_int8/clustered_ov_int8"]
    assert len(rows) == 3 and not any("baseline" in r["name"] for r in rows)
    by_accuracy, _ = sweep_results(configs, {}, "accuracy")
    assert by_accuracy["best"]["id"] == "prune0.25-k16-ov_int8"


@pytest.mark.slow
def test_sweep_of_six_configs_on_local_dask_finds_pareto_front_and_best(two_runs, release_project):
    from flows.sweep import sweep
    from stages.report import candidate_rows

    state = sweep(params_file="params.yaml", overrides=FAST, root=str(release_project),
                  prune_ratios=[0.25, 0.5, 0.75], n_clusters=[16, 64], quantize_modes=["ov_int8"],
                  sweep_overrides=SWEEP_FAST, name="t", return_state=True)
    assert state.is_completed(), state.message
    assert not dask_processes()  # the local cluster was shut down
    doc = json.loads((release_project / "sweeps" / "t" / "sweep.json").read_text())
    assert doc == state.result()
    assert len(doc["configs"]) == 6 and {c["status"] for c in doc["configs"]} == {"pass"}
    points = {}
    for cfg in doc["configs"]:
        work = Path(cfg["workdir"])
        assert (work / "data" / "prepared").resolve() == (release_project / "data" / "prepared").resolve()
        assert json.loads((work / "metrics" / "prune.json").read_text())["ratio"] == cfg["prune_ratio"]
        assert json.loads((work / "metrics" / "cluster.json").read_text())["n_clusters"] == cfg["n_clusters"]
        gate = json.loads((work / "reports" / "gate.json").read_text())
        assert gate["selected"] == cfg["selected"]
        rows = candidate_rows(json.loads((work / "metrics" / "evaluate.json").read_text()),
                              json.loads((work / "metrics" / "bench.json").read_text()), gate)
        baselines = {r["name"] for r in gate["rows"] if r["baseline"]}
        points.update({f"{cfg['id']}/{r['name']}": (r["p50_ms"], r["accuracy"]) for r in rows
                       if r["name"] not in baselines and r["p50_ms"] is not None})
    front = doc["pareto_front"]
    assert front and set(front) <= set(points)
    for name in front:  # nothing measured is at least as fast and as accurate, and better on one
        x, y = points[name]
        assert not any(ox <= x and oy >= y and (ox < x or oy > y) for ox, oy in points.values())
    for name, (x, y) in points.items():  # and every point off the front is dominated by one on it
        if name not in front:
            assert any(points[f][0] <= x and points[f][1] >= y for f in front)
    best = doc["best"]  # rank_by latency: the fastest passing pick among the configurations
    assert best["latency_ms"] == min(c["latency_ms"] for c in doc["configs"] if c["status"] == "pass")
    table = json.loads(artifacts_of(state.state_details.flow_run_id)["edge-sweep"].data)
    assert len(table) == 6 and [r["config"] for r in table if r["best"]] == [best["id"]]
    assert [c["id"] for c in doc["configs"] if c["best"]] == [best["id"]]
