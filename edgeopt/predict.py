"""Classify image files the way a device does: a verified release's manifest (input contract, class names) and
its model in onnxruntime or OpenVINO (edgeopt.runtime). Torch-free, params-free; `edgeopt predict` is the command.

    predict(resolve_release("release/"), ["digit0.png"], top_k=3)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.errors import ImageError, PathEscapeError, RegistryError
from edgeopt.images import decode
from edgeopt.paths import confined
from edgeopt.registry import read_manifest
from edgeopt.runtime import RUNTIMES, load_model, predict_images


def check_contract(manifest: Any, where: Path) -> tuple[dict[str, Any], list[str]]:
    """(input contract, class names) of a manifest, refused with one line when not what edgeopt writes: a
    crafted contract must not make predict allocate a giant image or divide by a zero std."""
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
    size = contract["resize"]["size"]
    if size[0] != size[1]:
            raise RegistryError(f"input contract size {size} is not square; this release was not made by edgeopt")
    arr = decode(path, int(contract["channels"]), int(size[0]))
    return arr[..., ::-1] if contract.get("color_order") == "BGR" else arr


def load_images(paths: list[str | Path], contract: dict[str, Any]) -> np.ndarray:
    """All images as one uint8 NHWC batch; every file that cannot be used is named (not just the first)."""
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


def open_release(release_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any], list[str], Path, str | None]:
    """(manifest, input contract, class names, model file, runtime) of a verified release directory, each
    checked: whatever a manifest says, the model file is one of its verified files inside the directory."""
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
    return manifest, contract, classes, model_path, runtime


def predict(release_dir: str | Path, images: list[str | Path], top_k: int = 1, threads: int = 0) -> dict[str, Any]:
    """Top-k (label, score) per image with the release in `release_dir` (already verified)."""
    manifest, contract, classes, model_path, runtime = open_release(release_dir)
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
