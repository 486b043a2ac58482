"""Recorded as run (from an ignored gpurun/ folder holding this file, params.yaml = the recorded 3-seed run's
realistic params, prepared/ = its prepared images, and dvclive_stub.py as dvclive/__init__.py on PYTHONPATH).

One-shot experiment on the lent GPU: the realistic chain's stages (edgeopt CLI, train.device auto -> cuda)
on the benchmark's prepared CIFAR subset, 3 seeds. Jobs run in parallel up to MAXPAR, dependants start when
their baseline is done, everything stops at the deadline and the results are tarred into $OUT.

    OUT=/tmp/o WORK=/tmp/w EPOCH_SCALE=0.02 MAXPAR=1 python gpurun/jobs.py     # local plumbing check
"""
import json
import math
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PY = os.environ.get("PY", sys.executable)
OUT = Path(os.environ.get("OUT", "/tmp/gpuout"))
WORK = Path(os.environ.get("WORK", "/tmp/gpuwork"))
T0 = time.time()
DEADLINE = T0 + float(os.environ.get("BUDGET_S", "470"))
SCALE = float(os.environ.get("EPOCH_SCALE", "1"))
MAXPAR = int(os.environ.get("MAXPAR", "8"))
SEEDS = [0, 1, 2]


def ep(n):
    return max(1, math.ceil(n * SCALE))


def cli(stage, root, *sets):
    args = [PY, "-m", "edgeopt.cli", stage, "--root", str(root), "--params", str(HERE / "params.yaml")]
    for s in sets:
        args += ["--set", s]
    return args


def make_root(name, baseline_of=None):
    root = WORK / name
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "models").mkdir(exist_ok=True)
    link = root / "data" / "prepared"
    if not link.exists():
        link.symlink_to(HERE / "prepared")
    if baseline_of:
        b = root / "models" / "baseline.pt"
        if not b.exists():
            b.symlink_to(WORK / baseline_of / "models" / "baseline.pt")
    return root


JOBS = []  # (name, deps, argv lists run in sequence), in priority order


def chain(s, tiers):
    if "base" in tiers:
        for e in (90, 135):
            JOBS.append((f"b{e}_s{s}", [], [cli("train", WORK / f"b{e}_s{s}", f"train.epochs={ep(e)}", f"seed={s}")]))
    if "kd" in tiers:
        JOBS.append((f"kd90_s{s}", [f"b90_s{s}"], [cli("distill", WORK / f"kd90_s{s}", f"distill.epochs={ep(90)}",
                                                        "distill.also_without_kd=false", f"seed={s}")]))
        JOBS.append((f"ft40_s{s}", [f"b90_s{s}"], [cli("prune", WORK / f"ft40_s{s}", f"seed={s}"),
                                                    cli("finetune", WORK / f"ft40_s{s}", f"finetune.epochs={ep(40)}",
                                                        f"seed={s}")]))
        JOBS.append((f"kdr90_s{s}", [f"b90_s{s}"], [cli("distill", WORK / f"kdr90_s{s}", f"distill.epochs={ep(90)}",
                                                         "distill.also_without_kd=false", "distill.student_arch=resnet18",
                                                         "distill.student_width=0.3125", f"seed={s}")]))
    if "short" in tiers:
        for e in (40, 60):
            JOBS.append((f"b{e}_s{s}", [], [cli("train", WORK / f"b{e}_s{s}", f"train.epochs={ep(e)}", f"seed={s}")]))
        JOBS.append((f"kd40_s{s}", [f"b90_s{s}"], [cli("distill", WORK / f"kd40_s{s}", f"distill.epochs={ep(40)}",
                                                        "distill.also_without_kd=false", f"seed={s}")]))
        JOBS.append((f"ft15_s{s}", [f"b90_s{s}"], [cli("prune", WORK / f"ft15_s{s}", f"seed={s}"),
                                                    cli("finetune", WORK / f"ft15_s{s}", f"finetune.epochs={ep(15)}",
                                                        f"seed={s}")]))


JOBS.append(("smoke", [], [[PY, "-m", "benchmarks.gpu_smoke", "--out", str(WORK / "gpu_smoke.json")]]))
for s in SEEDS:
    chain(s, ("base",))
for s in SEEDS:
    chain(s, ("kd",))
for s in SEEDS:
    chain(s, ("short",))
for s in (3, 4):
    chain(s, ("base", "kd"))
SEEDS = [0, 1, 2, 3, 4]

ONLY = [j for j in os.environ.get("JOBS_ONLY", "").split(",") if j]
if ONLY:
    JOBS = [j for j in JOBS if j[0] in ONLY]


def main():
    WORK.mkdir(parents=True, exist_ok=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (WORK / "logs").mkdir(exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="2", EDGEOPT_NO_PROGRESS="1", PYTHONUNBUFFERED="1")
    for name, deps, _ in JOBS:
        make_root(name, baseline_of=deps[0] if deps else None)
    state = {n: "wait" for n, _, _ in JOBS}
    running = {}  # name -> (Popen, remaining argv lists, log file, started)
    timing = {}
    while time.time() < DEADLINE:
        for name, (proc, rest, log, started) in list(running.items()):
            rc = proc.poll()
            if rc is None:
                continue
            if rc == 0 and rest:
                running[name] = (subprocess.Popen(rest[0], stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env),
                                 rest[1:], log, started)
                continue
            log.close()
            del running[name]
            state[name] = "ok" if rc == 0 else f"failed rc={rc}"
            timing[name] = round(time.time() - started, 1)
            print(f"[{time.time() - T0:6.0f}s] {name}: {state[name]} in {timing[name]} s", flush=True)
        for name, deps, argvs in JOBS:
            if len(running) >= MAXPAR or state[name] != "wait":
                continue
            if any(state[d].startswith("failed") for d in deps):
                state[name] = "skipped (dependency failed)"
                continue
            if all(state[d] == "ok" for d in deps):
                log = open(WORK / "logs" / f"{name}.log", "w")
                running[name] = (subprocess.Popen(argvs[0], stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env),
                                 argvs[1:], log, time.time())
                state[name] = "running"
                print(f"[{time.time() - T0:6.0f}s] {name}: started", flush=True)
        if not running and all(v != "wait" for v in state.values()):
            break
        time.sleep(1)
    for name, (proc, _, log, started) in running.items():
        proc.kill()
        state[name] = "killed at the deadline"
        timing[name] = round(time.time() - started, 1)
    (WORK / "state.json").write_text(json.dumps({"state": state, "wall_s": timing,
                                                 "total_s": round(time.time() - T0, 1)}, indent=1))
    print(json.dumps(state, indent=1), flush=True)
    with tarfile.open(OUT / "results.tar.gz", "w:gz") as tar:
        for p in sorted(WORK.rglob("*")):
            if p.is_file() and not p.is_symlink() and p.suffix in (".json", ".log"):
                tar.add(p, arcname=str(p.relative_to(WORK)))
    for tarname, group, seeds in (("kd90", "kd90", SEEDS), ("ft40_a", "ft40", SEEDS[:3]), ("ft40_b", "ft40", SEEDS[3:]),
                                  ("kdr90_a", "kdr90", SEEDS[:3]), ("kdr90_b", "kdr90", SEEDS[3:])):
        with tarfile.open(OUT / f"models_{tarname}.tar", "w") as tar:
            for s in seeds:
                for f in ("student.pt", "finetuned.pt"):
                    p = WORK / f"{group}_s{s}" / "models" / f
                    if p.is_file():
                        tar.add(p, arcname=f"{group}_s{s}/{f}")


if __name__ == "__main__":
    main()
