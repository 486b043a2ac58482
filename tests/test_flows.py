"""Prefect flows: the DAG from dvc.yaml, stages run through DVC (dvc.lock the one record), retries, failure
states, UI artifacts, real runs on a fresh clone.

The flow tests run against Prefect's test harness (a temporary local server and database, PREFECT_HOME in a
temp dir); nothing reaches ~/.prefect or the network.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
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


def task_states(flow_run_id, expected: set[str] = frozenset()) -> dict[str, str]:
    """Task-run name -> state name, as the server recorded them (waiting for the `expected` names to appear)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    import time

    deadline = time.monotonic() + 60  # the server records task-run states asynchronously (slower under load)
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            if (all(r.state is not None for r in runs) and expected <= {r.name for r in runs}
                    or time.monotonic() > deadline):
                break
            time.sleep(1)
    return {r.name: r.state.name if r.state else "<no state>" for r in runs}


def artifacts_of(flow_run_id) -> dict[str, object]:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key: a for a in arts}


# --- the graph, from dvc.yaml --------------------------------------------------------------------------------
def test_promote_is_never_replayed_from_dvcs_run_cache():
    """DVC run-caches stages whose outputs are uncached too: after a param is changed and reverted, it would
    restore metrics/promote.json ("staging -> 0.0.1") and exit 0 without touching the registry (whose channel
    points elsewhere). A persist output is what DVC's run cache refuses (dvc.stage.cache._can_hash)."""
    import inspect

    from dvc.repo import Repo
    from dvc.stage import cache

    assert "out.persist" in inspect.getsource(cache._can_hash)  # the rule this relies on, in this DVC
    with Repo(str(REPO)) as repo:
        stages = {s.name: s for s in repo.index.stages}
    assert any(o.persist for o in stages["promote"].outs), "promote must not be run-cacheable"
    assert not any(o.persist for n, s in stages.items() if n != "promote" for o in s.outs)  # the rest may be


def test_promote_entry_point_clears_its_persist_record_before_running(tmp_path):
    """DVC keeps a persist output: a promote killed before writing would leave the last release's record."""
    from edgeopt.stage import stage_main

    def promote(params, paths):
        raise KeyboardInterrupt

    promote.stage_name = "promote"
    record = tmp_path / "metrics" / "promote.json"
    record.parent.mkdir()
    args = ["--root", str(tmp_path), "--params", str(REPO / "params.yaml")]
    record.write_text('{"status": "ok", "release": "m@0.0.1"}')
    assert stage_main(promote, args) != 0 and record.exists()  # other stages: DVC removes their outputs
    assert stage_main(promote, args, clear_metrics=True) != 0 and not record.exists()


@pytest.mark.parametrize("statuses, best, code", [(["pass", "none_pass"], {"id": "c1", "selected": "x"}, 0),
                                                  (["none_pass", "failed"], None, 3),
                                                  (["failed", "failed"], None, 1)])
def test_sweep_exit_code_says_whether_any_configuration_passed(monkeypatch, statuses, best, code):
    """As `edgeopt gate`: 3 when configurations reached the gate and none passed, 1 when none got that far."""
    from flows import sweep as sweep_flow

    class Done:
        def is_completed(self):
            return True

        def result(self):
            return {"best": best, "configs": [{"id": f"c{i}", "status": st} for i, st in enumerate(statuses)]}

    class Flow:
        description = sweep_flow.sweep.description

        def __call__(self, **kw):
            return Done()

    monkeypatch.setattr(sweep_flow, "sweep", Flow())
    assert sweep_flow.main(["--ratio", "0.5"]) == code  # (no capsys: a per-test stream must not reach logging)


def test_stage_graph_follows_dvc_yaml():
    from edgeopt.pipeline import closure, execution_order, load_pipeline, upstream

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
    assert "finetune" in ups["distill"] and "cluster" not in ups["distill"]
    assert "export" in ups["evaluate"] and "export" in ups["bench"]
    assert {"evaluate", "bench"} <= ups["gate"] and "gate" in ups["promote"]
    assert "prepare" in ups["promote"]  # data/prepared/meta.json lies in prepare's out data/prepared
    assert closure(specs, ["validate"]) == ["prepare", "validate"]
    assert closure(specs, ["gate"], downstream_of=["train"]) == [
        "prune", "finetune", "cluster", "distill", "sensitivity", "quantize", "export", "evaluate", "bench", "gate"]
    assert list(specs["prepare"].deps[-2:]) == ["data/raw/images", "data/raw/test-images"]  # ${data.root}, ${data.test_root}, templated from params.yaml as DVC does


def test_only_transient_errors_are_retried():
    from prefect.states import Failed

    from edgeopt.errors import GateNonePassError
    from edgeopt.params import ParamsError
    from flows.tasks import DvcLockBusy, StageFailed, is_transient

    retry = lambda exc: is_transient(None, None, Failed(data=exc))  # noqa: E731
    assert retry(DvcLockBusy("locked")) and retry(OSError(5, "Input/output error")) and retry(TimeoutError())
    assert not retry(FileNotFoundError("models/baseline.pt")) and not retry(StageFailed("gate", "none pass", 3))
    assert not retry(ParamsError("train.epochs: bad")) and not retry(GateNonePassError("none"))


# --- the flow with a stand-in for DVC (what the tasks do with DVC's answers) -------------------------------
class FakeDvc:
    """Stand-in for flows.dvc_runner.run_stage: writes the outs dvc.yaml names, 'skips' a stage the second time
    (as DVC does when nothing changed) and records the order and overlap of the calls."""

    def __init__(self, root: Path, fail: dict | None = None, content: dict[str, dict] | None = None,
                 sleep: float = 0.0):
        from edgeopt.pipeline import load_pipeline

        self.specs, self.fail, self.content, self.sleep = load_pipeline(root), fail or {}, content or {}, sleep
        self.calls: list[str] = []
        self.done: set[str] = set()
        self.spans: dict[str, tuple[float, float]] = {}
        self.seen_params: dict[str, str] = {}

    def __call__(self, root, stage, on_line=print, env=None):
        import time

        from flows.dvc_runner import Outcome

        root = Path(root)
        self.calls.append(stage)
        self.seen_params[stage] = (root / "params.yaml").read_text()
        t0 = time.monotonic()
        time.sleep(self.sleep)
        failure = self.fail.get(stage)
        if callable(failure):
            outcome = failure(root, self.calls.count(stage))
            if outcome is not None:
                self.spans[stage] = (t0, time.monotonic())
                return outcome
        if stage in self.done:
            self.spans[stage] = (t0, time.monotonic())
            return Outcome(stage, "skipped")
        self.done.add(stage)
        for out in self.specs[stage].outs:
            target = root / out
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.suffix:
                target.write_text(json.dumps(self.content.get(out, {"stage": stage})))
            else:
                target.mkdir(exist_ok=True)
                (target / "content.txt").write_text(stage)
        on_line(f"{stage}: fake output line")
        self.spans[stage] = (t0, time.monotonic())
        return Outcome(stage, "ran")


MEASURED = {  # what fake evaluate and bench stages write for one candidate
    "metrics/evaluate.json": {"split": "test", "images": 360, "candidates": {"clustered_ov_int8": {
        "runtime": "openvino", "precision": "int8", "accuracy": 96.5, "drop": 0.4, "file_bytes": 40960,
        "params": 70000, "macs": 2000000, "unique_weights": 300, "status": "ok"}}},
    "metrics/bench.json": {"candidates": {"clustered_ov_int8": {"runtime": "openvino", "p50_ms": 0.04,
                                                                "p90_ms": 0.05}}}}


def gate_none_pass(root: Path, attempt: int):
    from flows.dvc_runner import Outcome

    (root / "reports").mkdir(parents=True, exist_ok=True)
    (root / "reports" / "gate.json").write_text(json.dumps({
        "thresholds": {"max_accuracy_drop": 1.0, "latency_percentile": "p90", "max_latency_ms": 0.01,
                       "max_size_bytes": 1000},
        "selected": None,
        "rows": [{"name": "clustered_ov_int8", "runtime": "openvino", "precision": "int8", "accuracy": 96.5,
                  "drop": 0.4, "latency_ms": 0.05, "size_bytes": 40960, "verdict": "fail",
                  "reasons": ["p90 latency 0.050 ms > max 0.010 ms"]}]}))
    return Outcome("gate", "failed", 3, "no candidate passes the gates (clustered_ov_int8: p90 latency 0.050 ms > "
                                        "max 0.010 ms); see reports/gate.json")


def run_with_fake(monkeypatch, root: Path, fake: FakeDvc, **kwargs):
    import flows.dvc_runner
    import flows.tasks
    from flows.edge_release import edge_release

    monkeypatch.setattr(flows.dvc_runner, "run_stage", fake)
    monkeypatch.setattr(flows.tasks, "dvc_stage", flows.tasks.dvc_stage.with_options(retry_delay_seconds=0))
    return edge_release(params_file="params.yaml", root=str(root), return_state=True, **kwargs)


def test_flow_runs_dvc_stages_in_order_one_at_a_time_and_dvc_decides_the_cache(prefect_home, tiny_project,
                                                                                monkeypatch):
    from edgeopt.pipeline import execution_order, load_pipeline

    fake = FakeDvc(tiny_project, sleep=0.05)
    state = run_with_fake(monkeypatch, tiny_project, fake)
    assert state.is_completed(), state.message
    assert fake.calls == execution_order(load_pipeline(tiny_project))
    spans = sorted(fake.spans.values())
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # never two stages at once: bench times a quiet CPU
    assert set(state.result()["stages"].values()) == {"Completed"}

    again = run_with_fake(monkeypatch, tiny_project, fake)
    states = task_states(again.state_details.flow_run_id)
    assert again.is_completed()
    assert {states[s] for s in load_pipeline(tiny_project)} == {"Cached"}  # DVC found them up to date
    assert set(again.result()["stages"].values()) == {"Cached"}


def test_overrides_are_in_params_yaml_during_the_run_and_the_file_is_restored(prefect_home, tiny_project,
                                                                             monkeypatch):
    from flows.workspace import BACKUP

    original = (tiny_project / "params.yaml").read_bytes()
    fake = FakeDvc(tiny_project)
    state = run_with_fake(monkeypatch, tiny_project, fake, overrides=["train.epochs=3", "prune.ratio=0.3"])
    assert state.is_completed(), state.message
    during = fake.seen_params["train"]
    assert "epochs: 3" in during and "ratio: 0.3" in during and "# global seed" in during  # comments kept
    assert (tiny_project / "params.yaml").read_bytes() == original and not (tiny_project / BACKUP).exists()
    # a run killed mid-way left its backup: the next run puts the user's file back first
    (tiny_project / BACKUP).write_bytes(original)
    (tiny_project / "params.yaml").write_text(original.decode().replace("epochs: 15", "epochs: 99"))
    assert run_with_fake(monkeypatch, tiny_project, FakeDvc(tiny_project)).is_completed()
    assert (tiny_project / "params.yaml").read_bytes() == original


def test_a_busy_dvc_lock_is_retried_but_stage_errors_are_not(prefect_home, tiny_project, monkeypatch):
    from flows.dvc_runner import Outcome

    def busy_once(root, attempt):
        return Outcome("train", "failed", None, "Unable to acquire lock", lock_busy=True) if attempt == 1 else None

    def broken(root, attempt):
        return Outcome("prune", "failed", 1, "prune.protect names layer 'conv9', which the model does not have")

    fake = FakeDvc(tiny_project, fail={"train": busy_once, "prune": broken})
    state = run_with_fake(monkeypatch, tiny_project, fake)
    assert fake.calls.count("train") == 2 and fake.calls.count("prune") == 1
    assert state.is_failed()
    assert state.message.startswith("prune: prune.protect names layer 'conv9'")
    assert "not run: finetune" in state.message
    states = task_states(state.state_details.flow_run_id, {"train", "prune"})
    assert states["train"] == "Completed" and states["prune"] == "Failed"
    assert "finetune" not in states and "distill" not in fake.calls  # never started
    assert state.state_details is not None


def test_gate_with_no_passing_candidate_ends_failed_with_the_verdict(prefect_home, tiny_project, monkeypatch):
    fake = FakeDvc(tiny_project, fail={"gate": gate_none_pass}, content=MEASURED)
    state = run_with_fake(monkeypatch, tiny_project, fake)
    assert state.is_failed()
    assert state.message.startswith("gate: no candidate passes the gates (clustered_ov_int8: p90 latency")
    assert state.message.endswith("not run: promote, report")
    arts = artifacts_of(state.state_details.flow_run_id)
    table = json.loads(arts["edge-release-candidates"].data)
    assert [r["candidate"] for r in table] == ["clustered_ov_int8"] and table[0]["reasons"].startswith("p90 latency")
    summary = arts["edge-release-summary"].data
    assert "**Stopped**: gate: no candidate passes" in summary and "| promote | NotRun |" in summary
    assert "edge-release-registry" not in arts
    assert "promote" not in fake.calls


def test_bad_overrides_fail_the_flow_with_the_key_named(prefect_home, tiny_project, monkeypatch):
    fake = FakeDvc(tiny_project)
    original = (tiny_project / "params.yaml").read_bytes()
    state = run_with_fake(monkeypatch, tiny_project, fake, overrides=["train.epochs=zero"])
    assert state.is_failed() and "train.epochs" in state.message and not fake.calls
    assert (tiny_project / "params.yaml").read_bytes() == original


# --- the real pipeline through DVC on a fresh clone (real stages, real dvc.lock) ---------------------------
def file_hashes(root: Path) -> dict[str, str]:
    from edgeopt.io import sha256_file

    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*"))
            if p.is_file() and not {".prefect", ".dvc", ".git"} & set(p.parts)}


def dvc(root: Path, *args: str, timeout: float = 900):
    from tests.test_dvc_pipeline import run

    return run([sys.executable, "-m", "dvc", *args], root, timeout=timeout)


@pytest.fixture(scope="module")
def release_project(tmp_path_factory) -> Path:
    """A fresh clone (git + DVC) whose params.yaml carries FAST, committed."""
    from edgeopt.params import render_params_file
    from tests.test_dvc_pipeline import fresh_clone

    root = fresh_clone(tmp_path_factory.mktemp("release") / "proj")
    (root / "params.yaml").write_text(render_params_file((root / "params.yaml").read_text(), FAST))
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "fast params"], cwd=root,
                   check=True)
    return root


@pytest.fixture(scope="module")
def two_runs(prefect_home, release_project):
    """The flow twice on the same project: the first computes everything, the second finds it up to date."""
    from flows.edge_release import edge_release

    first = edge_release(params_file="params.yaml", root=str(release_project), return_state=True)
    after_first = file_hashes(release_project)
    status = dvc(release_project, "status", "--json")
    second = edge_release(params_file="params.yaml", root=str(release_project), return_state=True)
    return first, after_first, second, status


@pytest.mark.slow  # real flow runs through DVC (the two_runs fixture: about 2 min)
def test_release_flow_records_every_stage_in_dvc_lock_and_publishes_artifacts(two_runs, release_project):
    import yaml

    from edgeopt.pipeline import load_pipeline

    first, _, _, status = two_runs
    assert first.is_completed(), first.message
    specs = load_pipeline(release_project)
    lock = yaml.safe_load((release_project / "dvc.lock").read_text())["stages"]
    assert set(lock) == set(specs)  # DVC recorded every stage the flow ran
    assert lock["train"]["params"]["params.yaml"]["train"]["epochs"] == 1  # FAST, as committed
    assert status.returncode == 0 and json.loads(status.stdout) == {}  # `dvc status`: up to date
    for spec in specs.values():
        for out in spec.outs:
            assert (release_project / out).exists(), f"{spec.name}: {out} missing"
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
    assert list(table[0])[:3] == ["gate", "candidate", "reasons"]  # the verdict first, no scrolling sideways
    assert "passes every gate" in [r["reasons"] for r in table]  # not a bare '-' (a Markdown bullet)
    assert all(a.task_run_id is None for a in arts.values())  # on the flow run, not on a hash-named task
    assert arts["edge-release-progress"].type == "progress" and float(arts["edge-release-progress"].data) == 100.0
    assert "edgeopt registry pull" in arts["edge-release-registry"].data  # what to do with it, no file:// link

    from prefect import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        logs = client.read_logs(log_filter=_logs_of(run_id))
    assert run.name.startswith("small_cnn on digits 16px, 20")
    text = "\n".join(entry.message for entry in logs)
    assert "train: done in" in text and "Running stage 'train'" in text
    assert "agreement" in text  # a stage's own log line (export's parity check) reached the run's log


def _logs_of(run_id):
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    return LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))


@pytest.mark.slow
def test_second_run_and_dvc_repro_find_everything_up_to_date(two_runs, release_project):
    from edgeopt.pipeline import load_pipeline

    first, after_first, second, _ = two_runs
    assert second.is_completed(), second.message
    states = task_states(second.state_details.flow_run_id)
    assert {states[s] for s in load_pipeline(release_project)} == {"Cached"}
    assert second.result()["selected"] == first.result()["selected"]
    assert file_hashes(release_project) == after_first  # no stage rewrote anything
    repro = dvc(release_project, "repro")
    assert repro.returncode == 0 and "Running stage" not in repro.stdout, repro.stdout[-2000:]


@pytest.mark.slow
def test_dvc_repro_after_a_param_change_then_the_flow_reuses_everything(two_runs, release_project):
    from edgeopt.params import render_params_file
    from flows.edge_release import edge_release

    params = release_project / "params.yaml"
    params.write_text(render_params_file(params.read_text(), ["bench.runs=12"]))
    repro = dvc(release_project, "repro")
    assert repro.returncode == 0, repro.stdout[-3000:] + repro.stderr[-3000:]
    ran = {line.split("'")[1] for line in repro.stdout.splitlines() if line.startswith("Running stage")}
    assert ran == {"bench", "gate", "promote", "report"}  # bench's param; what reads its outputs
    state = edge_release(params_file="params.yaml", root=str(release_project), return_state=True)
    assert state.is_completed(), state.message
    assert set(state.result()["stages"].values()) == {"Cached"}


@pytest.mark.slow
def test_a_deleted_output_reruns_only_its_stage(two_runs, release_project):
    from flows.edge_release import edge_release

    (release_project / "reports" / "report.md").unlink()
    state = edge_release(params_file="params.yaml", root=str(release_project), return_state=True)
    assert state.is_completed(), state.message
    stages = state.result()["stages"]
    assert stages.pop("report") == "Completed" and set(stages.values()) == {"Cached"}
    assert (release_project / "reports" / "report.md").exists()


def copy_of(project: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(project, dst, symlinks=True)
    return dst


def failed_release(project: Path, tmp_path: Path, override: str):
    """Run the flow on a copy of the released project with one failing override; its root, state, task states."""
    from flows.edge_release import edge_release

    root = copy_of(project, tmp_path)
    state = edge_release(params_file="params.yaml", overrides=[override], root=str(root), return_state=True)
    assert state.is_failed()
    return root, state, task_states(state.state_details.flow_run_id)


@pytest.mark.slow
def test_real_gate_failure_ends_failed_with_the_verdict(two_runs, release_project, tmp_path):
    root, state, states = failed_release(release_project, tmp_path, "gate.max_latency_ms=0.000001")
    assert state.message.startswith("gate: no candidate passes the gates (")
    assert "latency" in state.message and state.message.endswith("not run: promote, report")
    assert states["gate"] == "Failed" and "promote" not in states
    assert states["export"] == states["evaluate"] == states["bench"] == "Cached"  # only the gate's params changed
    gate = json.loads((root / "reports" / "gate.json").read_text())
    assert gate["status"] == "none_pass" and gate["selected"] is None
    table = json.loads(artifacts_of(state.state_details.flow_run_id)["edge-release-candidates"].data)
    assert len(table) == len(gate["rows"]) and not any(r["gate"].startswith("pass") for r in table)


@pytest.mark.slow
def test_real_validation_failure_stops_before_training(two_runs, release_project, tmp_path):
    _, state, states = failed_release(release_project, tmp_path, "validate.min_images_per_class=100000")
    assert state.message.startswith("validate: data validation failed; training is blocked:")
    assert "not run: train, prune" in state.message
    assert states["prepare"] == "Cached" and states["validate"] == "Failed" and "train" not in states


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


def test_a_sweep_run_again_is_never_judged_by_the_last_runs_gate(prefect_home, tmp_path, monkeypatch):
    """Configurations rerun in the same work dirs: one that stops before its gate this time is 'failed' (exit 1),
    not the earlier run's 'pass'."""
    from types import SimpleNamespace

    from flows import sweep as sw

    cfg_id = "prune0.5-k16-ov_int8"
    write_config_results(tmp_path / "sweeps" / "again" / cfg_id,
                         {"baseline_fp32_ov": (97.0, 0.05), "clustered_ov_int8": (95.0, 0.2)}, "clustered_ov_int8")

    class Configs:  # this run: prune failed, nothing after it ran
        def with_options(self, **kw):
            return lambda configs, *a: {c["id"]: "prune: boom" for c in configs}

    rank = SimpleNamespace(gate=SimpleNamespace(rank_by="latency"))
    monkeypatch.setattr(sw, "validate_variants", lambda *a, **k: rank)
    monkeypatch.setattr(sw, "run_shared_stages", lambda *a, **k: tmp_path / "sweeps" / "again" / "shared")
    monkeypatch.setattr(sw, "run_configs", Configs())
    doc = sw.sweep(root=str(tmp_path), prune_ratios=[0.5], n_clusters=[16], quantize_modes=["ov_int8"], name="again")
    assert [(c["status"], c["reason"]) for c in doc["configs"]] == [("failed", "prune: boom")]
    assert doc["best"] is None and doc["pareto_front"] == []


@pytest.mark.slow
@pytest.mark.extended  # the sweep end to end: test_dask_cluster's killed-worker sweep, in CI
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
        # the project's shared outputs, as a snapshot of hard links: a release rerunning train meanwhile is not seen
        shared = (work / "data" / "prepared").resolve()
        assert shared == (release_project / "sweeps" / "t" / "shared" / "data" / "prepared").resolve()
        for f in (release_project / "data" / "prepared").rglob("*.npy"):
            assert (shared / f.relative_to(release_project / "data" / "prepared")).stat().st_ino == f.stat().st_ino
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
