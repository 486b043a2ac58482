"""`edgeopt evaluate-release RELEASE DATA_DIR`: a release's accuracy on a labelled folder it never saw, per class,
with the confusion matrix and a drift check against the accuracy in its manifest. Torch-free, params-free.

    edgeopt evaluate-release registry:digits-classifier@production data/new-camera/
    edgeopt evaluate-release release/ data/march/ --max-drop 1 --json > eval.json; echo $?   # CI: 3 = drifted

Exit codes: 0 within the allowed drop, 3 accuracy lower than the manifest's by more than --max-drop,
2 DATA_DIR does not fit the release (a class folder it does not know, no class folders), 1 the release fails
verification or no image could be decoded. Core logic: edgeopt.release_eval.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

from edgeopt.release_eval import DEFAULT_BATCH, DEFAULT_MAX_DROP

EXIT_DRIFT = 3
EXIT_USAGE = 2


def points(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be between 0 and 100 points (got {text})")
    return value


def batch_size(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 4096:
        raise argparse.ArgumentTypeError(f"must be between 1 and 4096 (got {text})")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("release", help="pulled release directory, or registry:<model>@<version|channel>")
    p.add_argument("data_dir", metavar="DATA_DIR", help="labelled folder DATA_DIR/<class>/<image>; folder names "
                                                        "are the release's class names")
    p.add_argument("--max-drop", type=points, default=DEFAULT_MAX_DROP, metavar="POINTS",
                   help="exit 3 when accuracy is lower than the manifest's by more than this many points "
                        f"(default {DEFAULT_MAX_DROP:g})")
    p.add_argument("--out", metavar="DIR", help="where report.json and confusion.png go "
                                                "(default: release-eval/<model>-<version>/)")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the text summary")
    p.add_argument("--batch-size", type=batch_size, default=DEFAULT_BATCH,
                   help=f"images per batch (default {DEFAULT_BATCH})")
    p.add_argument("--threads", type=int, default=0, help="inference threads (0 = runtime default)")
    p.add_argument("--registry", metavar="DIR", help="registry root for registry:... (default: registry.root)")
    p.add_argument("--params", default="params.yaml", help="params file naming registry.root (registry:... only)")
    p.add_argument("--root", default=".", help="project directory the registry root is relative to")


def main(args: argparse.Namespace) -> int:
    from edgeopt.io import atomic_write_bytes, write_json
    from edgeopt.predict_cli import load_image, resolve_release
    from edgeopt.release_eval import FolderMismatch, confusion_png, evaluate_release, format_text

    release_dir = resolve_release(args.release, args.registry, args.params, args.root)  # verified first
    manifest = json.loads((release_dir / "manifest.json").read_text())
    load = functools.partial(load_image, contract=manifest["input"])
    try:
        report = evaluate_release(release_dir, args.data_dir, load, max_drop=args.max_drop,
                                  batch_size=args.batch_size, threads=args.threads)
    except FolderMismatch as exc:
        print(f"edgeopt evaluate-release: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    out = Path(args.out) if args.out else Path("release-eval") / f"{manifest['name']}-{manifest['version']}"
    try:
        png: str | None = str(atomic_write_bytes(out / "confusion.png", confusion_png(report)))
    except ImportError:  # a device install without matplotlib: the numbers are all in the JSON
        png = None
    report["outputs"] = {"json": str(out / "report.json"), "confusion_png": png}
    write_json(out / "report.json", report)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_text(report))
        print(f"Wrote {out / 'report.json'}" + (f", {png}" if png else " (no PNG: matplotlib is not installed)"))
    return EXIT_DRIFT if report["status"] == "drift" else 0
