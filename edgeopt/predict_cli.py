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
    p.add_argument("--threads", type=_threads, default=0, help="inference threads (0 = runtime default)")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {value})")
    return value


def _threads(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 256:
        raise argparse.ArgumentTypeError(f"must be 0..256 (got {value})")
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
        problems = verify_dir(directory, pulled=True)
    if problems:
        raise RegistryError(f"{release}: release fails verification, refusing to run it: " + "; ".join(problems))
    return directory


def check_contract(manifest: Any, where: Path) -> tuple[dict[str, Any], list[str]]:
    """(input contract, class names) of a manifest, refused with one line when not what edgeopt writes: a
    crafted contract must not make predict allocate a giant image or divide by a zero std."""
    from edgeopt.errors import RegistryError

    def bad(what: str) -> RegistryError:
        return RegistryError(f"{where}: input contract refused: {what}; this release was not made by edgeopt "
                             f"(or was edited)")

    def numbers(x: Any, n: int) -> bool:
        return (isinstance(x, list) and len(x) == n and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                            and np.isfinite(v) for v in x))

    c = manifest.get("input") if isinstance(manifest, dict) else None
    if not isinstance(c, dict):
        raise bad("no 'input' object")
    channels = c.get("channels")
    if channels not in (1, 3) or isinstance(channels, bool):
        raise bad(f"channels {channels!r} (1 or 3)")
    size = (c.get("resize") or {}).get("size") if isinstance(c.get("resize"), dict) else None
    if not (numbers(size, 2) and size[0] == size[1] and isinstance(size[0], int) and 8 <= size[0] <= 512):
        raise bad(f"resize.size {size!r} (a square size of 8..512 pixels)")
    if not numbers(c.get("mean"), channels) or not numbers(c.get("std"), channels) or min(c["std"]) <= 0:
        raise bad(f"mean/std must be {channels} finite numbers each, std > 0")
    if c.get("layout", "NCHW") != "NCHW":
        raise bad(f"layout {c['layout']!r} (NCHW only)")
    classes = manifest.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(x, str) for x in classes):
        raise bad("'classes' must be a non-empty list of names")
    return c, classes


def load_image(path: str | Path, contract: dict[str, Any]) -> np.ndarray:
    """An image file -> uint8 HWC array per the input contract, decoded exactly as `prepare` decodes training data."""
    from edgeopt.images import decode

    size = contract["resize"]["size"]
    if size[0] != size[1]:
        from edgeopt.errors import RegistryError

        raise RegistryError(f"input contract size {size} is not square; this release was not made by edgeopt")
    arr = decode(path, int(contract["channels"]), int(size[0]))
    return arr[..., ::-1] if contract.get("color_order") == "BGR" else arr


def load_images(paths: list[str | Path], contract: dict[str, Any]) -> np.ndarray:
    """All images as one uint8 NHWC batch; every file that cannot be used is named (not just the first)."""
    from edgeopt.images import ImageError

    arrays, bad = [], []
    for p in paths:
        try:
            arrays.append(load_image(p, contract))
        except ImageError as exc:
            bad.append(exc)
    if bad:
        if len(bad) == 1:
            raise bad[0]
        raise ImageError(f"{len(bad)} of {len(paths)} images", "refused",
                         "; ".join(str(e) for e in bad[:10]) + (f"; +{len(bad) - 10} more" if len(bad) > 10 else ""))
    return np.stack(arrays)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predict(release_dir: str | Path, images: list[str | Path], top_k: int = 1, threads: int = 0) -> dict[str, Any]:
    """Top-k (label, score) per image with the release in `release_dir` (already verified)."""
    from edgeopt.errors import RegistryError
    from edgeopt.paths import PathEscapeError, confined
    from edgeopt.registry import read_manifest
    from edgeopt.runtime import RUNTIMES, load_model, predict_images

    d = Path(release_dir)
    manifest = read_manifest(d)[1]
    contract, classes = check_contract(manifest, d / "manifest.json")
    primary, runtime = manifest.get("primary"), manifest.get("runtime")
    if not isinstance(primary, str) or primary not in manifest["files"] or runtime not in (None, *RUNTIMES):
        raise RegistryError(f"{d / 'manifest.json'}: primary file {primary!r} / runtime {runtime!r} refused: the "
                            f"primary must be one of the release's verified files")
    try:
        model_path = confined(d, primary, "primary file")
    except PathEscapeError as exc:
        raise RegistryError(f"{d / 'manifest.json'}: {exc}") from None
    batch = load_images(images, contract)
    model = load_model(model_path, runtime=runtime, threads=threads)
    probs = softmax(predict_images(model, batch, contract["mean"], contract["std"]))
    if probs.ndim != 2 or probs.shape[1] != len(classes):
        raise RegistryError(f"{model_path}: the model outputs {list(probs.shape[1:])} scores per image but the "
                            f"manifest lists {len(classes)} classes; this release is inconsistent")
    k = max(1, min(top_k, len(classes)))
    results = []
    for path, p in zip(images, probs):
        order = np.argsort(-p)[:k]
        results.append({"image": str(path), "top": [{"label": classes[i], "index": int(i), "score": round(float(p[i]), 6)}
                                                    for i in order]})
    return {"release": f"{manifest.get('name')}@{manifest.get('version')}", "runtime": manifest.get("runtime"),
            "results": results}


def main(args: argparse.Namespace) -> int:
    from edgeopt.errors import safe_text
    from edgeopt.io import to_jsonable

    d = resolve_release(args.release, args.registry, args.params, args.root)
    out = predict(d, args.images, args.top_k, args.threads)
    if args.json:
        print(json.dumps(to_jsonable(out), indent=2, allow_nan=False))  # a NaN score prints as null, not bare NaN
        return 0
    for r in out["results"]:
        print(safe_text(f"{r['image']}: " + ", ".join(f"{t['label']} ({t['score']:.3f})" for t in r["top"])))
    return 0
