"""search: the whole-chain constrained search (prune + KD fine-tuning + cluster + quantize + distill) with Optuna.

    python -m flows.search                                 # search.* of params.yaml: 20 trials, 2 in flight
    python -m flows.search --trials 40 --name big          # resumable: run it again after a kill
    python -m flows.search --address tcp://scheduler:8786  # trials on a running Dask cluster (shared filesystem)

Objective: the VALIDATION accuracy of a trial's best candidate in its deployed runtime (the exported ONNX / IR
file in ONNX Runtime / OpenVINO), subject to the gate's latency (gate.max_latency_ms at gate.latency_percentile)
and size (gate.max_size_bytes) budgets and search.max_macs. The shared stages (prepare, validate, train) run
once in the project through DVC. Each trial runs the remaining stages up to evaluate (evaluate.split=val) and
bench in `sweeps/<name>/trial-<n>/` as one Prefect task on a DaskTaskRunner; the flow asks Optuna (TPE, seeded)
for up to search.workers trials at a time and tells it the outcomes; a MedianPruner stops a trial whose
fine-tuned (then student) PyTorch validation accuracy is below the median of earlier trials. The study persists
in `sweeps/<name>/study/` and resumes after a kill. Only the winner touches the test split: its candidates are
evaluated on it, benched again with the project's bench params and gated, in its work dir. Results:
`sweeps/<name>/search.json`, `best_params.yaml` (params.yaml with the winner's values, comments kept) and the
`edge-search` / `edge-search-summary` artifacts (search_report.py).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock, Timeout
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed, State
from optuna.trial import TrialState

from edgeopt.cliargs import add_params_args
from edgeopt.logs import quiet_third_party
from edgeopt.errors import ParamsError, StageError
from edgeopt.gating import forget_results
from edgeopt.params import Params, Search, project_params
from edgeopt.paths import Paths
from edgeopt.search_space import INTERMEDIATE, assess, corner_overrides, distributions, knobs, trial_overrides
from flows import study as st
from flows.scratch import (SETUP_ERRORS, dask_runner, link_shared_inputs, lost_on_cluster, run_shared_stages,
                           run_title, validate_variants, variant_stages)
from flows.search_report import summarize_search
from flows.tasks import run_stage, stopped_because
from flows.workspace import ProjectBusy

TRIAL_FIXED = ["evaluate.split=val"]  # trials choose on validation images; the test split waits for the winner
TRIAL_STAGES = ["evaluate", "bench"]  # a trial's last stages (and what they need); the gate runs on the winner


def budgets(params: Params) -> dict[str, float]:
    """What a trial's pick must stay within: the gate's latency and size budgets, search.max_macs (0 = none)."""
    return {"latency_ms": params.gate.max_latency_ms, "size_bytes": params.gate.max_size_bytes,
            "macs": params.search.max_macs}


def study_terms(params: Params, trial_overrides: list[str]) -> dict[str, Any]:
    """What decided the stored trials' verdicts; a resumed study must run under the same."""
    return {"search space": params.search.space, "budgets": {**budgets(params),
            "latency_percentile": params.gate.latency_percentile}, "params overrides": list(trial_overrides)}


class TrialFailed(StageError):
    """A trial's stage failed; the message is the stage's error line."""


def search_run_name() -> str:
    from prefect.runtime import flow_run

    p = flow_run.parameters
    return run_title(f"search {p.get('name', 'search')}", p.get("params_file", "params.yaml"), p.get("overrides"),
                     p.get("root", "."))


@task(cache_policy=NO_CACHE, task_run_name="trial-{number}")
def run_trial(number: int, trial_id: int, params: Params, workdir: str, study_dir: str, study_name: str
              ) -> dict[str, Any]:
    """One trial's stages in its work dir (each a `run_stage` task run), reporting the best PyTorch validation
    accuracy so far after fine-tuning and distillation to the pruner; returns its verdict, or that it was pruned."""
    from edgeopt.gating import build_report

    logger = get_run_logger()
    t0, cpu0 = time.perf_counter(), time.process_time()
    trial = st.trial_handle(study_dir, study_name, params.search, trial_id)
    steps, best = 0, None
    for stage in variant_stages(workdir, TRIAL_STAGES):
        state = run_stage.with_options(name=stage, task_run_name=f"{stage} [trial-{number}]")(
            stage, params, workdir, return_state=True)
        if not state.is_completed():
            raise TrialFailed(stopped_because({stage: state}) or f"{stage}: {state.name}")
        key = dict(INTERMEDIATE).get(stage)
        value = state.result().get(key) if key else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            best = value if best is None else max(best, value)
            trial.report(best, steps)
            steps += 1
            if trial.should_prune():
                logger.info("trial-%d pruned after %s: validation accuracy %.2f %% is below the median", number,
                            stage, best)
                return {"state": "pruned", "pruned_after": stage, "step": steps - 1, "value": best,
                        "wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(time.process_time() - cpu0, 1)}
    report = build_report(params, Paths(Path(workdir)))
    verdict = assess(report["rows"], budgets(params))
    logger.info("trial-%d: %s", number, f"{verdict['pick']} {verdict['objective']:.2f} % (validation)"
                if verdict["feasible"] else f"infeasible: {verdict['infeasible_reason']}")
    return {"state": "complete", **verdict, "wall_s": round(time.perf_counter() - t0, 1),
            "cpu_s": round(time.process_time() - cpu0, 1)}


def _done(future: Any) -> bool:
    dask_future = getattr(future, "wrapped_future", None)
    return dask_future.done() if dask_future is not None else future.state.is_final()


def tell(study: Any, trial: Any, future: Any) -> str:
    """Record a finished trial task's outcome in the study; returns its state's name."""
    try:
        result = future.result()
    except Exception as exc:  # a failed stage, or a task Dask gave up on
        reason = lost_on_cluster({"trial": future}) or (str(exc) if isinstance(exc, TrialFailed) else
                                                         f"{type(exc).__name__}: {exc}")
        trial.set_user_attr("reason", reason)
        study.tell(trial, state=TrialState.FAIL)
        return f"failed: {reason}"
    trial.set_user_attr("result", result)
    if result["state"] == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
        return f"pruned after {result['pruned_after']} at {result['value']:.2f} %"
    # an infeasible trial still tells TPE how accurate it was; the constraint (violation > 0) marks it infeasible
    study.tell(trial, result["objective"] if result["feasible"] else (result["best_val_accuracy"] or 0.0))
    return (f"{result['pick']}: {result['objective']:.2f} % validation" if result["feasible"]
            else f"infeasible ({result['infeasible_reason']})")


@flow(name="edge-search-trials")
def run_study(study_dir: str, name: str, params_file: str, trial_base: list[str], root: str, out_dir: str,
              settings: dict[str, Any], shared: str) -> int:
    """Ask/tell: keep up to `workers` trials in flight until the study holds `trials` finished ones (or
    timeout_s passed); returns how many trials this run started."""
    logger = get_run_logger()
    s = Search.model_validate(settings)
    params = project_params(params_file, trial_base, root)
    study = st.open_study(study_dir, name, s, study_terms(params, trial_base))
    dists, started, t0 = distributions(params), 0, time.monotonic()
    inflight: dict[int, tuple[Any, Any]] = {}
    while True:
        finished = len(st.finished(study))
        while (len(inflight) < s.workers and finished + len(inflight) < s.trials
               and not (s.timeout_s and time.monotonic() - t0 > s.timeout_s)):
            trial = study.ask(dists)
            extra = trial_overrides(trial.params)
            trial.set_user_attr("overrides", extra)
            same = st.twin(study, trial.params)
            if same is not None:  # TPE proposed a point already run: its outcome, without running it again
                logger.info("trial-%d: the same point as trial-%d, not run again", trial.number, same.number)
                st.copy_outcome(study, trial, same)
                finished += 1
                continue
            try:
                trial_params = project_params(params_file, trial_base + extra, root)
            except ParamsError as exc:  # each knob's values validated alone; this combination is not valid
                trial.set_user_attr("reason", str(exc))
                study.tell(trial, state=TrialState.FAIL)
                finished += 1
                continue
            workdir = link_shared_inputs(shared, str(Path(out_dir) / f"trial-{trial.number}"))
            forget_results(Paths(Path(workdir)))  # a study whose study/ was deleted numbers trials from 0 again
            trial.set_user_attr("workdir", workdir)
            logger.info("trial-%d: %s", trial.number, " ".join(extra))
            inflight[trial.number] = (trial, run_trial.submit(trial.number, trial._trial_id, trial_params, workdir,
                                                              study_dir, name))
            started += 1
        if not inflight:
            return started
        done = [n for n, (_, future) in inflight.items() if _done(future)]
        if not done:
            time.sleep(0.5)
        for n in done:
            trial, future = inflight.pop(n)
            logger.info("trial-%d %s", n, tell(study, trial, future))


def check_winner(best: dict[str, Any], params_file: str, base: list[str], per_trial: list[str], root: str
                 ) -> dict[str, Any]:
    """The one look at the test split: the winner's candidates evaluated on it, benched again with the
    project's bench params (a quiet machine, full rounds) and gated, in its work dir."""
    from edgeopt.io import optional_json

    keep = [o for o in per_trial if not o.startswith("bench.")]
    params = project_params(params_file, base + keep + best["overrides"] + ["evaluate.split=test"], root)
    workdir = best["workdir"]
    stages = [s for s in variant_stages(workdir, ["gate"]) if s not in variant_stages(workdir, ["export"])]
    states = {}
    for stage in stages:
        states[stage] = run_stage.with_options(name=stage, task_run_name=f"{stage} [winner, test split]")(
            stage, params, workdir, return_state=True)
        if not states[stage].is_completed():
            break
    paths = Paths(Path(workdir))
    gate = (optional_json(paths.report("gate.json")) or {}) if "gate" in states else {}  # it writes one when it runs
    evaluated = "evaluate" in states and states["evaluate"].is_completed()
    evaluate = (optional_json(paths.metrics("evaluate")) or {}) if evaluated else {}
    rows = {r["name"]: r for r in gate.get("rows", [])}
    pick, mine = rows.get(gate.get("selected") or ""), (evaluate.get("candidates") or {}).get(best["pick"]) or {}
    return {"trial": best["trial"], "split": evaluate.get("split"), "images": evaluate.get("images"),
            "stopped": stopped_because(states), "gate_status": gate.get("status"),
            "gate_selected": gate.get("selected"),
            "gate_pick": {k: (pick or {}).get(k) for k in ("accuracy", "drop", "latency_ms", "size_bytes")},
            "search_pick": best["pick"], "search_pick_test_accuracy": mine.get("accuracy"),
            "search_pick_test_drop": mine.get("drop"), "gate_report": str(paths.report("gate.json"))}


@flow(name="edge-search", flow_run_name=search_run_name,
      description="Whole-chain constrained search with Optuna on Dask: best validation accuracy in the deployed "
                  "runtime within the latency, size and MAC budgets; the winner checked once on the test split.")
def search(params_file: str = "params.yaml", overrides: list[str] | None = None, root: str = ".",
           name: str = "search", trials: int | None = None, workers: int | None = None,
           timeout_s: float | None = None, address: str | None = None,
           enqueue: list[dict[str, Any]] | None = None) -> dict[str, Any] | State:
    """Args beyond edge_release's: `name` (results in sweeps/<name>/; the same name resumes the study),
    `trials` / `workers` / `timeout_s` (default: search.* of the params), `address` of a Dask scheduler (default:
    a local cluster of `workers` processes), `enqueue`: points to try first, e.g. [{"prune.ratio": 0.5}] (knobs
    left out are sampled)."""
    logger = get_run_logger()
    quiet_third_party()
    root_path = Path(root).resolve()
    base = list(overrides or [])
    out_dir = root_path / "sweeps" / name
    study_dir = out_dir / "study"
    try:
        params = project_params(params_file, base, root_path)
        given = {"trials": trials, "workers": workers, "timeout_s": timeout_s}  # validated like search.* keys
        settings = project_params(params_file, base + [f"search.{k}={v}" for k, v in given.items() if v is not None],
                                  root_path).search
        if not knobs(params):
            raise ParamsError("search.space is empty: give at least one knob, e.g. prune: {ratio: {low: 0.2, "
                              "high: 0.8}}")
        per_trial = list(settings.trial_overrides) + TRIAL_FIXED
        validate_variants(params_file, base + per_trial, corner_overrides(params), root_path)
        first = [_point(p, params) for p in enqueue or []]
        lock = FileLock(str(out_dir / "search.lock"), timeout=0)
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire()
        except Timeout:
            raise ProjectBusy(f"{out_dir}: another search runs this study; wait for it or use another --name") \
                from None
    except SETUP_ERRORS as exc:
        return _refused(exc)
    try:
        try:
            shared = run_shared_stages(root_path, params_file, base, out_dir / "shared")
            study = st.open_study(study_dir, name, settings, study_terms(params, base + per_trial))
        except SETUP_ERRORS as exc:
            return _refused(exc)
        rerun = st.recover_interrupted(study)
        if rerun:
            logger.warning("trials %s were interrupted by a stopped search: marked failed and enqueued again", rerun)
        for point in first:
            study.enqueue_trial(point, skip_if_exists=True)
        logger.info("search %s: %d trials, %d in flight on %s", name, settings.trials, settings.workers,
                    address or f"a local Dask cluster ({settings.workers} workers x 1 thread)")
        run_study.with_options(task_runner=dask_runner(address, settings.workers))(
            str(study_dir), name, params_file, base + per_trial, str(root_path), str(out_dir),
            settings.model_dump(), str(shared))
        doc = summarize_search(study, settings, params, str(root_path), params_file, base,
                               lambda best: check_winner(best, params_file, base, per_trial, str(root_path)))
    finally:
        lock.release()
    if doc["status"] != "found":
        return Failed(message=doc["message"], data=doc)
    return doc


def _refused(exc: Exception) -> State:
    """The search could not start: bad params (exit 2), a failed shared stage, a busy project or study (1)."""
    get_run_logger().error("%s", exc)
    return Failed(message=str(exc), data={"status": "bad_params" if isinstance(exc, ParamsError) else "not_started"})


def _point(values: dict[str, Any], params: Params) -> dict[str, Any]:
    """An `enqueue` point: knobs of the space only, each value inside its range / among its choices."""
    dists = distributions(params)
    unknown = sorted(set(values) - set(dists))
    if unknown:
        raise ParamsError(f"enqueue: {unknown} are not knobs of search.space ({', '.join(dists)})")
    for key, value in values.items():
        try:
            inside = dists[key]._contains(dists[key].to_internal_repr(value))
        except (ValueError, TypeError):
            inside = False
        if not inside:
            raise ParamsError(f"enqueue: {key}={value!r} is outside search.space ({dists[key]})")
    return dict(values)


def _parse_point(text: str) -> dict[str, Any]:
    """`prune.ratio=0.5,finetune.epochs=2` -> {"prune.ratio": 0.5, "finetune.epochs": 2} (values as YAML)."""
    pairs = [p.strip().split("=", 1) for p in text.split(",") if p.strip()]
    if not pairs or any(len(p) != 2 for p in pairs):
        raise argparse.ArgumentTypeError(f"{text!r}: write KEY=VALUE[,KEY=VALUE...], e.g. prune.ratio=0.5")
    try:
        return {k: yaml.safe_load(v) for k, v in pairs}
    except yaml.YAMLError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: a value is not YAML ({str(exc).splitlines()[0]})") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.search", description=search.description)
    add_params_args(ap)
    ap.add_argument("--name", default="search", help="the study: results in sweeps/NAME/; the same name resumes")
    ap.add_argument("--trials", type=int, help="trials in the study (default search.trials)")
    ap.add_argument("--workers", type=int, help="trials in flight (default search.workers)")
    ap.add_argument("--timeout", dest="timeout_s", type=float, help="seconds (default search.timeout_s)")
    ap.add_argument("--address", help="Dask scheduler address, e.g. tcp://10.0.0.5:8786 (default: local cluster)")
    ap.add_argument("--enqueue", action="append", type=_parse_point, metavar="KEY=VALUE[,KEY=VALUE...]",
                    help="a point to try first (knobs of search.space; the others are sampled); repeatable")
    args = vars(ap.parse_args(argv))
    kwargs = {k: v for k, v in args.items() if v is not None}
    kwargs["params_file"] = kwargs.pop("params")
    state = search(**kwargs, return_state=True)
    doc = state.result(raise_on_failure=False)
    if not state.is_completed():
        print(f"search: {state.message}", file=sys.stderr)
        status = doc.get("status") if isinstance(doc, dict) else None
        return 2 if status == "bad_params" else 3 if status in ("none_feasible", "winner_fails_gate") else 1
    print(doc["message"])
    print(f"release it: {doc['release']['cp']}")
    print(f"        or: {doc['release']['dvc_exp_run']}")
    print(f"benchmark it: {doc['release']['benchmark']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
