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
from pathlib import Path
from typing import Any

import numpy as np

REGISTRY_PREFIX = "registry:"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("release", help="pulled release directory, or registry:<model>@<version|channel>")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format Pillow reads)")
    p.add_argument("--top-k", type=_positive, default=1, help="labels per image (default 1)")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.add_argument("--registry", metavar="DIR", help="registry root for registry:... (default: registry.root)")
    p.add_argument("--params", default="params.yaml", help="params file naming registry.root (registry:... only)")
    p.add_argument("--root", default=".", help="project directory the registry root is relative to")
    p.add_argument("--threads", type=int, default=0, help="inference threads (0 = runtime default)")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {value})")
    return value


def resolve_release(release: str, registry: str | None = None, params: str = "params.yaml",
                    root: str = ".") -> Path:
    """The verified release directory for a directory path or a registry:<ref>."""
    from edgeopt.errors import RegistryError
    from edgeopt.registry import Registry, verify_dir

    if release.startswith(REGISTRY_PREFIX):
        if registry is None:
            from edgeopt.registry_cli import registry_root

            registry = str(registry_root(argparse.Namespace(registry=None, root=root, params=params, overrides=[])))
        reg = Registry(registry)
        model, version = reg.resolve(release[len(REGISTRY_PREFIX):])
        problems = reg.verify(model, version)
        directory = reg.release_dir(model, version)
    else:
        directory = Path(release)
        if not (directory / "manifest.json").is_file():
            raise RegistryError(f"{directory}: no manifest.json; pass a pulled release directory "
                                f"(`edgeopt registry pull MODEL@CHANNEL --to DIR`) or registry:<model>@<channel>")
        problems = verify_dir(directory)
    if problems:
        raise RegistryError(f"{release}: release fails verification, refusing to run it: " + "; ".join(problems))
    return directory


def load_image(path: str | Path, contract: dict[str, Any]) -> np.ndarray:
    """An image file -> uint8 HWC array per the input contract, decoded exactly as `prepare` decodes training data."""
    from edgeopt.images import decode

    size = contract["resize"]["size"]
    if size[0] != size[1]:
        from edgeopt.errors import RegistryError

        raise RegistryError(f"input contract size {size} is not square; this release was not made by edgeopt")
    arr = decode(path, int(contract["channels"]), int(size[0]))
    return arr[..., ::-1] if contract.get("color_order") == "BGR" else arr


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predict(release_dir: str | Path, images: list[str | Path], top_k: int = 1, threads: int = 0) -> dict[str, Any]:
    """Top-k (label, score) per image with the release in `release_dir` (already verified)."""
    from edgeopt.runtime import load_model, predict_images

    d = Path(release_dir)
    manifest = json.loads((d / "manifest.json").read_text())
    contract, classes = manifest["input"], manifest["classes"]
    if contract.get("layout", "NCHW") != "NCHW":
        from edgeopt.errors import RegistryError

        raise RegistryError(f"{d / 'manifest.json'}: input layout {contract['layout']!r} is not supported (NCHW only)")
    model = load_model(d / manifest["primary"], runtime=manifest.get("runtime"), threads=threads)
    batch = np.stack([load_image(p, contract) for p in images])
    probs = softmax(predict_images(model, batch, contract["mean"], contract["std"]))
    k = max(1, min(top_k, len(classes)))
    results = []
    for path, p in zip(images, probs):
        order = np.argsort(-p)[:k]
        results.append({"image": str(path), "top": [{"label": classes[i], "index": int(i), "score": round(float(p[i]), 6)}
                                                    for i in order]})
    return {"release": f"{manifest['name']}@{manifest['version']}", "runtime": manifest.get("runtime"),
            "results": results}


def main(args: argparse.Namespace) -> int:
    d = resolve_release(args.release, args.registry, args.params, args.root)
    out = predict(d, args.images, args.top_k, args.threads)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for r in out["results"]:
        print(f"{r['image']}: " + ", ".join(f"{t['label']} ({t['score']:.3f})" for t in r["top"]))
    return 0
