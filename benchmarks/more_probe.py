"""The convergence probe for a finished run: `python -m benchmarks --add-probe DIR`.

On 2 cores a full-mode seed takes about 2 hours and the probe (seed 0's baseline again, 1.5x the epochs) 80
minutes more, so a run made in sittings starts with `--no-probe` (or its probe failed) and `--add-seeds` never
runs it: such a table could never show a converged baseline. This runs the probe the run left out, exactly as the
run itself would have (same seed, prepared images and recipe; the same refusals as --add-seeds when the recipe,
libraries, CPU or training code changed), then derives the targets again and rewrites DIR/benchmark.json and .md.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import time
from pathlib import Path
from typing import Any, Callable

from benchmarks.more_seeds import AddSeedsError, check_recipe, check_run, rederive


def run(out: Path, say, *, repo: Path, fmt: str, parse_argv: Callable[[list[str]], Any]) -> int:
    """Exit 0 when the probe ran (converged or not: the verdict is the result) or the run has one already, 1 when
    the probe or the table's derivation failed (benchmark.json's `errors` say which), AddSeedsError (exit 2) for a
    run it cannot extend."""
    from benchmarks import chain as ch
    from benchmarks import convergence_probe, environment
    from benchmarks.profiles import PROFILES
    from edgeopt.params import load_params
    from edgeopt.paths import Paths

    t0 = time.perf_counter()
    doc = check_run(out, fmt, "--add-probe")
    first = parse_argv(doc.get("argv") or [])
    profile = PROFILES.get(doc.get("mode"))
    if profile is None:
        raise AddSeedsError(f"--add-probe {out}: unknown mode {doc.get('mode')!r}")
    if not profile.probe_factor:
        raise AddSeedsError(f"--add-probe {out}: the {profile.name} mode has no convergence probe")
    real = out / "work" / "realistic"
    params = load_params(real / "params.yaml")
    had = doc.get("convergence_probe")
    if isinstance(had, dict) and had.get("ok"):
        if not (doc.get("seeds") or {}).get("table_stale"):
            say(f"--add-probe: {out} has its convergence probe already ({convergence_probe.describe(had)}); "
                "nothing to do")
            return 0
        say(f"--add-probe: {out} has its probe; its table is behind it and is derived again (no training)")
        return _finish(out, doc, first, profile, Paths(real), params, None, say)
    train = (((doc.get("cost") or {}).get("realistic") or {}).get("stages") or {}).get("train") or {}
    if train.get("status") != "ok":
        raise AddSeedsError(f"--add-probe {out}: the run's train stage did not finish (status "
                            f"{train.get('status')!r}): there is no baseline to compare with; rerun the benchmark")
    base_params = Path(first.params)
    note = check_recipe(doc, real, base_params, repo)  # the probe trains: the first run's recipe, code, machine
    overrides = doc["settings"]["overrides"]["realistic"]
    in_process = doc["settings"]["execution"] != "subprocess per stage"
    chain = ch.Chain("realistic", real, overrides, in_process, say, params=params)
    say(f"--add-probe: {out}: seed 0's baseline trained again for {profile.probe_factor}x its epochs")
    probe = convergence_probe.run(chain, overrides, base_params, out / "work", in_process, profile.probe_factor,
                                  say, trained=True)
    wall = round(time.perf_counter() - t0, 1)
    doc["convergence_probe"] = probe
    doc["added_probe"] = {"started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                          "git": environment.git_state(repo), "note": note, "wall_s": wall}
    doc["duration_s"] = round((doc.get("duration_s") or 0.0) + wall, 1)
    doc["errors"] = [e for e in doc["errors"] if not e.startswith("convergence probe:")]
    if not probe.get("ok"):
        doc["errors"].append(f"convergence probe: {probe.get('reason')}")
    return _finish(out, doc, first, profile, Paths(real), params, probe, say)


def _finish(out: Path, doc: dict[str, Any], first, profile, paths, params, probe: dict[str, Any] | None,
            say) -> int:
    """Targets derived again with the probe, the cut list without it, benchmark.json and .md rewritten."""
    from benchmarks import markdown
    from benchmarks import summary as sm
    from edgeopt.io import write_json

    first.no_probe = False  # the run has its probe now: no longer a cut
    seeds = doc.get("seeds") or {}
    doc["settings"]["cut"] = sm.cuts(first, dataclasses.replace(profile, seeds=len(seeds.get("seeds") or [0])))
    problem = rederive(doc, paths, params)
    if problem:
        doc["errors"].append(f"--add-probe: the table could not be derived again: {problem}; run --add-probe "
                             "again once fixed (the probe is kept, not trained again)")
    doc["budget"] = sm.budget(doc)
    write_json(out / "benchmark.json", doc)
    (out / "benchmark.md").write_text(markdown.render(doc))
    sm.print_summary(doc, say)
    return 0 if (probe is None or probe.get("ok")) and not problem else 1
