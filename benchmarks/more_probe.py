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

from benchmarks.more_seeds import AddSeedsError, _seed_dirs, check_recipe, check_run


def run(out: Path, say, *, repo: Path, fmt: str, parse_argv: Callable[[list[str]], Any]) -> int:
    """Exit 0 when the probe ran (converged or not: the verdict is the result) or the run has one already, 1 when
    the probe or the table's rebuild failed (benchmark.json's `errors` say which), AddSeedsError (exit 2) for a
    run it cannot extend."""
    from benchmarks import chain as ch
    from benchmarks import compression, convergence_probe, environment, markdown
    from benchmarks import summary as sm
    from benchmarks.profiles import PROFILES
    from edgeopt.io import write_json
    from edgeopt.params import load_params
    from edgeopt.paths import Paths

    t0 = time.perf_counter()
    doc = check_run(out, fmt)
    first = parse_argv(doc.get("argv") or [])
    profile = PROFILES.get(doc.get("mode"))
    if profile is None:
        raise AddSeedsError(f"--add-probe {out}: unknown mode {doc.get('mode')!r}")
    if not profile.probe_factor:
        raise AddSeedsError(f"--add-probe {out}: the {profile.name} mode has no convergence probe")
    had = doc.get("convergence_probe")
    if isinstance(had, dict) and had.get("ok"):
        say(f"--add-probe: {out} has its convergence probe already ({convergence_probe.describe(had)}); "
            "nothing to do")
        return 0
    train = (((doc.get("cost") or {}).get("realistic") or {}).get("stages") or {}).get("train") or {}
    if train.get("status") != "ok":
        raise AddSeedsError(f"--add-probe {out}: the run's train stage did not finish (status "
                            f"{train.get('status')!r}): there is no baseline to compare with; rerun the benchmark")
    real = out / "work" / "realistic"
    base_params = Path(first.params)
    note = check_recipe(doc, real, base_params, repo, profile.reference_epochs)
    overrides = doc["settings"]["overrides"]["realistic"]
    in_process = doc["settings"]["execution"] != "subprocess per stage"
    params = load_params(real / "params.yaml")
    chain = ch.Chain("realistic", real, overrides, in_process, say, params=params)
    say(f"--add-probe: {out}: seed 0's baseline trained again for {profile.probe_factor}x its epochs")
    probe = convergence_probe.run(chain, overrides, base_params, out / "work", in_process, profile.probe_factor,
                                  say, trained=True)
    wall = round(time.perf_counter() - t0, 1)
    doc["convergence_probe"] = probe
    doc["added_probe"] = {"started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                          "git": environment.git_state(repo), "note": note, "wall_s": wall}
    doc["duration_s"] = round((doc.get("duration_s") or 0.0) + wall, 1)
    doc["errors"] = [e for e in doc["errors"] if not e.startswith(("convergence probe:", "--add-probe:"))]
    if not probe.get("ok"):
        doc["errors"].append(f"convergence probe: {probe.get('reason')}")
    seeds = doc.get("seeds") or {}
    first.no_probe = False  # the run has its probe now: no longer a cut
    doc["settings"]["cut"] = sm.cuts(first, dataclasses.replace(profile, seeds=len(seeds.get("seeds") or [0])))
    try:
        compression.add_seeds(doc["compression"], Paths(real), params, doc.get("reference") or [],
                              seeds.get("accuracy") or {}, _seed_dirs(doc), probe)
    except Exception as exc:
        doc["errors"].append(f"--add-probe: the table could not be derived again: {type(exc).__name__}: {exc}; "
                             "`--add-seeds DIR` re-derives it once fixed (the probe is kept)")
        if isinstance(doc.get("seeds"), dict):
            doc["seeds"]["table_stale"] = True
    doc["budget"] = sm.budget(doc)
    write_json(out / "benchmark.json", doc)
    (out / "benchmark.md").write_text(markdown.render(doc))
    sm.print_summary(doc, say)
    return 0 if probe.get("ok") and not any(e.startswith("--add-probe:") for e in doc["errors"]) else 1
