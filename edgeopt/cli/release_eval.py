"""`edgeopt evaluate-release RELEASE DATA_DIR`: a release's accuracy on a labelled folder it never saw, per class,
with the confusion matrix and a drift check against the accuracy in its manifest. Torch-free, params-free.

    edgeopt evaluate-release registry:digits-classifier@production data/new-camera/
    edgeopt evaluate-release release/ data/march/ --max-drop 1 --json > eval.json; echo $?   # CI: 3 = drifted

Exit codes: 0 within the allowed drop (or --report-only: no check), 3 accuracy lower than the manifest's by more than
--max-drop, 4 the drift check could not run (the manifest records no accuracy; --report-only skips the check),
2 DATA_DIR does not fit the release (a class folder it does not know, no class folders), 1 the release fails
verification or no image could be decoded. Core logic: edgeopt.release_eval.
"""
from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

from edgeopt.cli.predict import add_registry_args
from edgeopt.cliargs import in_range
from edgeopt.errors import EXIT_NONE_PASS, EXIT_STALE
from edgeopt.release_eval import DEFAULT_BATCH, DEFAULT_MAX_DROP


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("release", help="pulled release directory, or registry:<model>@<version|channel>")
    p.add_argument("data_dir", metavar="DATA_DIR", help="labelled folder DATA_DIR/<class>/<image>; folder names "
                                                        "are the release's class names")
    check = p.add_mutually_exclusive_group()
    check.add_argument("--max-drop", type=in_range(0, 100, float, " points"), default=DEFAULT_MAX_DROP,
                       metavar="POINTS", help="exit 3 when accuracy is lower than the manifest's by more than this "
                                              f"many points (default {DEFAULT_MAX_DROP:g})")
    check.add_argument("--report-only", action="store_true",
                       help="measure and report without the drift check (status not_checked, exit 0 whatever the "
                            "accuracy); without it, a release whose manifest records no accuracy exits 4 (status "
                            "not_compared): nothing to compare with")
    p.add_argument("--out", metavar="DIR", help="where report.json and confusion.png go "
                                                "(default: release-eval/<model>-<version>/)")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the text summary")
    p.add_argument("--batch-size", type=in_range(1, 4096), default=DEFAULT_BATCH,
                   help=f"images per batch (default {DEFAULT_BATCH})")
    p.add_argument("--threads", type=in_range(0, 256), default=0, help="inference threads (0 = runtime default)")
    add_registry_args(p)


def main(args: argparse.Namespace) -> int:
    from edgeopt.io import atomic_write_bytes, write_json
    from edgeopt.predict import load_image, open_release
    from edgeopt.release_eval import confusion_png, evaluate_release, format_text
    from edgeopt.releases import resolve_release

    release_dir = resolve_release(args.release, args.registry, args.params, args.root, args.overrides)  # verified
    manifest, contract, _, _, _ = open_release(release_dir)  # a crafted contract is refused before any image
    load = functools.partial(load_image, contract=contract)
    out = Path(args.out) if args.out else Path("release-eval") / _default_folder(manifest)  # before the work
    # a DATA_DIR that does not fit the release raises FolderMismatch: exit 2 like any argument error
    report = evaluate_release(release_dir, args.data_dir, load, max_drop=None if args.report_only else args.max_drop,
                              batch_size=args.batch_size, threads=args.threads)
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
    return {"drift": EXIT_NONE_PASS, "not_compared": EXIT_STALE}.get(report["status"], 0)


def _default_folder(manifest: dict) -> str:
    """release-eval/<name>-<version>, from checked names only: a manifest cannot send the report elsewhere."""
    from edgeopt.errors import RegistryError
    from edgeopt.registry import check_name, check_version

    try:
        return f"{check_name(manifest.get('name'))}-{check_version(manifest.get('version'))}"
    except RegistryError as exc:
        raise RegistryError(f"the release's manifest: {exc}; pass --out DIR for the report") from None
