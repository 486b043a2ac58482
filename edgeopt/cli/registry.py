"""`edgeopt registry list|show|promote|pull|verify|rollback`. Torch-free; `pull`, `verify` and `show` also
work on a device without params.yaml when `--registry DIR` is given.

    edgeopt registry list
    edgeopt registry show digits-classifier@production
    edgeopt registry promote --from-gate --channel production      # the gate's pick (idempotent)
    edgeopt registry promote digits-classifier@0.0.3 --channel production
    edgeopt registry pull digits-classifier@production --to release/
    edgeopt registry verify [digits-classifier[@1.2.0]] [--allow-empty] | --dir release/
    edgeopt registry rollback digits-classifier --channel production
    edgeopt registry push [--remote NAME]        # share through the project's DVC remote
    edgeopt registry fetch [--remote NAME]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ACTIONS = ("list", "show", "promote", "pull", "verify", "rollback", "push", "fetch")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from edgeopt.cliargs import add_params_args

    common = argparse.ArgumentParser(add_help=False)
    add_params_args(common)
    common.add_argument("--registry", metavar="DIR", help="registry root (default: registry.root of params.yaml)")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    s = sub.add_parser("list", parents=[common], help="releases and channels")
    s.add_argument("model", nargs="?", help="only this model")
    s = sub.add_parser("show", parents=[common], help="a release's manifest summary and its verification")
    s.add_argument("ref", help="MODEL, MODEL@VERSION or MODEL@CHANNEL")
    s = sub.add_parser("promote", parents=[common],
                       help="point a channel at a release, or release the gate's pick (--from-gate)")
    s.add_argument("ref", nargs="?", help="existing release MODEL@VERSION (or MODEL@CHANNEL) to point --channel at")
    s.add_argument("--channel", help="channel to point (with --from-gate default: registry.channel)")
    s.add_argument("--from-gate", action="store_true",
                   help="release the candidate selected in reports/gate.json (a no-op if identical to the latest)")
    s.add_argument("--candidate", help="with --from-gate: another candidate that passed the gate")
    s.add_argument("--version", help="with --from-gate: explicit version instead of registry.bump")
    s.add_argument("--allow-regression", action="store_true", default=None,
                   help="with --from-gate: release even when the channel's current release is more accurate")
    s = sub.add_parser("pull", parents=[common], help="copy a verified release to a directory")
    s.add_argument("ref", help="MODEL, MODEL@VERSION or MODEL@CHANNEL")
    s.add_argument("--to", required=True, metavar="DIR", help="destination (new, empty, or an earlier pull)")
    s = sub.add_parser("verify", parents=[common], help="check every file's sha256 and every manifest's record")
    s.add_argument("ref", nargs="?", help="MODEL or MODEL@VERSION|CHANNEL (default: the whole registry)")
    s.add_argument("--dir", metavar="DIR", help="verify a pulled release directory against its manifest instead")
    s.add_argument("--allow-empty", action="store_true",
                   help="exit 0 when the registry holds no release (default: exit 1, nothing was verified)")
    s = sub.add_parser("rollback", parents=[common], help="move a channel back to its previous version")
    s.add_argument("model", help="model name")
    s.add_argument("--channel", required=True, help="channel to roll back, e.g. production")
    for name, what in (("push", "copy releases and channel history to the project's DVC remote"),
                       ("fetch", "copy the releases this registry lacks from the project's DVC remote, verified")):
        s = sub.add_parser(name, parents=[common], help=what, description=what)
        s.add_argument("--remote", help="DVC remote name (default: the project's default remote)")


def _params(args: argparse.Namespace):
    from edgeopt.params import load_params

    return load_params(args.params, args.overrides)


def _out(args: argparse.Namespace, data: Any, text: str) -> None:
    """JSON (control characters escaped by json) or text, each line escaped: manifest fields and file names
    come from files anyone with write access could craft (a newline or ESC must not forge terminal output)."""
    from edgeopt.errors import safe_text
    from edgeopt.io import to_jsonable

    print(json.dumps(to_jsonable(data), indent=2, default=str, allow_nan=False) if args.json else
          "\n".join(safe_text(line) for line in text.split("\n")))


def _obj(value: Any) -> dict:
    """A manifest field that should be an object; anything else (hand-edited manifest) shows as empty."""
    return value if isinstance(value, dict) else {}


def main(args: argparse.Namespace) -> int:
    from edgeopt.errors import RegistryError
    from edgeopt.registry import Registry, actor, verify_dir
    from edgeopt.releases import registry_root

    if args.action == "verify" and args.dir:
        problems = verify_dir(args.dir, pulled=True)
        return _report_problems(args, problems, f"{args.dir}: all files match the manifest")
    reg = Registry(registry_root(args.registry, args.root, args.params, args.overrides))
    if args.action == "list":
        return _list(args, reg)
    if args.action == "show":
        model, version = reg.resolve(args.ref)
        manifest, record = reg.manifest(model, version), reg.record(model)
        problems = reg.verify(model, version)
        channels = [c for c in record["channels"] if reg.channel(model, c) == version]
        data = {"release": f"{model}@{version}", "channels": channels, "verified": not problems,
                "problems": problems, "record": record["releases"][version], "manifest": manifest}
        _out(args, data, _show_text(model, version, manifest, channels, problems))
        return 1 if problems else 0  # a script may use show as its check: a failed verification is a failure
    if args.action == "promote":
        return _promote(args, reg)
    if args.action == "pull":
        res = reg.pull(args.ref, args.to)
        _out(args, res, f"pulled {res['model']}@{res['version']} to {res['path']} ({res['files']} files verified)"
             + (f"; files changed or added in the earlier pull were kept in {res['kept']}" if res["kept"] else ""))
        return 0
    if args.action == "verify":
        model, version = (None, None)
        if args.ref:
            model, version = reg.resolve(args.ref) if "@" in args.ref else (args.ref, None)
        problems = reg.verify(model, version)
        n = 0 if problems else 1 if version else sum(len(reg.versions(m)) for m in ([model] if model else reg.models()))
        if not problems and n == 0 and not args.allow_empty:  # a wrong path or an unpulled registry must not pass CI
            problems = [f"{reg.root}: no release to verify (registry.root wrong, or the registry not fetched / "
                        "`dvc pull`ed yet?); --allow-empty accepts an empty registry"]
        return _report_problems(args, problems, f"{reg.root}: {n} release(s) verified, all files and manifests intact")
    if args.action in ("push", "fetch"):
        from edgeopt import registry_remote

        fs, base = registry_remote.remote_location(Path(args.root), args.remote)
        res = getattr(registry_remote, args.action)(reg, fs, base)
        moved = [f"{m}@{v}" for m, vs in (res.get("pushed", res.get("fetched")) or {}).items() for v in vs]
        adopted = [f"{m}@{v}" for m, vs in (res.get("adopted") or {}).items() for v in vs]
        _out(args, res, f"{args.action}ed {len(moved)} release(s){': ' + ', '.join(moved) if moved else ''} "
                        f"({base}); records merged"
             + (f"; adopted {', '.join(adopted)} (already here, unrecorded, the remote's very release)"
                if adopted else ""))
        return 0
    if args.action == "rollback":
        res = reg.rollback(args.model, args.channel, by=actor("edgeopt registry rollback"))
        _out(args, res, f"{res['model']}@{res['channel']}: {res['previous']} -> {res['version']} (rolled back)")
        return 0
    raise RegistryError(f"unknown registry action {args.action!r}; use one of {', '.join(ACTIONS)}")


def _report_problems(args: argparse.Namespace, problems: list[str], ok_text: str) -> int:
    from edgeopt.errors import RegistryError, safe_text

    if args.json:
        print(json.dumps({"ok": not problems, "problems": problems}, indent=2))
    for p in problems:
        print(f"  {safe_text(p)}", file=sys.stderr)
    if problems:
        raise RegistryError(f"verification failed: {len(problems)} problem(s) (listed above)")
    if not args.json:
        print(ok_text)
    return 0


def _promote(args: argparse.Namespace, reg) -> int:
    from edgeopt.errors import RegistryError
    from edgeopt.registry import actor

    if args.from_gate:
        if args.ref:
            raise RegistryError("give either a release REF or --from-gate, not both")
        from edgeopt.paths import Paths
        from stages.promote import promote_from_gate

        params = _params(args)
        if args.registry:
            params.registry.root = str(Path(args.registry).resolve())
        res = promote_from_gate(params, Paths(Path(args.root)), channel=args.channel, candidate=args.candidate,
                                allow_regression=args.allow_regression,
                                version=args.version, via="edgeopt registry promote --from-gate")
        text = (f"{res['release']} {'created' if res['created'] else 'unchanged (identical content)'} from "
                f"{res['candidate']}; {res['channel']} -> {res['version']}"
                + ("" if res["channel_changed"] else " (already)") + f"; {res['note']}")
        _out(args, res, text)
        return 0
    if not args.ref or not args.channel:
        raise RegistryError("promote needs MODEL@VERSION and --channel CHANNEL (or --from-gate)")
    if args.candidate or args.version or args.allow_regression:
        raise RegistryError("--candidate/--version/--allow-regression apply with --from-gate only")
    model, version = reg.resolve(args.ref)
    res = reg.point(model, args.channel, version, by=actor("edgeopt registry promote"))
    _out(args, res, f"{model}@{args.channel}: {res['previous']} -> {version}"
         + ("" if res["changed"] else " (already pointing there)"))
    return 0


def _list(args: argparse.Namespace, reg) -> int:
    from edgeopt.errors import RegistryError, safe_text
    from edgeopt.registry import semver_key

    data, lines = [], []
    for model in [args.model] if args.model else reg.models():
        record = reg.record(model)
        pointers = {c: reg.channel(model, c) for c in record["channels"]}
        for version in sorted(record["releases"], key=semver_key):
            try:
                m = reg.manifest(model, version)
            except RegistryError as exc:  # listed anyway; `verify` says what is wrong
                m = {"error": str(exc)}
            row = {"release": f"{model}@{version}", "created": record["releases"][version].get("created"),
                   "candidate": m.get("candidate"), "runtime": m.get("runtime"),
                   "accuracy": _obj(m.get("metrics")).get("accuracy"),
                   "latency_ms": {k: v for k, v in _obj(m.get("latency")).items() if k in ("p50_ms", "p90_ms")},
                   "channels": sorted(c for c, v in pointers.items() if v == version)}
            data.append(row)
            lat = row["latency_ms"].get("p90_ms")
            lines.append(safe_text(f"{row['release']:32s} {str(row['created']):21s} {str(row['candidate']):28s} "
                         f"{str(row['runtime']):12s} acc {_rounded(row['accuracy'], 2, ' %')}  "
                         f"p90 {_rounded(lat, 3, ' ms')}  {' '.join(row['channels'])}"))
    _out(args, data, "\n".join(lines) if lines else f"{reg.root}: no releases")
    return 0


def _rounded(value: Any, digits: int, unit: str) -> str:
    """A number for people (98.06 %, not 98.05555555555556); '-' when missing or not a number."""
    return f"{value:.{digits}f}{unit}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _show_text(model: str, version: str, m: dict, channels: list[str], problems: list[str]) -> str:
    inp, lat, met = _obj(m.get("input")), _obj(m.get("latency")), _obj(m.get("metrics"))
    lineage = _obj(m.get("lineage"))
    git = _obj(lineage.get("git"))
    stages = m.get("stages") if isinstance(m.get("stages"), list) else []
    classes = m.get("classes") if isinstance(m.get("classes"), list) else []
    lines = [f"{model}@{version}  ({', '.join(channels) or 'no channel'})",
             f"  candidate  {m.get('candidate')}  [{m.get('runtime')}, {m.get('precision')}]  stages "
             f"{' > '.join(map(str, stages))}",
             f"  accuracy   {_rounded(met.get('accuracy'), 2, ' %')} (drop {_rounded(met.get('drop'), 2, ' pt')}) on {met.get('images')} "
             f"{met.get('split')} images",
             f"  latency    p50 {_rounded(lat.get('p50_ms'), 3, ' ms')}, p90 {_rounded(lat.get('p90_ms'), 3, ' ms')} on "
             f"{_obj(lat.get('hardware')).get('cpu')} ({_obj(lat.get('profile')).get('name')})",
             f"  input      {inp.get('shape')} {inp.get('layout')} {inp.get('dtype')} {inp.get('color_order')}, "
             f"mean {inp.get('mean')}, std {inp.get('std')}",
             f"  classes    {', '.join(map(str, classes))}",
             f"  lineage    git {git.get('commit')}{' (dirty)' if git.get('dirty') else ''}, parent "
             f"{lineage.get('parent')}, created {m.get('created')} by {m.get('created_by')}",
             "  files      " + ", ".join(f"{k} ({_obj(v).get('bytes')} B)" for k, v in _obj(m.get("files")).items()),
             "  verified   " + ("ok" if not problems else "FAILED: " + "; ".join(problems))]
    from edgeopt.errors import safe_text

    return "\n".join(safe_text(line) for line in lines)  # per line: a newline inside a field stays escaped
