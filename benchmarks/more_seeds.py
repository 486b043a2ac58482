"""More training seeds for a finished run: `python -m benchmarks --add-seeds DIR [--seeds N]`.

A full run costs about 70 minutes per seed on 2 cores (edgeopt's chain and the external peer both train), so the
mode's three seeds rarely fit in one sitting. This extends DIR (a finished run with its work/ kept) one seed at a
time: the peer's seed k, then the pipeline's train .. evaluate with seed k on the same prepared images, exactly
what a multi-seed run does. After each seed the means, spreads and targets are recomputed and DIR/benchmark.json
and .md rewritten, so stopping between seeds leaves a whole result. Seed 0's sizes, MACs and latencies stay as
measured: other seeds only retrain.

Seeds of another recipe are not seeds: it refuses (exit 2) when the params the new seeds would train with differ
from the first run's, or when the training code changed since the commit that ran it.
"""
from __future__ import annotations

import datetime as dt
import subprocess
import time
from pathlib import Path
from typing import Any

from edgeopt.errors import ParamsError

# what decides a seed's numbers: a change here since the first run makes the new seeds incomparable
TRAINING_CODE = ("edgeopt", "stages", "benchmarks/reference.py", "benchmarks/chain.py")


class AddSeedsError(ParamsError):
    """--add-seeds cannot extend DIR: a bad argument, exit 2 like bad params."""


def plan(doc: dict[str, Any], want: int) -> list[int]:
    """The seeds to add so that seeds 0..want-1 exist for both the peer and the pipeline."""
    ref = [r.get("seed") for r in doc.get("reference") or []]
    chains = (doc.get("seeds") or {}).get("chains") or {}
    have = 1 + len(chains)
    if ref != list(range(len(ref))) or sorted(chains, key=int) != [str(s) for s in range(1, have)]:
        raise AddSeedsError(f"the run's seeds are not 0..k-1 (peer {ref}, pipeline 0 + {sorted(chains)}); "
                            "rerun the benchmark with --seeds N instead")
    failed = [k for k, c in chains.items() if not c.get("ok")]
    if failed:
        raise AddSeedsError(f"pipeline seed(s) {', '.join(failed)} of this run failed; rerun the benchmark")
    return [s for s in range(1, want) if s >= min(len(ref), have)]


def check_run(out: Path, fmt: str) -> dict[str, Any]:
    """The finished run in `out`, or AddSeedsError naming what is missing."""
    from edgeopt.errors import JSONFileError, NotRegularFileError
    from edgeopt.io import read_json

    try:
        doc = read_json(out / "benchmark.json", "benchmark result")
    except (OSError, JSONFileError, NotRegularFileError) as exc:
        raise AddSeedsError(f"--add-seeds {out}: {exc}; pass the --out DIR of a finished benchmark run") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise AddSeedsError(f"--add-seeds {out}: benchmark.json is not a {fmt} result")
    if not ((doc.get("compression") or {}).get("rows")):
        raise AddSeedsError(f"--add-seeds {out}: the run has no compression table (did it finish?); rerun it")
    real = out / "work" / "realistic"
    for need in (real / "params.yaml", real / "data" / "prepared" / "meta.json", real / "metrics" / "evaluate.json"):
        if not need.is_file():
            raise AddSeedsError(f"--add-seeds {out}: {need} is missing: the run's work directory is needed "
                                "(its prepared images, params and candidates); rerun the benchmark")
    return doc


def check_recipe(doc: dict[str, Any], real: Path, base_params: Path, repo: Path) -> str | None:
    """AddSeedsError when the new seeds would not repeat the first run's recipe; a note when the code could
    not be compared (no git)."""
    from edgeopt.params import load_params

    overrides = dict(((doc.get("settings") or {}).get("overrides") or {}).get("realistic") or {})
    now, then = load_params(base_params, overrides).dump(), load_params(real / "params.yaml").dump()
    diff = sorted(_flat(now).items() ^ _flat(then).items())
    if diff:
        keys = sorted({k for k, _ in diff})
        raise AddSeedsError(f"the params differ from the first run's ({', '.join(keys[:8])}): its seeds would "
                            f"train another recipe; rerun the benchmark, or restore {base_params}")
    commit = ((doc.get("environment") or {}).get("git") or {}).get("commit")
    if not commit:
        return "the first run recorded no git commit: the training code could not be compared"
    proc = subprocess.run(["git", "diff", "--stat", commit, "--", *TRAINING_CODE], cwd=repo,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return f"git could not compare the training code with {commit[:10]}: {proc.stderr.strip()[:200]}"
    if proc.stdout.strip():
        raise AddSeedsError(f"the training code changed since the first run (git {commit[:10]}):\n"
                            f"{proc.stdout.rstrip()}\ncheck out {commit[:10]} to add seeds, or rerun the benchmark")
    return None


def _flat(d: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(d, dict):
        return {k: v for key, val in d.items() for k, v in _flat(val, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): repr(d)}


def run(out: Path, want: int | None, say, *, repo: Path, fmt: str) -> int:
    """Add seeds to the finished run in `out`; the exit code (0 done, 1 a seed failed, 2 a bad request)."""
    from benchmarks import __main__ as bm
    from benchmarks import chain as ch
    from benchmarks import compression, environment, markdown
    from benchmarks.profiles import PROFILES
    from edgeopt.io import write_json
    from edgeopt.params import load_params
    from edgeopt.paths import Paths

    t0 = time.perf_counter()
    doc = check_run(out, fmt)
    first = bm.build_parser().parse_args(doc.get("argv") or [])
    profile = PROFILES.get(doc.get("mode"))
    if profile is None:
        raise AddSeedsError(f"--add-seeds {out}: unknown mode {doc.get('mode')!r}")
    want = want or profile.seeds
    todo = plan(doc, want)
    if not todo:
        say(f"--add-seeds: {out} already has {want} seed(s); nothing to do")
        return 0
    real = out / "work" / "realistic"
    base_params = Path(first.params).resolve() if first.params else repo / "params.yaml"
    note = check_recipe(doc, real, base_params, repo)
    import dataclasses

    profile = dataclasses.replace(profile, seeds=want)
    paths, params = Paths(real), load_params(real / "params.yaml")
    overrides = doc["settings"]["overrides"]["realistic"]
    doc.setdefault("seeds", {"seeds": [0], "chains": {}, "accuracy": {}})
    doc.setdefault("reference", [])
    added = {"seeds": [], "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
             "git": environment.git_state(repo), "note": note, "wall_s": 0.0}
    doc.setdefault("added_seeds", []).append(added)
    before = doc.get("duration_s") or 0.0
    say(f"--add-seeds: {out}: seeds {todo} (peer, then train .. evaluate); about 70 min a seed on 2 cores")

    def save() -> None:
        added["wall_s"] = round(time.perf_counter() - t0, 1)
        doc["duration_s"] = round(before + added["wall_s"], 1)
        doc["seeds"]["seeds"] = sorted({0, *(int(k) for k in doc["seeds"]["chains"])})
        doc["settings"]["cut"] = bm.cuts(first, dataclasses.replace(profile, seeds=len(doc["seeds"]["seeds"])))
        doc["budget"] = bm.budget(doc)
        write_json(out / "benchmark.json", doc)
        (out / "benchmark.md").write_text(markdown.render(doc))

    for seed in todo:
        if seed >= len(doc["reference"]):
            peer = bm.reference_seed(real / "data" / "prepared", out / "work" / "reference", seed, profile, say, doc)
            if peer is None:
                save()
                return 1
            doc["reference"].append(peer)
        if str(seed) in doc["seeds"]["chains"]:
            continue
        summary, accs = bm.pipeline_seed(real, overrides, base_params, ch.pipeline_stages(), out / "work",
                                         doc["settings"]["execution"] != "subprocess per stage", seed, say)
        if not summary.get("ok") or not accs:
            doc["errors"].append(f"--add-seeds: pipeline seed {seed} failed; see {out}/work/seed{seed}/logs")
            save()
            return 1
        doc["seeds"]["chains"][str(seed)] = summary
        for name, acc in accs.items():
            doc["seeds"]["accuracy"].setdefault(name, []).append(acc)
        added["seeds"].append(seed)
        compression.add_seeds(doc["compression"], paths, params, doc["reference"], doc["seeds"]["accuracy"])
        save()
        say(f"--add-seeds: seed {seed} added; {out}/benchmark.md updated")
    bm.print_summary(doc, say)
    return 0
