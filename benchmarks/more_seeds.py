"""More training seeds for a finished run: `python -m benchmarks --add-seeds DIR [--seeds N]`.

A full run costs about 70 minutes per seed on 2 cores (edgeopt's chain and the external peer both train), so the
mode's three seeds rarely fit in one sitting. This extends DIR (a finished run with its work/ kept) one seed at a
time: the peer's seed k, then the pipeline's train .. evaluate with seed k on the same prepared images, exactly
what a multi-seed run does. After each seed the means, spreads and targets are recomputed and DIR/benchmark.json
and .md rewritten, so stopping between seeds leaves a whole result. Seed 0's sizes, MACs and latencies stay as
measured: other seeds only retrain.

Seeds of another recipe are not seeds: it refuses (exit 2) when the new seeds would train with other params,
other peer epochs, other numeric libraries, on another CPU model (torch's CPU results differ across models), on
another device than the first run's peer or train stage (GPU vs CPU, or another GPU model), or with training
code changed since the commit that ran the first seed.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

from benchmarks.convergence_probe import shape_problem as probe_shape_problem
from edgeopt.errors import ParamsError

# what decides a seed's numbers: a change here since the first run makes the new seeds incomparable
TRAINING_CODE = ("edgeopt", "stages", "benchmarks/reference.py", "benchmarks/chain.py")
NUMERIC_LIBRARIES = ("torch", "torchvision", "torch-pruning", "nncf", "openvino", "onnxruntime", "onnx", "numpy")


class AddSeedsError(ParamsError):
    """--add-seeds cannot extend DIR: a bad argument, exit 2 like bad params."""


def plan(doc: dict[str, Any], want: int) -> list[int]:
    """The seeds (1..want-1) that lack the peer's run or the pipeline's chain."""
    ref = [r.get("seed") for r in doc.get("reference") or []]
    chains = (doc.get("seeds") or {}).get("chains") or {}
    if not ref:
        raise AddSeedsError("the run has no external peer (its seed 0 failed or was not run): there is nothing to "
                            "compare new seeds with; rerun the benchmark")
    if ref != list(range(len(ref))) or sorted(chains, key=int) != [str(s) for s in range(1, 1 + len(chains))]:
        raise AddSeedsError(f"the run's seeds are not 0..k-1 (peer {ref}, pipeline 0 + {sorted(chains)}); "
                            "rerun the benchmark with --seeds N instead")
    failed = [k for k, c in chains.items() if not c.get("ok")]
    if failed:
        raise AddSeedsError(f"pipeline seed(s) {', '.join(failed)} of this run failed; rerun the benchmark")
    return [s for s in range(1, want) if s >= len(ref) or str(s) not in chains]


def check_run(out: Path, fmt: str, flag: str = "--add-seeds") -> dict[str, Any]:
    """The finished run in `out`, or AddSeedsError naming what is missing."""
    from edgeopt.errors import JSONFileError, NotRegularFileError
    from edgeopt.io import read_json

    try:
        doc = read_json(out / "benchmark.json", "benchmark result")
    except (OSError, JSONFileError, NotRegularFileError) as exc:
        raise AddSeedsError(f"{flag} {out}: cannot read benchmark.json ({exc}); pass the --out DIR of a "
                            "finished benchmark run") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise AddSeedsError(f"{flag} {out}: benchmark.json is not an {fmt} result")
    if not (isinstance(doc.get("compression"), dict) and doc["compression"].get("rows")):
        raise AddSeedsError(f"{flag} {out}: the run has no compression table (did it finish?); rerun it")
    problem = _shape_problem(doc)
    if problem:
        raise AddSeedsError(f"{flag} {out}: benchmark.json is damaged: {problem}; rerun the benchmark (this "
                            "command reads what the run wrote and changes nothing until that is whole)")
    real = out / "work" / "realistic"
    need = [real / "params.yaml", real / "data" / "prepared" / "meta.json", real / "metrics" / "evaluate.json"]
    # every seed's peer model is measured again when the table is rebuilt: missing ones must show now, not
    # after the next seed's hour of training
    need += [Path(r[k]["onnx"]) for r in doc.get("reference") or [] for k in ("bare", "pruned_kd") if k in r]
    for path in need:
        if not path.is_file():
            raise AddSeedsError(f"{flag} {out}: {path} is missing: the run's work directory is needed "
                                "where the run wrote it (prepared images, params, models); rerun the benchmark")
    return doc


def _shape_problem(doc: dict[str, Any]) -> str | None:
    """What, of the fields --add-seeds reads and rewrites, a run did not write as the benchmark writes them."""
    num = (int, float)
    settings, table = doc.get("settings"), doc["compression"]
    if not isinstance(doc.get("argv"), list) or not all(isinstance(a, str) for a in doc["argv"]):
        return "argv is not a list of strings"
    if not isinstance(doc.get("errors"), list):
        return "errors is not a list"
    if not (isinstance(settings, dict) and isinstance((settings.get("overrides") or {}).get("realistic"), dict)
            and isinstance(settings.get("execution"), str) and isinstance(settings.get("budget_s"), num)):
        return "settings lacks overrides.realistic, execution or budget_s"
    if not isinstance(table.get("references"), dict) or not all(
            isinstance(r, dict) and isinstance(r.get("name"), str) and isinstance(r.get("accuracy"), (*num, type(None)))
            for r in table["rows"]):
        return "compression.rows need a name and a numeric accuracy each, beside compression.references"
    for r in doc.get("reference") or []:
        if not (isinstance(r, dict) and isinstance(r.get("seed"), int) and all(
                isinstance(r.get(k), dict) and isinstance(r[k].get("onnx"), str)
                and isinstance(r[k].get("train_s"), num) for k in ("bare", "pruned_kd"))):
            return "a reference (peer) entry lacks seed, bare/pruned_kd onnx or train_s"
    if doc.get("convergence_probe") is not None:
        problem = probe_shape_problem(doc["convergence_probe"])
        if problem:
            return problem
    seeds = doc.get("seeds")
    if seeds is not None:
        chains, accs = (seeds or {}).get("chains", {}), (seeds or {}).get("accuracy", {})
        if not (isinstance(chains, dict) and all(isinstance(c, dict) and isinstance(c.get("workdir"), str)
                                                 and k.isdigit() for k, c in chains.items())):
            return "seeds.chains must map seed numbers to chains with a workdir"
        if not (isinstance(accs, dict) and all(isinstance(v, list) and all(isinstance(a, (*num, type(None)))
                                                                         for a in v) for v in accs.values())):
            return "seeds.accuracy must map rows to lists of numbers"
    return None


def check_recipe(doc: dict[str, Any], real: Path, base_params: Path, repo: Path,
                 peer_epochs: tuple[int, int] | None = None) -> str | None:
    """AddSeedsError when the new seeds would not repeat the first run's recipe; a note when the code could
    not be compared (no git, or a dirty tree then)."""
    from benchmarks.environment import hardware, library_versions
    from edgeopt.params import flatten, load_params

    overrides = dict(doc["settings"]["overrides"]["realistic"])
    now, then = flatten(load_params(base_params, overrides).dump()), flatten(load_params(real / "params.yaml").dump())
    keys = sorted(k for k in now.keys() | then.keys() if now.get(k) != then.get(k))
    if keys:
        raise AddSeedsError(f"the params differ from the first run's ({', '.join(keys[:8])}): its seeds would "
                            f"train another recipe; rerun the benchmark, or restore {base_params}")
    recipe = ((doc.get("reference") or [{}])[0].get("recipe") or {})  # no peer: --add-probe trains none
    if peer_epochs and (recipe.get("epochs"), recipe.get("kd_epochs")) != tuple(peer_epochs):
        raise AddSeedsError(f"the peer's epochs differ from the first run's ({tuple(peer_epochs)} now, "
                            f"{(recipe.get('epochs'), recipe.get('kd_epochs'))} then); rerun the benchmark")
    env = doc.get("environment") or {}
    libs, was = library_versions(), env.get("libraries") or {}
    moved = [f"{n} {was.get(n)} -> {libs.get(n)}" for n in NUMERIC_LIBRARIES if was.get(n) != libs.get(n)]
    if moved:
        raise AddSeedsError(f"library versions changed since the first run ({'; '.join(moved)}): its seeds would "
                            "train on other numerics; reinstall those versions or rerun the benchmark")
    cpu, cpu_then = hardware().get("cpu"), (env.get("hardware") or {}).get("cpu")
    if cpu != cpu_then:
        raise AddSeedsError(f"another CPU model ({cpu!r}, the first run: {cpu_then!r}): torch's CPU results differ "
                            "across CPU models; train more of that run on the machine that ran it")
    then = training_devices_then(doc, real)
    now = training_devices_now(real) if any(then.values()) else {}
    for side, was in then.items():
        if was is not None and was != now.get(side):
            raise AddSeedsError(f"{side} trained on {was} in the first run and would train on {now.get(side)} now: "
                                "another device (GPU or CPU, or another GPU model) gives other numbers; train more "
                                "on a machine like the first")
    git = env.get("git") or {}
    commit = git.get("commit")
    if not commit:
        return "the first run recorded no git commit: the training code could not be compared"
    if git.get("dirty"):
        return f"the first run had uncommitted changes on git {commit[:10]}: the training code could not be compared"
    proc = subprocess.run(["git", "diff", "--stat", commit, "--", *TRAINING_CODE], cwd=repo,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return f"git could not compare the training code with {commit[:10]}: {proc.stderr.strip()[:200]}"
    new = "" if git.get("untracked_files") else subprocess.run(  # untracked then: they may have been there
        ["git", "ls-files", "--others", "--exclude-standard", "--", *TRAINING_CODE], cwd=repo,
        capture_output=True, text=True).stdout.strip()
    if proc.stdout.strip() or new:
        raise AddSeedsError(f"the training code changed since the first run (git {commit[:10]}):\n"
                            f"{proc.stdout.rstrip()}" + (f"\nnew files: {' '.join(new.split())}" if new else "")
                            + f"\nrestore that training code (`git restore --source={commit[:10]} --staged "
                            f"--worktree -- {' '.join(TRAINING_CODE)}`: files added since go too; this runner stays, which works "
                            "while the runner still fits that code, i.e. a nearby commit) to train more of that run, "
                            "or rerun the benchmark")
    return None


def training_devices_then(doc: dict[str, Any], real: Path) -> dict[str, str | None]:
    """The device each side of the first run trained on (cpu, cuda, or cuda: and the GPU's name when the train
    stage recorded it); None where it was not recorded."""
    import json

    try:
        train = json.loads((real / "metrics" / "train.json").read_text())
    except (OSError, ValueError):
        train = {}
    train = train if isinstance(train, dict) else {}
    peer = (doc.get("reference") or [{}])[0]
    stage = train.get("device")
    if stage == "cuda" and train.get("device_name"):
        stage = f"cuda: {train['device_name']}"
    return {"the peer": peer.get("device") if isinstance(peer, dict) else None, "edgeopt's train stage": stage}


def training_devices_now(real: Path) -> dict[str, str]:
    """Where each side would train here: the peer on CUDA when present, the train stage by its train.device.
    Asked of a child process: the runner itself stays free of torch (its peak RSS is the stages' baseline)."""
    import json
    import sys

    proc = subprocess.run([sys.executable, "-c", "import sys; from benchmarks.more_seeds import _devices_here; "
                           "_devices_here(sys.argv[1])", str(real / "params.yaml")],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise AddSeedsError("could not tell where the new seeds would train (torch failed to start: "
                            f"{proc.stderr.strip()[-300:]}); fix the environment, then add seeds") from None


def _devices_here(params_file: str) -> None:
    import json

    import torch

    from edgeopt.accel import describe, resolve_device
    from edgeopt.params import load_params

    try:
        stage = describe(resolve_device(load_params(params_file).train.device))
    except ParamsError:  # train.device: cuda without a GPU: the train stage itself says so
        stage = {"device": "cpu"}
    print(json.dumps({"the peer": "cuda" if torch.cuda.is_available() else "cpu", "edgeopt's train stage":
                      stage["device"] + (f": {stage['device_name']}" if stage.get("device_name") else "")}))


def run(out: Path, want: int | None, say, *, repo: Path, fmt: str,
        parse_argv: Callable[[list[str]], argparse.Namespace]) -> int:
    """Add seeds to the finished run in `out`; the exit code (0 done, 1 a seed failed, 2 a bad request).
    `parse_argv`: the benchmark's own parser, to read how the first run was called."""
    from benchmarks import chain as ch
    from benchmarks import seed_runs
    from benchmarks import summary as sm
    from benchmarks import compression, environment, markdown
    from benchmarks.profiles import PROFILES
    from edgeopt.io import write_json
    from edgeopt.params import load_params
    from edgeopt.paths import Paths

    t0 = time.perf_counter()
    doc = check_run(out, fmt)
    first = parse_argv(doc.get("argv") or [])
    if doc.get("convergence_probe") is not None:  # run by --add-probe after a --no-probe run: no longer a cut
        first.no_probe = False
    profile = PROFILES.get(doc.get("mode"))
    if profile is None:
        raise AddSeedsError(f"--add-seeds {out}: unknown mode {doc.get('mode')!r}")
    want = want or profile.seeds
    todo = plan(doc, want)
    real = out / "work" / "realistic"
    paths, params = Paths(real), load_params(real / "params.yaml")
    stale = bool((doc.get("seeds") or {}).get("table_stale"))
    if not todo and not stale and not _outdated(doc, paths, params):
        say(f"--add-seeds: {out} has seeds 0..{want - 1} already and its table is up to date; nothing to do")
        return 0
    base_params = Path(first.params)
    # only training must repeat the first run's recipe: re-deriving the table from the seeds' files trains nothing
    note = check_recipe(doc, real, base_params, repo, profile.reference_epochs) if todo else None
    profile = dataclasses.replace(profile, seeds=want)
    overrides = doc["settings"]["overrides"]["realistic"]
    seeds = doc.setdefault("seeds", {"seeds": [0], "chains": {}, "accuracy": {}})
    seeds.setdefault("accuracy", {})
    added = {"seeds": [], "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
             "git": environment.git_state(repo), "note": note, "wall_s": 0.0}
    doc.setdefault("added_seeds", []).append(added)
    before = doc.get("duration_s") or 0.0
    per_seed = "; about 70 min a seed on 2 cores" if profile.name == "full" else ""
    say(f"--add-seeds: {out}: seeds {todo} (peer, then train .. evaluate){per_seed}")

    def save() -> None:
        added["wall_s"] = round(time.perf_counter() - t0, 1)
        doc["duration_s"] = round(before + added["wall_s"], 1)
        seeds["seeds"] = sorted({0, *(int(k) for k in seeds["chains"])})
        doc["settings"]["cut"] = sm.cuts(first, dataclasses.replace(profile, seeds=len(seeds["seeds"])))
        if "convergence_probe" not in doc and not getattr(first, "no_probe", False) and profile.probe_factor:
            doc["settings"]["cut"].append("the convergence probe: this run was made without it (run it with "
                                          "--add-probe DIR); the baseline's convergence is not shown")
        doc["budget"] = sm.budget(doc)
        write_json(out / "benchmark.json", doc)
        (out / "benchmark.md").write_text(markdown.render(doc))

    def failed(what: str) -> int:
        doc["errors"].append(f"--add-seeds: {what}")
        save()
        return 1

    def rebuild(seed: int | None) -> int | None:
        problem = rederive(doc, paths, params)
        if problem:
            return failed(f"the table could not be rebuilt with seed {seed}: {problem}; "
                          "rerun --add-seeds once fixed (the seeds already run are kept, not trained again)")
        save()
        return None

    if not todo:  # only the table is behind its seeds (a failed rebuild, or a newer way to derive it)
        say(f"--add-seeds: {out}: no seed to add; the table is re-derived from the seeds' files")
        return rebuild(None) or 0
    for seed in todo:
        if seed >= len(doc["reference"]):
            peer = seed_runs.reference_seed(real / "data" / "prepared", out / "work" / "reference", seed, profile,
                                            say, doc)
            if peer is None:
                return failed(f"peer seed {seed} failed (above); rerun --add-seeds to retry it")
            doc["reference"].append(peer)
        if str(seed) not in seeds["chains"]:
            in_process = doc["settings"]["execution"] != "subprocess per stage"
            summary, accs = seed_runs.pipeline_seed(real, overrides, base_params, ch.pipeline_stages(),
                                                    out / "work", in_process, seed, say)
            if not summary.get("ok") or not accs:
                return failed(f"pipeline seed {seed} failed; see {out}/work/seed{seed}/logs; rerun --add-seeds to "
                              "retry it")
            seeds["chains"][str(seed)] = summary
            compression.record_seed(seeds["accuracy"], accs)
        added["seeds"].append(seed)
        doc["errors"] = [e for e in doc["errors"] if not e.startswith((  # an earlier try's, now retried
            f"--add-seeds: peer seed {seed} ", f"--add-seeds: pipeline seed {seed} ", f"reference seed {seed}:"))]
        seeds["table_stale"] = True
        save()  # the seed's runs are kept even if the table cannot be rebuilt below
        if rebuild(seed) is not None:
            return 1
        say(f"--add-seeds: seed {seed} added; {out}/benchmark.md updated")
    sm.print_summary(doc, say)
    return 0


TABLE_ERRORS = ("--add-seeds: the table could not", "--add-probe: the table could not")


def rederive(doc: dict[str, Any], paths, params) -> str | None:
    """Derive the table again from the seeds' files and the probe (no training); it replaces doc's only when
    whole. None when done (an earlier failure's error and stale mark go), else what failed (the mark stays:
    the next --add-seeds, or --add-probe, derives it again)."""
    import copy

    from benchmarks import compression

    seeds = doc.setdefault("seeds", {"seeds": [0], "chains": {}, "accuracy": {}})
    table = copy.deepcopy(doc["compression"])
    try:
        compression.add_seeds(table, paths, params, doc.get("reference") or [], seeds.get("accuracy") or {},
                              _seed_dirs(doc), doc.get("convergence_probe"))
    except Exception as exc:
        seeds["table_stale"] = True
        return f"{type(exc).__name__}: {exc}"
    doc["compression"] = table
    seeds.pop("table_stale", None)
    doc["errors"] = [e for e in doc["errors"] if not e.startswith(TABLE_ERRORS)]
    return None


def _seed_dirs(doc: dict[str, Any]) -> list[Path]:
    chains = (doc.get("seeds") or {}).get("chains") or {}
    return [Path(chains[k]["workdir"]) for k in sorted(chains, key=int)]


def _outdated(doc: dict[str, Any], paths, params) -> bool:
    """Whether the table, derived again from the seeds' files (no training), differs from the one in the file:
    the run was written by an older version that derived means or targets otherwise."""
    import copy
    import json

    from benchmarks import compression

    seeds = doc.get("seeds") or {}
    table = copy.deepcopy(doc["compression"])
    try:
        compression.add_seeds(table, paths, params, doc.get("reference") or [], seeds.get("accuracy") or {},
                              _seed_dirs(doc), doc.get("convergence_probe"))
    except Exception:  # the rebuild proper records what went wrong
        return True
    return json.dumps(table, sort_keys=True) != json.dumps(doc["compression"], sort_keys=True)
