"""Run pipeline stages in a work directory and record what each one costs.

Each stage runs the way `dvc repro` runs it: `edgeopt <stage> --root WORKDIR --params WORKDIR/params.yaml`
(the module `edgeopt.cli` run as __main__), one process per stage. Its peak memory is the process's VmHWM
(/proc/self/status), read at exit by a three-line wrapper around the CLI: the high-water mark of that process's
own address space, interpreter and library start-up included. Not ru_maxrss: Linux carries the parent's
high-water mark into a child across fork/vfork + exec, so ru_maxrss of a stage started by a big process (this
runner after loading torch, or dvc) reports the parent's size. The wall time is measured around the process;
the stage's own `cost` (metrics/<stage>.json: the stage function alone, memory by ru_maxrss) is recorded next
to it. In-process mode (smoke tests) calls `stages.<name>.run(params, Paths(WORKDIR))` directly: faster,
but peak memory is then the process peak so far.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from edgeopt.errors import EXIT_NONE_PASS as EXIT_GATE_NONE_PASS
from edgeopt.params import Params, load_params

REPO = Path(__file__).resolve().parents[1]
HWM_ENV = "EDGEOPT_BENCH_HWM_FILE"
# `python -m edgeopt.cli ...` plus: write this process's VmHWM (kB) to $EDGEOPT_BENCH_HWM_FILE at exit
CLI_WITH_HWM = (
    "import atexit, os, runpy\n"
    "def _hwm():\n"
    "    try:\n"
    "        kb = next(ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmHWM:'))\n"
    "        open(os.environ['" + HWM_ENV + "'], 'w').write(kb)\n"
    "    except Exception:\n"
    "        pass\n"
    "atexit.register(_hwm)\n"
    "runpy.run_module('edgeopt.cli', run_name='__main__', alter_sys=True)\n")


# stage processes running now (--jobs runs several from threads): a Ctrl-C in the main thread stops them all
_LIVE: set[subprocess.Popen] = set()
_LIVE_LOCK = threading.Lock()
_STOPPING = threading.Event()


def start(cmd: list[str], cpus: frozenset[int] | None, **kw) -> subprocess.Popen:
    """Popen, confined to `cpus` (with OpenMP / MKL pools sized to match) and registered for stop_all()."""
    env = dict(kw.pop("env", None) or os.environ)
    if cpus:
        env.update(OMP_NUM_THREADS=str(len(cpus)), MKL_NUM_THREADS=str(len(cpus)))
    with _LIVE_LOCK:
        if _STOPPING.is_set():
            raise KeyboardInterrupt("the benchmark is stopping")
        proc = subprocess.Popen(cmd, env=env, **kw)
        _LIVE.add(proc)
    confine(proc.pid, cpus)
    return proc


def finished(proc: subprocess.Popen) -> None:
    with _LIVE_LOCK:
        _LIVE.discard(proc)


def stop_all() -> None:
    """Kill every stage process still running and start no more (the benchmark was interrupted)."""
    with _LIVE_LOCK:
        _STOPPING.set()
        for proc in _LIVE:
            with contextlib.suppress(OSError):
                proc.kill()


def pipeline_stages() -> list[str]:
    """The stage order of dvc.yaml (edgeopt.pipeline), as `dvc repro` runs them."""
    from edgeopt.pipeline import stage_names

    return stage_names(REPO)


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f}s"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m < 60 else f"{m // 60}h{m % 60:02d}m"


@dataclass
class StageRun:
    stage: str
    status: str = "not_run"          # ok | failed | none_pass (gate) | skipped | not_run
    exit_code: int | None = None
    wall_s: float | None = None      # around the process (subprocess) or the call (in-process)
    peak_rss_mb: float | None = None  # the stage process's peak RSS (subprocess); process peak so far otherwise
    stage_wall_s: float | None = None  # cost.wall_s recorded by the stage itself (the stage function only)
    stage_peak_rss_mb: float | None = None
    eta_s: float | None = None
    log: str | None = None
    reason: str | None = None


@dataclass
class Chain:
    """One pipeline run in its own work directory with its own params.yaml."""
    label: str
    workdir: Path
    overrides: dict[str, Any]
    in_process: bool = False
    say: Callable[[str], None] = print
    runs: dict[str, StageRun] = field(default_factory=dict)
    params: Params | None = None
    cpus: frozenset[int] | None = None  # --jobs: the cores its stage processes may use (None: every core)

    @property
    def params_file(self) -> Path:
        return self.workdir / "params.yaml"

    def setup(self, base_params: Path) -> Params:
        """Write WORKDIR/params.yaml: the project's params.yaml with the overrides, validated, fully resolved."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        params = load_params(base_params, dict(self.overrides))
        header = (f"# written by `python -m benchmarks` ({self.label} chain): {base_params} with these "
                  f"overrides:\n" + "".join(f"#   {k}={json.dumps(v)}\n" for k, v in self.overrides.items()))
        self.params_file.write_text(header + yaml.safe_dump(params.dump(), sort_keys=False))
        self.params = load_params(self.params_file)
        return self.params

    def metrics(self, stage: str) -> dict[str, Any] | None:
        path = self.workdir / "metrics" / f"{stage}.json"
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def run(self, stages: list[str], eta: Callable[[str], float | None] | None = None,
            total: int | None = None) -> bool:
        """Run stages in order; False when one failed (the rest are marked not_run). The gate passing no
        candidate is recorded (status none_pass) and skips promote, not the rest."""
        total = total or len(stages)
        for name in stages:
            run = self.runs.setdefault(name, StageRun(name))
            if self._blocked():
                run.status, run.reason = "not_run", "an earlier stage failed"
                continue
            gate = self.runs.get("gate")
            if name == "promote" and gate is not None and gate.status == "none_pass":
                run.status, run.reason = "skipped", "the gate passed no candidate: nothing to promote"
                self.say(f"[{self.label}] {name}: skipped ({run.reason})")
                continue
            run.eta_s = eta(name) if eta else None
            index = len([r for r in self.runs.values() if r.status != "not_run" or r is run])
            self.say(f"[{self.label}] ({index}/{total}) {name}: running, ETA {fmt_s(run.eta_s)}")
            (self._run_in_process if self.in_process else self._run_subprocess)(run)
            cost = (self.metrics(name) or {}).get("cost") or {}
            if run.exit_code in (0, EXIT_GATE_NONE_PASS) and cost:
                run.stage_wall_s, run.stage_peak_rss_mb = cost.get("wall_s"), cost.get("peak_rss_mb")
            if run.exit_code == 0:
                run.status = "ok"
            elif run.exit_code == EXIT_GATE_NONE_PASS and name == "gate":
                run.status = "none_pass"
            else:
                run.status = "failed"
            tail = f", peak {run.peak_rss_mb:.0f} MB" if run.peak_rss_mb else ""
            self.say(f"[{self.label}] {name}: {run.status} in {fmt_s(run.wall_s)} (ETA was {fmt_s(run.eta_s)})"
                     f"{tail}" + (f": {run.reason}" if run.status != "ok" and run.reason else ""))
        return not self._blocked()

    def _blocked(self) -> bool:
        return any(r.status == "failed" for r in self.runs.values())

    def _run_subprocess(self, run: StageRun) -> None:
        log = self.workdir / "logs" / f"{run.stage}.log"
        run.log = str(log)
        hwm = self.workdir / "logs" / f".{run.stage}.hwm"
        hwm.unlink(missing_ok=True)
        cmd = [sys.executable, "-c", CLI_WITH_HWM, run.stage, "--root", str(self.workdir),
               "--params", str(self.params_file)]
        env = {**os.environ, "EDGEOPT_NO_PROGRESS": "1", "PYTHONUNBUFFERED": "1", HWM_ENV: str(hwm)}
        with open(log, "wb") as fh:
            t0 = time.perf_counter()
            proc = start(cmd, self.cpus, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env=env)
            try:
                _, status, usage = os.wait4(proc.pid, 0)  # this child's rusage (fallback for memory)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            finally:
                finished(proc)
            proc.returncode = os.waitstatus_to_exitcode(status)
            run.wall_s = round(time.perf_counter() - t0, 3)
        run.exit_code = proc.returncode
        try:
            run.peak_rss_mb = round(int(hwm.read_text()) / 1024.0, 1)
            hwm.unlink()
        except (OSError, ValueError):  # no /proc (not Linux) or killed before exit: the kernel's figure
            run.peak_rss_mb = round(usage.ru_maxrss / 1024.0, 1)
        if run.exit_code != 0:
            run.reason = last_error_line(log) or f"exit code {run.exit_code}"

    def _run_in_process(self, run: StageRun) -> None:
        from edgeopt.errors import exit_code_for
        from edgeopt.paths import Paths
        from edgeopt.memory import peak_rss_mb

        log = self.workdir / "logs" / f"{run.stage}.log"
        run.log = str(log)
        t0 = time.perf_counter()
        with open(log, "w") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
            try:
                params = load_params(self.params_file)
                importlib.import_module(f"stages.{run.stage}").run(params, Paths(self.workdir))
                run.exit_code = 0
            except Exception as exc:  # recorded like the CLI would map it; the chain stops on failures
                run.exit_code = exit_code_for(exc) or 1
                run.reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
                print(f"{run.reason}", file=fh)
        run.wall_s = round(time.perf_counter() - t0, 3)
        run.peak_rss_mb = round(peak_rss_mb(), 1)

    def summary(self) -> dict[str, Any]:
        rows = {name: asdict(r) for name, r in self.runs.items()}
        done = [r for r in self.runs.values() if r.wall_s is not None]
        return {"workdir": str(self.workdir), "params_file": str(self.params_file), "overrides": self.overrides,
                "execution": "in-process" if self.in_process else "subprocess per stage",
                "peak_rss_note": ("peak_rss_mb: the process peak so far (in-process)" if self.in_process else
                                  "peak_rss_mb: VmHWM of the stage's own process; stage_peak_rss_mb is the "
                                  "stage's cost.peak_rss_mb (ru_maxrss, which includes the parent's high-water "
                                  "mark inherited across exec)"),
                "stages": rows,
                "total_wall_s": round(sum(r.wall_s for r in done), 3),
                "total_stage_wall_s": round(sum(r.stage_wall_s or 0.0 for r in done), 3),
                "max_peak_rss_mb": max((r.peak_rss_mb for r in done if r.peak_rss_mb), default=None),
                "ok": not self._blocked()}


def confine(pid: int, cpus: frozenset[int] | None) -> None:
    """Keep a just-started process (and the threads it starts: torch, OpenMP and OpenVINO size their pools by
    it) on `cpus`; None leaves it on every core."""
    if cpus and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(ProcessLookupError):  # it already exited
            os.sched_setaffinity(pid, cpus)


def linked_chain(label: str, workdir: Path, overrides: dict[str, Any], real_workdir: Path, in_process: bool,
                 say: Callable[[str], None], base_params: Path, cpus: frozenset[int] | None = None) -> Chain:
    """A chain in `workdir` set up with `overrides` whose data/prepared links to the realistic chain's (the same
    images and splits, not copied); `cpus`: the cores its stages may use (--jobs)."""
    c = Chain(label, workdir, overrides, in_process, say, cpus=cpus)
    c.setup(base_params)
    (c.workdir / "data").mkdir(exist_ok=True)
    link = c.workdir / "data" / "prepared"
    if not link.exists():
        os.symlink((real_workdir / "data" / "prepared").resolve(), link)
    return c


def last_error_line(log: Path) -> str | None:
    """The most telling line of a failed stage's output: an `edgeopt <stage>: error:` line, else the last."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return None
    for ln in reversed(lines):
        if ": error:" in ln or "Error" in ln.split(":", 1)[0]:
            return ln[:400]
    return lines[-1][:400] if lines else None


# --- ETA ----------------------------------------------------------------------------------------------------

FIXED_S = {"prepare": 15, "validate": 15, "prune": 10, "sensitivity": 40, "quantize": 90, "export": 40,
           "evaluate": 25, "bench": 30, "gate": 3, "promote": 3, "report": 10}


class Estimator:
    """ETA of the next stage: its time in the last benchmark run of this mode when one exists, else a model
    from the measured training throughput (epochs x images / images-per-s, scaled by MACs) plus fixed guesses.
    """

    def __init__(self, chain: Chain, previous: dict[str, float] | None = None, startup_s: float = 4.0,
                 train_ips: float | None = None):
        self.chain, self.previous, self.startup_s, self.train_ips = chain, previous or {}, startup_s, train_ips

    def __call__(self, stage: str) -> float | None:
        if stage in self.previous:
            return self.previous[stage]
        extra = 0.0 if self.chain.in_process else self.startup_s
        try:
            return extra + self._model(stage)
        except Exception:  # an estimate must never stop the benchmark
            return None

    def _model(self, stage: str) -> float:
        p = self.chain.params
        assert p is not None
        prep = self.chain.metrics("prepare") or {}
        n_train, n_val = prep.get("train_images", 3500), prep.get("val_images", 500)
        ips = self.train_ips or (2000.0 if p.model.arch == "small_cnn" else 150.0)
        base_macs = (self.chain.metrics("train") or {}).get("macs") or 1
        pruned = (self.chain.metrics("prune") or {}).get("macs") or base_macs * 0.3
        ratio = max(pruned / base_macs, 0.15)  # small models do not train proportionally faster

        def epoch(rel: float, teacher_rel: float = 0.0) -> float:
            return (n_train * (rel + teacher_rel / 3) + n_val * rel / 3) / ips

        if stage == "train":
            return p.train.epochs * epoch(1.0) + 10
        if stage == "finetune":
            return p.finetune.epochs * epoch(ratio, 1.0 if p.finetune.kd else 0.0) + 10
        if stage == "cluster":
            return p.cluster.finetune_epochs * epoch(ratio) + 10
        if stage == "distill":
            s = student_share(p)
            teacher = ratio if p.distill.teacher == "finetuned" else 1.0
            n = p.distill.epochs * epoch(s, teacher)
            return n + (p.distill.epochs * epoch(s) if p.distill.also_without_kd else 0.0) + 10
        return float(FIXED_S.get(stage, 10))


def student_share(p: Params) -> float:
    """Rough student/teacher compute ratio for the ETA (no torch here: the runner stays small so the stage
    processes it starts do not inherit a large memory high-water mark)."""
    if p.distill.student_arch == p.model.arch:
        return max((p.distill.student_width / p.model.width) ** 2, 0.05)
    return 0.1 * p.distill.student_width ** 2 if p.distill.student_arch == "small_cnn" else 0.5


def run_setup(doc: dict[str, Any]) -> dict[str, Any]:
    """What, besides the params, sets a run's stage times: the machine and how many jobs shared it (--jobs)."""
    hw = (doc.get("environment") or {}).get("hardware") or {}
    return {"cpu": hw.get("cpu"), "cores": hw.get("cores"), "gpu": hw.get("gpu"),
            "jobs": (doc.get("settings") or {}).get("jobs") or 1}


def previous_timings(results_root: Path, mode: str, label: str, exclude: Path | None = None,
                     overrides: dict[str, Any] | None = None, setup: dict[str, Any] | None = None
                     ) -> dict[str, float]:
    """Per-stage wall times of the newest earlier benchmark of this mode whose chain ran the same `overrides`
    and, given `setup` (run_setup of this run), on the same machine with as many jobs (for ETAs: a run with other
    epochs, on another machine or sharing the cores would mislead them; the estimate model is used instead)."""
    docs = sorted(results_root.glob("*/benchmark.json"), reverse=True)
    for path in docs:
        if exclude is not None and path.parent.resolve() == exclude.resolve():
            continue
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if doc.get("mode") != mode:
            continue
        ran = ((doc.get("settings") or {}).get("overrides") or {}).get(label)
        if overrides is not None and json.loads(json.dumps(overrides)) != ran:
            continue
        if setup is not None and run_setup(doc) != setup:
            continue
        stages = (doc.get("cost", {}).get(label) or {}).get("stages") or {}
        out = {k: v["wall_s"] for k, v in stages.items() if v.get("status") in ("ok", "none_pass") and v.get("wall_s")}
        if out:
            return out
    return {}
