"""Training seeds of the headline rows: the external peer (benchmarks/reference.py) and the pipeline's train ..
evaluate, one seed at a time, on the realistic chain's prepared images (the test split stays the same)."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.chain import fmt_s

REPO = Path(__file__).resolve().parents[1]


def run_reference(prepared: Path, out: Path, profile, say, doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The bare script + its pruned/KD model, one process per seed (alone on the machine: never beside a stage)."""
    runs = []
    for seed in range(profile.seeds):
        run = reference_seed(prepared, out, seed, profile, say, doc)
        if run is None:
            break
        runs.append(run)
    doc["reference"] = runs
    return runs


def reference_seed(prepared: Path, out: Path, seed: int, profile, say, doc: dict[str, Any],
                   cpus: frozenset[int] | None = None) -> dict[str, Any] | None:
    """One seed of the external peer in its own process (on `cpus`, --jobs: its share of the cores); None (and an
    entry in doc["errors"]) when it failed."""
    import json
    import subprocess

    from benchmarks.chain import finished, start

    epochs, kd_epochs = profile.reference_epochs
    say(f"[reference] seed {seed}: bare ResNet-18 script {epochs} epochs, then prune 50 % + {kd_epochs} epochs KD")
    t0 = time.perf_counter()
    proc = start([sys.executable, "-m", "benchmarks.reference", str(prepared), str(out / f"seed{seed}"), str(seed),
                  str(epochs), str(kd_epochs)], cpus, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                 text=True)
    try:
        stdout, stderr = proc.communicate()
    except BaseException:  # as subprocess.run does
        proc.kill()
        proc.wait()
        raise
    finally:
        finished(proc)
    line = next((ln for ln in stdout.splitlines() if ln.startswith("EDGEOPT-REFERENCE ")), None)
    if proc.returncode != 0 or line is None:
        doc["errors"].append(f"reference seed {seed}: exit {proc.returncode}: {stderr.strip()[-500:]}")
        say(f"[reference] seed {seed}: failed")
        return None
    run = {**json.loads(line.split(" ", 1)[1]), "wall_s": round(time.perf_counter() - t0, 1)}
    say(f"[reference] seed {seed}: done in {fmt_s(run['wall_s'])}")
    return run


def run_seeds(real, overrides: dict[str, Any], base_params: Path, stages: list[str], work: Path, in_process: bool,
              profile, say, doc: dict[str, Any]) -> dict[str, list[float]]:
    """Seeds 1.. of the pipeline itself: train .. evaluate on the same prepared images (the test split stays the
    same), so the headline rows get a mean and a spread. Returns {row name: [accuracy of seed 1, ...]}."""
    from benchmarks.compression import record_seed

    out: dict[str, list[float | None]] = {}
    doc["seeds"] = {"seeds": list(range(profile.seeds)), "chains": {}}
    for seed in range(1, profile.seeds):
        summary, accs = pipeline_seed(real.workdir, overrides, base_params, stages, work, in_process, seed, say)
        doc["seeds"]["chains"][str(seed)] = summary
        record_seed(out, accs)
    doc["seeds"]["accuracy"] = out
    return out


def pipeline_seed(real_workdir: Path, overrides: dict[str, Any], base_params: Path, stages: list[str], work: Path,
                  in_process: bool, seed: int, say, cpus: frozenset[int] | None = None
                  ) -> tuple[dict[str, Any], dict[str, float]]:
    """train .. evaluate with `seed` on the realistic chain's prepared images (linked, not copied), its stages on
    `cpus` (--jobs). Returns the chain's cost summary and {row name: test accuracy} (the candidates in their
    runtime, PyTorch for the baseline)."""
    from benchmarks import chain as ch
    from benchmarks.compression import PYTORCH_ROW

    c = ch.linked_chain(f"seed{seed}", work / f"seed{seed}", {**overrides, "seed": seed}, real_workdir,
                        in_process, say, base_params, cpus)
    c.run(stages[stages.index("train"):stages.index("evaluate") + 1], ch.Estimator(c, {}))
    accs = {name: round(row["accuracy"], 4) for name, row in ((c.metrics("evaluate") or {}).get("candidates")
                                                                or {}).items() if row.get("accuracy") is not None}
    train = c.metrics("train") or {}
    if train.get("test_accuracy") is not None:
        accs[PYTORCH_ROW] = round(train["test_accuracy"], 4)
    return c.summary(), accs


def core_shares(jobs: int) -> list[frozenset[int] | None]:
    """This process's cores in `jobs` near-equal, disjoint shares (one core each, reused round-robin, when there
    are fewer cores than jobs); [None] * jobs where the OS cannot pin processes."""
    if not hasattr(os, "sched_getaffinity"):
        return [None] * jobs
    cores = sorted(os.sched_getaffinity(0))
    if jobs >= len(cores):
        return [frozenset({cores[i % len(cores)]}) for i in range(jobs)]
    size, extra = divmod(len(cores), jobs)
    bounds = [i * size + min(i, extra) for i in range(jobs + 1)]
    return [frozenset(cores[bounds[i]:bounds[i + 1]]) for i in range(jobs)]


def train_side_by_side(real, stages: list[str], est, jobs: int, overrides: dict[str, Any], base_params: Path,
                       work: Path, profile, probe: bool, say, doc: dict[str, Any]) -> tuple[list, dict]:
    """--jobs N > 1 (a GPU, or many cores): the realistic chain up to evaluate, every seed of the peer, seeds 1..
    of the pipeline and the convergence probe as N processes at a time, each on its own share of the cores
    (stage processes size their thread pools by it, instead of N pools of every core fighting); what
    `run_reference`, `run_seeds` and the probe do one after another. The realistic chain's bench .. report are
    left to the caller, to run alone on every core: no latency is measured while anything trains. Returns (the
    peer's runs, {row: [accuracy of seed 1, ...]})."""
    import queue
    from concurrent.futures import ThreadPoolExecutor

    from benchmarks import chain as ch
    from benchmarks import convergence_probe
    from benchmarks.compression import record_seed

    prepared = real.workdir / "data" / "prepared"
    first, last = stages.index("train"), stages.index("bench")
    workers = min(jobs, 1 + profile.seeds + (profile.seeds - 1) + int(probe))  # no share left idle
    free: queue.SimpleQueue = queue.SimpleQueue()
    for share in core_shares(workers):
        free.put(share)

    def on_a_share(what: str, fn, *args):
        """fn on a free share of the cores; None (and the error in the doc) if it raised: the other jobs and
        the run's record go on."""
        share = free.get()  # as many shares as workers: one is always free for a running task
        try:
            return fn(*args, cpus=share)
        except Exception as exc:
            doc["errors"].append(f"{what}: {type(exc).__name__}: {exc}")
            say(f"[jobs] {what} failed: {type(exc).__name__}: {exc}")
            return None
        finally:
            free.put(share)

    probe_run: dict[str, Any] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        def realistic(cpus):
            real.cpus = cpus
            try:
                real.run(stages[first:first + 1], est, total=len(stages))
                if probe:  # it compares with this train stage, so it starts once that is done
                    probe_run["future"] = pool.submit(on_a_share, "convergence probe", convergence_probe.run, real,
                                                      overrides, base_params, work, False, profile.probe_factor, say)
                real.run(stages[first + 1:last], est, total=len(stages))
            finally:
                real.cpus = None  # bench .. report: every core
            return True

        try:
            chain = pool.submit(on_a_share, "the realistic chain", realistic)
            peers = [pool.submit(on_a_share, f"reference seed {s}", reference_seed, prepared, work / "reference", s,
                                 profile, say, doc) for s in range(profile.seeds)]
            seeds = [pool.submit(on_a_share, f"pipeline seed {s}", pipeline_seed, real.workdir, overrides,
                                 base_params, stages, work, False, s, say) for s in range(1, profile.seeds)]
            chain.result()
            runs = [f.result() for f in peers]
            seed_results = [f.result() for f in seeds]
            probe_result = probe_run["future"].result() if "future" in probe_run else None
        except BaseException:  # Ctrl-C, or a kill: stop every job's process, not only this thread's
            ch.stop_all()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    doc["reference"] = runs[:runs.index(None)] if None in runs else runs  # as run_reference: 0..k-1
    accs: dict[str, list[float | None]] = {}
    doc["seeds"] = {"seeds": list(range(profile.seeds)), "chains": {}}
    for seed, result in enumerate(seed_results, start=1):
        summary, seed_accs = result or ({"ok": False, "workdir": str(work / f"seed{seed}")}, {})
        doc["seeds"]["chains"][str(seed)] = summary
        record_seed(accs, seed_accs)
    doc["seeds"]["accuracy"] = accs
    if probe:
        doc["convergence_probe"] = probe_result or {"ok": False, "converged": None,
                                                    "factor": profile.probe_factor, "reason": "the probe did not run"}
        if not doc["convergence_probe"].get("ok"):
            doc["errors"].append(f"convergence probe: {doc['convergence_probe'].get('reason')}")
    return doc["reference"], accs
