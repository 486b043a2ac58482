"""`edgeopt promote` flags (the pipeline stage after the gate). Torch-free.

    edgeopt promote                          # the gate's pick -> registry.root, channel registry.channel
    edgeopt promote --channel production --version 2.0.0

Refused with exit 4 when reports/gate.json is missing, hand-edited or stale, or the candidates were built with
other params/data than now; exit 3 when the gate passed nothing; exit 5 when the release would regress its
channel (`--allow-regression` overrides); exit 1 for registry refusals (version exists, bad names, corrupt
release, a git tag that cannot be made).
"""
from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--channel", help="channel to point at the release (default: registry.channel)")
    p.add_argument("--candidate", help="release this candidate instead of the gate's pick (it must have passed)")
    p.add_argument("--version", help="explicit semantic version instead of bumping registry.bump")
    p.add_argument("--allow-regression", action="store_true", default=None,
                   help="release even when the channel's current release is more accurate on this test split "
                        "(registry.allow_regression)")


def main(args: argparse.Namespace, params, paths) -> int:
    from stages.promote import run

    m = run(params, paths, channel=args.channel, candidate=args.candidate, version=args.version,
            allow_regression=args.allow_regression)
    print(json.dumps({"stage": "promote", **{k: m[k] for k in ("release", "created", "channel", "candidate", "tag",
                                                                "note")}}))
    return 0
