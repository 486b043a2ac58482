"""The convergence probe: would the baseline be more accurate with more epochs? Train it once more and see.

Why a second run: the train stage's own check (best validation accuracy gained in the last 20 % of epochs,
edgeopt.training.convergence) cannot see under-training under one-cycle, or any schedule annealed to zero: the
last 20 % of every run is the annealing phase whatever the run's length. Measured on this project's CIFAR-10
subset (benchmarks/recorded/2026-11-30-longer-training/): seed 0 at 40 epochs passed that check (0.20 pt), yet 60
epochs gave 4.0 pt more test accuracy.

So the benchmark trains the realistic chain's baseline again (same seed, recipe and prepared images, only
`train.epochs` times `factor`) and calls it converged only if the longer run is at most
`train.converged_max_gain` pt more accurate on the test split. The test split, because the targets' accuracy
drop is measured there; the probe selects nothing, it only says whether that comparison is against a baseline
at its plateau. Each run's accuracy on ~1,000 test images has about 1.4 pt of sampling error; both runs are
scored on the same images, which narrows the noise of their difference by an amount not measured here. With a
0.5 pt limit the probe errs towards "not converged": a plateaued baseline can fail it by chance, while a gain
like the 4.0 pt above cannot pass. Measured on three seeds (benchmarks/recorded/2026-11-30-h200-convergence/):
90 -> 135 epochs gave -0.98, +1.08 and +0.49 pt (mean +0.20), so one seed's probe resolves about 1 pt, not 0.5.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

PROBE_ROOT = "probe"  # under the benchmark's work/


def probe_epochs(epochs: int, factor: float) -> int:
    """The longer run's epochs: `factor` times as many, at least one more."""
    return max(epochs + 1, math.ceil(epochs * factor))


def run(real, overrides: dict[str, Any], base_params: Path, work: Path, in_process: bool, factor: float,
        say, cpus: frozenset[int] | None = None, trained: bool | None = None) -> dict[str, Any]:
    """Train the baseline of `real` (the realistic benchmarks.chain.Chain) for `factor` times its epochs in
    work/probe/ and compare; the result goes into benchmark.json as `convergence_probe`. `trained`: whether its
    train stage finished (None: in this process, by `real.runs`; --add-probe knows it from the run's record).
    Never raises: a probe that could not run says why (ok false, converged null)."""
    def failed(reason: str) -> dict[str, Any]:
        return {"ok": False, "converged": None, "factor": factor, "reason": reason}

    if trained is None:
        train = real.runs.get("train")
        trained = train is not None and train.status == "ok"
    first = real.metrics("train") or {}
    if not trained or first.get("test_accuracy") is None:
        # a metrics file left by an earlier run in the same directory must not stand in for this run's
        return failed("the realistic chain's train stage did not finish in this run: no baseline to compare")
    t0 = time.perf_counter()
    try:
        c = _train_longer(real, overrides, base_params, work, in_process, factor, say, cpus)
    except Exception as exc:  # after hours of training, the rest of the benchmark must still run
        return {**failed(f"{type(exc).__name__}: {exc}"), "wall_s": round(time.perf_counter() - t0, 1)}
    if c.summary()["ok"]:
        result = compare(first, c.metrics("train") or {}, factor, c.params.train.converged_max_gain)
    else:
        result = failed(f"the probe's train stage failed; see {c.workdir}/logs")
    result.update(wall_s=round(time.perf_counter() - t0, 1), workdir=str(c.workdir), summary=c.summary())
    say(f"[probe] {describe(result)}")
    return result


def _train_longer(real, overrides: dict[str, Any], base_params: Path, work: Path, in_process: bool,
                  factor: float, say, cpus: frozenset[int] | None = None):
    from benchmarks import chain as ch

    # the schedule's length as configured: a run cut short by early stopping still had that schedule
    epochs = real.params.train.epochs
    longer = probe_epochs(epochs, factor)
    say(f"[probe] is the baseline converged? training it again for {longer} epochs instead of {epochs} "
        f"(same seed and images)")
    c = ch.linked_chain(PROBE_ROOT, work / PROBE_ROOT, {**overrides, "train.epochs": longer}, real.workdir,
                        in_process, say, base_params, cpus)
    (c.workdir / "metrics" / "train.json").unlink(missing_ok=True)  # an earlier probe's must not count
    c.run(["train"], ch.Estimator(c, {}))
    return c


def compare(first: dict[str, Any], longer: dict[str, Any], factor: float, limit: float) -> dict[str, Any]:
    """The probe's verdict from two train stages' metrics: converged when the longer run gains <= `limit` pt of
    test accuracy (ok false, converged None when either run lacks its test accuracy or epochs)."""
    def gain(key: str) -> float | None:
        a, b = first.get(key), longer.get(key)
        return None if a is None or b is None else round(b - a, 4)

    test_gain = gain("test_accuracy")
    epochs = [first.get("epochs_run"), longer.get("epochs_run")]
    ok = test_gain is not None and None not in epochs
    return {"ok": ok, "factor": factor, "limit": limit, "epochs": epochs,
            "test_accuracy": [first.get("test_accuracy"), longer.get("test_accuracy")],
            "val_accuracy": [first.get("val_accuracy"), longer.get("val_accuracy")],
            "test_gain": test_gain, "val_gain": gain("val_accuracy"),
            "converged": test_gain <= limit if ok else None,
            "reason": None if ok else "a train stage's metrics lack test_accuracy or epochs_run"}


def describe(probe: dict[str, Any] | None) -> str:
    """One line for the console and the targets' detail."""
    if not probe:
        return "not run"
    if not probe.get("ok"):
        return f"failed: {probe.get('reason')}"
    (e0, e1), (t0, t1), (v0, v1) = probe["epochs"], probe["test_accuracy"], probe["val_accuracy"]
    verdict = "converged" if probe["converged"] else "NOT converged"
    return (f"{e0} epochs {_pct(t0)} -> {e1} epochs {_pct(t1)} test ({probe['test_gain']:+.2f} pt; val "
            f"{_pct(v0)} -> {_pct(v1)}): {verdict} (limit {probe['limit']} pt)")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} %"


def shape_problem(probe: Any) -> str | None:
    """What, of a `convergence_probe` read back from benchmark.json, is not as `run` writes it (None: fine). The
    verdict must follow from the figures: a hand-edited `converged: true` cannot pass the target."""
    def num(v: Any, optional: bool = False) -> bool:
        return (optional and v is None) or (isinstance(v, (int, float)) and not isinstance(v, bool)
                                            and math.isfinite(v))

    def pair(v: Any, optional: bool = False) -> bool:
        return isinstance(v, list) and len(v) == 2 and all(num(x, optional) for x in v)

    if not isinstance(probe, dict):
        return "convergence_probe is not an object"
    if not isinstance(probe.get("ok"), bool) or probe.get("converged") not in (True, False, None):
        return "convergence_probe needs ok (true/false) and converged (true, false or null)"
    if not all(num(probe.get(k), optional=True) for k in ("wall_s", "test_gain", "val_gain", "limit")):
        return "convergence_probe's wall_s, test_gain, val_gain and limit must be numbers or null"
    if not probe["ok"]:
        return None if probe["converged"] is None else "convergence_probe failed (ok false) yet has a verdict"
    if not (pair(probe.get("epochs")) and pair(probe.get("test_accuracy"))
            and pair(probe.get("val_accuracy"), optional=True) and num(probe.get("test_gain"))
            and num(probe.get("limit"))):
        return "convergence_probe lacks its two runs' epochs and accuracies, test_gain or limit"
    if probe["converged"] is not (probe["test_gain"] <= probe["limit"]):
        return "convergence_probe's verdict does not follow from its test_gain and limit"
    return None
