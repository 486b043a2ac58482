"""`python -m benchmarks` (also `edgeopt benchmark ...`): compression results and pipeline cost in one run.

    python -m benchmarks                 # full mode: real CIFAR-10 images, full-width ResNet-18, 3 seeds (hours)
    python -m benchmarks --quick         # a few minutes: tiny epochs, 100 images per class, width 0.25
    python -m benchmarks --smoke         # the runner's own test (~1-2 min): meaningless numbers
    python -m benchmarks --data PATH     # an image folder root/<class>/<image>, or a folder with cifar-10-batches-py
    python -m benchmarks --set prune.ratio=0.55 --set digits:train.epochs=5   # params overrides per chain
    python -m benchmarks --search-result sweeps/search/search.json   # the search's pick as the release
    python -m benchmarks --add-seeds DIR --seeds 3   # more seeds for the finished run in DIR (its work/ kept)
    python -m benchmarks --no-probe      # skip the convergence probe (seed 0's baseline again, 1.5x the epochs)
    python -m benchmarks --add-probe DIR # run that probe later for the finished run in DIR
    python -m benchmarks --jobs 6        # a GPU machine: train the seeds, the peer and the probe side by side

Writes DIR/benchmark.json and DIR/benchmark.md (DIR = --out, default benchmarks/results/<timestamp>-<mode>/)
plus the work directories of every chain under DIR/work/. See benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from edgeopt.cliargs import in_range

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
FORMAT = "edgeopt-benchmark/1"
WIDTH_NOTE = ("the full-width ResNet-18 (557 M MACs) cannot be trained and compressed within the mode's time "
              "budget on this CPU; every ratio is against this same-width baseline")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="a few minutes: tiny epochs, fewer images, small width")
    mode.add_argument("--smoke", action="store_true", help="the runner's self-test: tiny everything, in-process")
    p.add_argument("--out", metavar="DIR", help="result directory (default: benchmarks/results/<timestamp>-<mode>)")
    p.add_argument("--data", metavar="PATH", help="real images: image folder root/<class>/<img> or a folder "
                   "holding cifar-10-batches-py (default: ../shared/data/cifar10-subset/train next to the repo, "
                   "else CIFAR-10 under data.root, else digits with a note)")
    p.add_argument("--params", default=str(REPO / "params.yaml"), help="base params file (default: the repo's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="[CHAIN:]KEY=VALUE",
                   help="override a parameter of the realistic chain (or of the digits chain with the "
                        "`digits:` prefix), e.g. --set prune.ratio=0.55; repeatable")
    p.add_argument("--seeds", type=in_range(1, 10), metavar="N",
                   help="training seeds of the headline rows (default: the mode's; fewer = shorter, the spread "
                        "is then not measured)")
    p.add_argument("--search-result", metavar="SEARCH_JSON",
                   help="benchmark a search's pick: the winning trial's knobs of sweeps/<name>/search.json "
                        "(`python -m flows.search`) applied to the realistic chain, before any --set")
    p.add_argument("--add-seeds", metavar="DIR",
                   help="add training seeds (up to --seeds, default the mode's) to the finished run in DIR, one "
                        "seed at a time, same recipe; DIR/benchmark.json and .md are rewritten after each seed")
    p.add_argument("--add-probe", metavar="DIR",
                   help="run the convergence probe that the finished run in DIR left out (--no-probe, or it "
                        "failed), same recipe; DIR/benchmark.json and .md are rewritten with its verdict")
    p.add_argument("--no-probe", action="store_true",
                   help="skip the convergence probe (seed 0's baseline trained again for 1.5x the epochs); the "
                        "baseline's convergence is then not shown and the targets cannot all be met")
    p.add_argument("--jobs", type=in_range(1, 32), default=1, metavar="N",
                   help="training processes at a time (default 1): on a GPU or a many-core machine the "
                        "realistic chain, the peer's seeds, the pipeline's other seeds and the probe train side by "
                        "side; latency is still measured afterwards, alone. On a 2-core CPU keep 1: processes "
                        "sharing cores slow each other down more than they gain")
    p.add_argument("--skip-digits", action="store_true", help="skip the default (digits) chain's cost run")
    p.add_argument("--skip-throughput", action="store_true", help="skip train stage vs bare loop")
    p.add_argument("--in-process", action="store_true", default=None,
                   help="run stages in this process (no per-stage peak memory; faster start-up)")
    p.add_argument("--subprocess", dest="in_process", action="store_false",
                   help="run each stage in its own process (the default except in --smoke)")
    return p


class Console:
    def __init__(self, log: Path):
        self.t0 = time.perf_counter()
        self.log = log

    def __call__(self, msg: str) -> None:
        print(self.log_only(msg), flush=True)

    def log_only(self, msg: str) -> str:
        el = int(time.perf_counter() - self.t0)
        line = f"[{el // 60:02d}:{el % 60:02d}] {msg}"
        with open(self.log, "a") as fh:
            fh.write(line + "\n")
        return line


def split_overrides(items: list[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {"realistic": {}, "digits": {}}
    for item in items:
        chain, _, rest = item.partition(":") if ":" in item.split("=", 1)[0] else ("realistic", "", item)
        if chain not in out:
            raise ValueError(f"--set {item}: unknown chain {chain!r}; use realistic: or digits:")
        key, sep, value = rest.partition("=")
        if not sep:
            raise ValueError(f"--set {item}: expected KEY=VALUE")
        out[chain][key.strip()] = value
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("EDGEOPT_NO_PROGRESS", "1")
    from benchmarks.profiles import PROFILES

    if args.add_seeds or args.add_probe:
        return extend(args, list(sys.argv[1:] if argv is None else argv))
    profile = PROFILES["smoke" if args.smoke else "quick" if args.quick else "full"]
    if args.seeds is not None:
        profile = dataclasses.replace(profile, seeds=args.seeds)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out).resolve() if args.out else RESULTS / f"{stamp}-{profile.name}"
    out.mkdir(parents=True, exist_ok=True)
    say = Console(out / "benchmark.log")
    try:
        return run(args, list(sys.argv[1:] if argv is None else argv), profile, out, say)
    except KeyboardInterrupt:
        say("interrupted; partial results are in " + str(out))
        return 130


def extend(args: argparse.Namespace, argv: list[str]) -> int:
    """--add-seeds DIR / --add-probe DIR: the run's own settings decide everything but the number of seeds."""
    from benchmarks import more_probe, more_seeds

    from edgeopt.errors import ParamsError

    flag, allowed = ("--add-seeds", ("--add-seeds", "--seeds")) if args.add_seeds else ("--add-probe", ("--add-probe",))
    extra = [o for o in argv if o.startswith("--") and o.split("=")[0] not in allowed]
    out = Path(args.add_seeds or args.add_probe).resolve()
    if extra:
        takes = "only --seeds" if flag == "--add-seeds" else "no other option"
        print(f"benchmark: error: {flag} takes {takes} (the run's own settings are kept); drop "
              f"{' '.join(extra)}; add seeds and the probe one command after the other", file=sys.stderr)
        return 2
    if not out.is_dir():
        print(f"benchmark: error: {flag} {out}: not a directory; pass the --out DIR of a finished run",
              file=sys.stderr)
        return 2
    say = Console(out / "benchmark.log")
    try:
        if flag == "--add-probe":
            return more_probe.run(out, say, repo=REPO, fmt=FORMAT, parse_argv=build_parser().parse_args)
        return more_seeds.run(out, args.seeds, say, repo=REPO, fmt=FORMAT, parse_argv=build_parser().parse_args)
    except ParamsError as exc:  # AddSeedsError included; the log keeps it beside the run's history
        say.log_only(f"benchmark: error: {exc}")
        print(f"benchmark: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        say(f"interrupted; {out} keeps what was recorded before (seeds already added, not a half-run probe)")
        return 130


def run(args: argparse.Namespace, argv: list[str], profile, out: Path, say) -> int:
    from benchmarks import chain as ch
    from benchmarks import compression, convergence_probe, datasource, environment, markdown, search_pick
    from benchmarks import throughput
    from benchmarks.seed_runs import run_reference, run_seeds
    from benchmarks.summary import budget, cuts, print_summary
    from benchmarks.profiles import COMMON
    from edgeopt.errors import ParamsError
    from edgeopt.io import write_json
    from edgeopt.params import load_params

    in_process = profile.in_process if args.in_process is None else args.in_process
    if args.jobs > 1 and in_process:
        print("benchmark: error: --jobs runs stages side by side in their own processes; drop --in-process (or "
              "--smoke, which runs in-process) or use --jobs 1", file=sys.stderr)
        return 2
    base_params = Path(args.params).resolve()
    started = dt.datetime.now().astimezone()
    t0 = time.perf_counter()
    try:
        user = split_overrides(args.overrides)
        searched = search_pick.load(args.search_result) if args.search_result else None
        if searched:  # explicit --set entries still win
            user["realistic"] = {**search_pick.as_overrides(searched), **user["realistic"]}
        base = load_params(base_params)
        data = datasource.resolve(args.data, REPO, base.data.root)
    except (ValueError, ParamsError) as exc:
        print(f"benchmark: error: {exc}", file=sys.stderr)
        return 2
    realistic_over = {**COMMON, **profile.realistic, **data["overrides"], **user["realistic"]}
    digits_over = {**COMMON, **profile.digits, **user["digits"]}
    doc: dict[str, Any] = {
        "format": FORMAT, "mode": profile.name, "description": profile.description,
        "started": started.isoformat(timespec="seconds"), "finished": None, "duration_s": None,
        "argv": list(argv),
        "environment": environment.environment(REPO),
        "settings": {"budget_s": profile.budget_s, "data": {k: v for k, v in data.items() if k != "overrides"},
                     "notes": list(profile.notes) + ([data["note"]] if data["source"] == "digits" else []),
                     "execution": "in-process" if in_process else "subprocess per stage",
                     "jobs": args.jobs,
                     "overrides": {"realistic": realistic_over, "digits": digits_over},
                     "search": searched},
        "compression": None, "cost": {}, "training_throughput": None, "errors": []}
    json_path, md_path = out / "benchmark.json", out / "benchmark.md"
    doc["settings"]["cut"] = cuts(args, profile)

    def save() -> None:
        doc["finished"] = dt.datetime.now().astimezone().isoformat(timespec="seconds")
        doc["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
        doc["duration_s"] = round(time.perf_counter() - t0, 1)
        doc["budget"] = budget(doc)
        write_json(json_path, doc)
        md_path.write_text(markdown.render(doc))

    if args.jobs > 1:
        doc["settings"]["notes"].append(
            f"--jobs {args.jobs}: the training work ran {args.jobs} processes at a time, each on its share of the "
            "cores, so each stage's wall time includes sharing the machine (the run's duration is the figure to "
            "compare); latency and the bench stage ran afterwards, alone, on every core")
    hw = doc["environment"]["hardware"]
    load = (hw.get("load_average_at_start") or [0.0])[0]
    if load > 0.5 * hw["cores"]:
        doc["settings"]["notes"].append(
            f"the machine was busy when the benchmark started (load average {load:.1f} on {hw['cores']} cores): "
            "timings are inflated, multi-threaded ones most (threads wait for each other at every layer when "
            "another process holds a core); rerun on a quiet machine for representative figures")
    say(f"edgeopt benchmark, {profile.name} mode: {profile.description}")
    say(f"hardware: {hw['cpu']}, {hw['cores']} cores; git {doc['environment']['git'].get('short')}"
        f"{' (dirty)' if doc['environment']['git'].get('dirty') else ''}; results in {out}")
    say(f"data: {data['note']}")
    if searched:
        say(f"search: the pick's knobs from search {searched['name']!r} trial {searched['trial']}: "
            + " ".join(searched["overrides"]))
    say(f"mode goal: under {ch.fmt_s(profile.budget_s)} on a quiet 2-core machine; per-stage ETAs below")
    stages = ch.pipeline_stages()
    work = out / "work"

    # 1. the default run (digits, params.yaml as is in full mode): cost only
    if profile.digits_chain and not args.skip_digits:
        digits = ch.Chain("digits", work / "digits", digits_over, in_process, say)
        try:
            digits.setup(base_params)
            prev = ch.previous_timings(RESULTS, profile.name, "digits", exclude=out, overrides=digits_over,
                                       setup=ch.run_setup(doc))
            digits.run(stages, ch.Estimator(digits, prev))
        except ParamsError as exc:
            doc["errors"].append(f"digits chain: {exc}")
        doc["cost"]["digits"] = digits.summary()
        if not digits.summary()["ok"]:
            doc["errors"].append("digits chain failed: " + "; ".join(
                f"{k}: {v['reason']}" for k, v in doc["cost"]["digits"]["stages"].items() if v["status"] == "failed"))
        save()

    # 2. the realistic chain: compression settings of the mode on real images
    real = ch.Chain("realistic", work / "realistic", realistic_over, in_process, say)
    try:
        params = real.setup(base_params)
    except ParamsError as exc:
        doc["errors"].append(f"realistic chain: {exc}")
        save()
        say(f"realistic chain: bad parameters: {exc}")
        return 2
    doc["settings"]["model"] = {"arch": params.model.arch, "width": params.model.width,
                                "small_input": params.model.small_input,
                                "width_note": WIDTH_NOTE if params.model.width < 1 else None}
    prev = ch.previous_timings(RESULTS, profile.name, "realistic", exclude=out, overrides=realistic_over,
                               setup=ch.run_setup(doc))
    est = ch.Estimator(real, prev)
    ok = real.run(stages[:2], est, total=len(stages))  # prepare, validate

    # 3. training throughput on the realistic data, before training (it also calibrates the ETAs)
    if ok and not args.skip_throughput:
        t_tp = time.perf_counter()
        try:
            tp = throughput.measure_in_subprocess(real.workdir / "data" / "prepared", real.params_file,
                                                  work / "throughput", profile.throughput_epochs,
                                                  profile.throughput_repeats, say)
            doc["training_throughput"] = tp
            tp["measured_in_s"] = round(time.perf_counter() - t_tp, 1)
            est.train_ips = tp["stage_images_per_s"]
            say(f"[throughput] bare {tp['bare_images_per_s']:.1f} img/s, stage {tp['stage_images_per_s']:.1f} "
                f"img/s: overhead {tp['overhead_pct']:+.1f} % ({'met' if tp['met'] else 'NOT met'})")
        except Exception as exc:
            doc["errors"].append(f"training throughput: {type(exc).__name__}: {exc}")
            say(f"[throughput] failed: {exc}")
            traceback.print_exc()
        save()
    side_by_side = ok and args.jobs > 1
    peers, seed_acc = [], {}
    if side_by_side:
        from benchmarks.seed_runs import train_side_by_side

        peers, seed_acc = train_side_by_side(real, stages, est, args.jobs, realistic_over, base_params, work,
                                             profile, bool(profile.probe_factor) and not args.no_probe, say, doc)
        real.run(stages[stages.index("bench"):], est, total=len(stages))
    elif ok:
        real.run(stages[2:], est, total=len(stages))
    doc["cost"]["realistic"] = real.summary()
    train_m = real.metrics("train") or {}
    if doc["training_throughput"] and train_m.get("train_images_per_s"):
        doc["training_throughput"]["realistic_run_stage_images_per_s"] = train_m["train_images_per_s"]
        doc["training_throughput"]["realistic_run_augment"] = params.train.augment
    if not real.summary()["ok"]:
        doc["errors"].append("realistic chain failed: " + "; ".join(
            f"{k}: {v['reason']}" for k, v in doc["cost"]["realistic"]["stages"].items() if v["status"] == "failed"))
    save()

    # 3b. the external peer (benchmarks/reference.py) and other training seeds, on the same prepared images
    # (with --jobs they trained above, beside the realistic chain)
    if not side_by_side and (real.workdir / "data" / "prepared" / "meta.json").is_file():
        peers = run_reference(real.workdir / "data" / "prepared", work / "reference", profile, say, doc)
        save()
        seed_acc = run_seeds(real, realistic_over, base_params, stages, work, in_process, profile, say, doc)
        save()
        if profile.probe_factor and not args.no_probe:
            probe = convergence_probe.run(real, realistic_over, base_params, work, in_process,
                                          profile.probe_factor, say)
            doc["convergence_probe"] = probe
            if not probe.get("ok"):
                doc["errors"].append(f"convergence probe: {probe.get('reason')}")
            save()

    # 4. plain NNCF INT8 of the unpruned baseline: the quantize stage in a side project
    from edgeopt.paths import Paths

    paths = Paths(real.workdir)
    side_dir = None
    if paths.checkpoint("baseline").is_file() and paths.prepared.is_dir():
        side_dir = compression.side_project(paths, work / "baseline_int8")
        side = ch.Chain("baseline_int8", side_dir, {**realistic_over, **compression.SIDE_OVERRIDES}, in_process, say)
        try:
            side.setup(base_params)
            side.run(["quantize"], ch.Estimator(side, {}))
        except ParamsError as exc:
            doc["errors"].append(f"baseline_int8 side run: {exc}")
        doc["cost"]["baseline_int8"] = side.summary()
        if not side.summary()["ok"]:
            doc["errors"].append("baseline_int8 side run failed (the plain-INT8 row is missing): " + "; ".join(
                f"{k}: {v['reason']}" for k, v in side.summary()["stages"].items() if v["status"] == "failed"))
        save()

    # 5. every row under one protocol, ratios, targets
    if paths.candidates.is_file() and paths.metrics("evaluate").is_file():
        try:
            say("[compression] measuring every row (accuracy, size, latency)")
            doc["compression"] = compression.build_rows(
                paths, params, side_dir, warmup=profile.warmup, runs=profile.runs, rounds=profile.rounds,
                batch=profile.batch, batch_runs=profile.batch_runs, say=say, peers=peers, seed_accuracy=seed_acc,
                seed_dirs=[Path(c["workdir"]) for c in ((doc.get("seeds") or {}).get("chains") or {}).values()],
                probe=doc.get("convergence_probe"))
            doc["errors"] += unmeasured_rows(doc)  # the run is not whole
        except Exception as exc:
            doc["errors"].append(f"compression rows: {type(exc).__name__}: {exc}")
            traceback.print_exc()
    else:
        doc["errors"].append("compression rows: the realistic chain did not reach evaluate; no rows")
    save()
    print_summary(doc, say)
    say(f"wrote {json_path} and {md_path}")
    return 0 if not doc["errors"] else 1


def unmeasured_rows(doc: dict[str, Any]) -> list[str]:
    """Rows the benchmark failed to measure: any latency, and every reference row (baselines, plain INT8, peers).
    A pipeline candidate its export rejected (parity, a quantize mode) is a result the gate sees, not an error;
    a plain-INT8 row whose side run already failed is said once, by that run's error."""
    from benchmarks.compression import INT8_ROW

    side_failed = any(e.startswith("baseline_int8 side run") for e in doc["errors"])
    return [f"compression row {r['name']}: {r.get('reason')}" for r in doc["compression"]["rows"]
            if r.get("status") == "failed" and (str(r.get("reason") or "").startswith("latency:")
                                               or r.get("kind") != "candidate")
            and not (side_failed and r["name"] == INT8_ROW)]


if __name__ == "__main__":
    sys.exit(main())
