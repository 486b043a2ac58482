"""`edgeopt promote` flags (the pipeline stage after the gate). Torch-free.

    edgeopt promote                          # the gate's pick -> registry.root, channel registry.channel
    edgeopt promote --channel production --version 2.0.0

Refused with exit 4 when reports/gate.json is missing, hand-edited or stale; exit 3 when the gate passed
nothing; exit 1 for registry refusals (version exists, bad names, corrupt release).
"""
from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--channel", help="channel to point at the release (default: registry.channel)")
    p.add_argument("--candidate", help="release this candidate instead of the gate's pick (it must have passed)")
    p.add_argument("--version", help="explicit semantic version instead of bumping registry.bump")


def main(args: argparse.Namespace, params, paths) -> int:
    from stages.promote import run

    m = run(params, paths, channel=args.channel, candidate=args.candidate, version=args.version)
    print(json.dumps({"stage": "promote", **{k: m[k] for k in ("release", "created", "channel", "candidate", "tag",
                                                                "note")}}))
    return 0
