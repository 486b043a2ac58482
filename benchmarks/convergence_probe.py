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
at its plateau. One pair of runs on ~1,000 test images moves by about 1 pt by chance, so the probe errs
towards "not converged": a plateaued baseline can fail it, one 2 pt short of its plateau will not pass.
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


def run(real_workdir: Path, overrides: dict[str, Any], base_params: Path, work: Path, in_process: bool,
        factor: float, say) -> dict[str, Any]:
    """Train the baseline of the chain in `real_workdir` for `factor` times its epochs in work/probe/ and
    compare; the result goes into benchmark.json as `convergence_probe`."""
    from benchmarks import chain as ch
    from edgeopt.errors import ParamsError
    from edgeopt.params import load_params

    first = ch.Chain("realistic", real_workdir, {}).metrics("train") or {}
    if first.get("test_accuracy") is None:
        return {"ok": False, "converged": None, "factor": factor,
                "reason": "the realistic chain's baseline has no test accuracy (its train stage did not finish)"}
    try:  # the schedule's length as configured (a run cut short by early stopping still had that schedule)
        epochs = load_params(real_workdir / "params.yaml").train.epochs
        longer = probe_epochs(epochs, factor)
        say(f"[probe] is the baseline converged? training it again for {longer} epochs instead of {epochs} "
            f"(same seed and images)")
        t0 = time.perf_counter()
        c = ch.linked_chain(PROBE_ROOT, work / PROBE_ROOT, {**overrides, "train.epochs": longer}, real_workdir,
                            in_process, say, base_params)
    except ParamsError as exc:
        return {"ok": False, "converged": None, "factor": factor, "reason": f"bad parameters: {exc}"}
    (c.workdir / "metrics" / "train.json").unlink(missing_ok=True)  # an earlier probe's must not count
    c.run(["train"], ch.Estimator(c, {}))
    if c.summary()["ok"]:
        result = compare(first, c.metrics("train") or {}, factor, c.params.train.converged_max_gain)
    else:
        result = {"ok": False, "converged": None, "factor": factor,
                  "reason": f"the probe's train stage failed; see {c.workdir}/logs"}
    result.update(wall_s=round(time.perf_counter() - t0, 1), workdir=str(c.workdir), summary=c.summary())
    say(f"[probe] {describe(result)}")
    return result


def compare(first: dict[str, Any], longer: dict[str, Any], factor: float, limit: float) -> dict[str, Any]:
    """The probe's verdict from two train stages' metrics: converged when the longer run gains <= `limit` pt of
    test accuracy (None when either run has no test accuracy)."""
    def gain(key: str) -> float | None:
        a, b = first.get(key), longer.get(key)
        return None if a is None or b is None else round(b - a, 4)

    test_gain = gain("test_accuracy")
    return {"ok": test_gain is not None, "factor": factor, "limit": limit,
            "epochs": [first.get("epochs_run"), longer.get("epochs_run")],
            "test_accuracy": [first.get("test_accuracy"), longer.get("test_accuracy")],
            "val_accuracy": [first.get("val_accuracy"), longer.get("val_accuracy")],
            "test_gain": test_gain, "val_gain": gain("val_accuracy"),
            "converged": None if test_gain is None else test_gain <= limit}


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
    """What, of a `convergence_probe` read back from benchmark.json, is not as `run` writes it (None: fine)."""
    def nums(v: Any, optional: bool = False) -> bool:
        return isinstance(v, list) and len(v) == 2 and all(
            (optional and x is None) or (isinstance(x, (int, float)) and not isinstance(x, bool)) for x in v)

    def num(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if not isinstance(probe, dict):
        return "convergence_probe is not an object"
    if probe.get("converged") not in (True, False, None) or not isinstance(probe.get("ok"), bool):
        return "convergence_probe needs ok (true/false) and converged (true, false or null)"
    if probe["ok"] and not (nums(probe.get("epochs")) and nums(probe.get("test_accuracy"))
                            and nums(probe.get("val_accuracy"), optional=True) and num(probe.get("test_gain"))
                            and num(probe.get("limit")) and isinstance(probe["converged"], bool)):
        return ("convergence_probe lacks its two runs' epochs and accuracies, test_gain, limit or its verdict")
    return None
