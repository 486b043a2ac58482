"""The search's Optuna study: persisted in `sweeps/<name>/study/journal.log` (JournalStorage, file backend: one
append-only log that several processes share and that a kill cannot corrupt), TPE seeded and constraint-aware,
a MedianPruner fed with the trials' intermediate validation accuracies.

Resuming: a trial a killed search left RUNNING is marked failed (`interrupted`) and its params are enqueued again,
so it reruns (as a new trial number); completed, pruned and failed trials are kept and never rerun.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from edgeopt.errors import ParamsError
from edgeopt.params import Search

JOURNAL = "journal.log"
FINAL = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
optuna.logging.set_verbosity(optuna.logging.WARNING)  # the flow logs each trial itself


def storage(study_dir: str | Path) -> optuna.storages.JournalStorage:
    from optuna.storages.journal import JournalFileBackend

    Path(study_dir).mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(Path(study_dir) / JOURNAL)))


def violation(trial: FrozenTrial) -> tuple[float]:
    """Optuna's constraint: how far the trial's closest candidate is over the budgets (<= 0: feasible). A pruned
    trial has no verdict: neutral."""
    return (float((trial.user_attrs.get("result") or {}).get("violation", 0.0)),)


def pruner(settings: Search) -> optuna.pruners.BasePruner:
    if settings.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=settings.startup_trials, n_warmup_steps=0)


def sampler(settings: Search, done: int = 0) -> optuna.samplers.BaseSampler:
    """TPE, seeded with search.seed + the trials the study already holds (a resumed study must not draw the
    same random points again); multivariate (the knobs interact: ratio x epochs), constant liar (trials in flight
    are not proposed again), constraint-aware (infeasible trials inform it without counting as good)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=(settings.seed + done) % 2**32,
                                          n_startup_trials=settings.startup_trials,
                                          multivariate=True, constant_liar=True, constraints_func=violation)


def open_study(study_dir: str | Path, name: str, settings: Search, terms: dict[str, Any]) -> optuna.Study:
    """Create the study or load it. `terms` (search space, budgets, params overrides) decided every stored
    trial's feasibility and objective: a study made under other terms is refused (its trials would not compare):
    resume it with the same ones or start a new search (--name)."""
    store = storage(study_dir)
    try:
        done = len(store.get_all_trials(store.get_study_id_from_name(name), deepcopy=False))
    except KeyError:
        done = 0
    study = optuna.create_study(study_name=name, storage=store, direction="maximize",
                                sampler=sampler(settings, done), pruner=pruner(settings), load_if_exists=True)
    recorded = study.user_attrs.get("terms")
    wanted = json.loads(json.dumps(terms, default=lambda r: r.model_dump()))
    if recorded is None:
        study.set_user_attr("terms", wanted)
    elif recorded != wanted:
        changed = sorted(k for k in set(recorded) | set(wanted) if recorded.get(k) != wanted.get(k))
        raise ParamsError(f"{study_dir}: the study {name!r} was run with other {' and '.join(changed)} "
                          f"({', '.join(f'{k}: {recorded.get(k)}' for k in changed)}); resume it with those or "
                          f"start a new search (--name)")
    return study


def trial_handle(study_dir: str | Path, name: str, settings: Search, trial_id: int) -> optuna.Trial:
    """The running trial from another process (a Dask worker): reports intermediate values, asks the pruner."""
    study = optuna.load_study(study_name=name, storage=storage(study_dir), pruner=pruner(settings))
    return optuna.Trial(study, trial_id)


def recover_interrupted(study: optuna.Study) -> list[int]:
    """Trials left RUNNING by a killed search: failed (`interrupted`), their params enqueued again. Only call
    while no other process runs this study (the search holds its lock)."""
    lost = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in lost:
        study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
        study._storage.set_trial_user_attr(t._trial_id, "reason", "interrupted (the search was stopped); rerun")
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"rerun_of": t.number})
    return [t.number for t in lost]


def twin(study: optuna.Study, params: dict[str, Any]) -> FrozenTrial | None:
    """A complete or pruned trial with exactly these params (its outcome is known: no need to run it again)."""
    return next((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
                 if t.params == params), None)


def copy_outcome(study: optuna.Study, trial: optuna.Trial, same: FrozenTrial) -> None:
    """Tell `trial` the outcome of its twin `same` (marked `duplicate_of`)."""
    trial.set_user_attr("duplicate_of", same.number)
    for key in ("result", "workdir"):
        if key in same.user_attrs:
            trial.set_user_attr(key, same.user_attrs[key])
    for step, value in sorted(same.intermediate_values.items()):
        trial.report(value, step)
    if same.state == TrialState.PRUNED:
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, same.value)


def finished(study: optuna.Study) -> list[FrozenTrial]:
    """Trials that count toward search.trials: complete, pruned or failed, but not interrupted (those rerun)."""
    return [t for t in study.get_trials(deepcopy=False, states=FINAL) if not t.user_attrs.get("interrupted")]
