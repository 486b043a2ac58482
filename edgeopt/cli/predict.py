"""`edgeopt predict RELEASE IMAGE...`: classify image files the way a device does. Torch-free, params-free.

RELEASE is a pulled release directory (manifest.json + model files) or `registry:<model>@<version|channel>`
resolved through the registry root (`--registry`, else registry.root of params.yaml). Only the manifest is
used: its input contract (colour mode, resize, mean/std, layout) and class names; the model runs in
onnxruntime or OpenVINO through edgeopt.runtime. Files are verified against the manifest's sha256 first.

    edgeopt predict release/ digit0.png digit1.png --top-k 3
    edgeopt predict registry:digits-classifier@production img.png --json
"""
from __future__ import annotations

import argparse
import json

from edgeopt.cliargs import add_params_args, in_range


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("release", help="pulled release directory, or registry:<model>@<version|channel>")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format Pillow reads)")
    p.add_argument("--top-k", type=in_range(1), default=1, help="labels per image (default 1)")
    p.add_argument("--json", action="store_true", help="JSON output")
    add_registry_args(p)
    p.add_argument("--threads", type=in_range(0, 256), default=0, help="inference threads (0 = runtime default)")


def add_registry_args(p: argparse.ArgumentParser) -> None:
    """How a registry:<ref> is found: --registry, else registry.root of the project's params."""
    p.add_argument("--registry", metavar="DIR", help="registry root for registry:... (default: registry.root)")
    add_params_args(p, params_help="params file naming registry.root (registry:... only)",
                    root_help="project directory the registry root is relative to")


def main(args: argparse.Namespace) -> int:
    from edgeopt.errors import safe_text
    from edgeopt.io import to_jsonable
    from edgeopt.predict import predict
    from edgeopt.releases import resolve_release

    d = resolve_release(args.release, args.registry, args.params, args.root, args.overrides)
    out = predict(d, args.images, args.top_k, args.threads)
    if args.json:
        print(json.dumps(to_jsonable(out), indent=2, allow_nan=False))  # a NaN score prints as null, not bare NaN
        return 0
    for r in out["results"]:
        print(safe_text(f"{r['image']}: " + ", ".join(f"{t['label']} ({t['score']:.3f})" for t in r["top"])))
    return 0
