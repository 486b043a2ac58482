"""prepare: read the data source, drop exact duplicates, make stratified seeded splits -> data/prepared/.

Sources (data.source): digits (scikit-learn, offline), cifar10 (torchvision; downloads when online, else reads a
local copy), imagefolder (root/<class>/<image>). Every problem found in an image folder is collected and reported
together (file, class, count); nothing under data/prepared/ changes unless the whole preparation succeeds.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from edgeopt.arrays import SPLITS, DataError
from edgeopt.images import (BOMB, CORRUPT, HIGH_DEPTH, IMAGE_EXTENSIONS, NOT_IMAGE, NOT_REGULAR, WRONG_SIZE,
                            ImageError, decode, to_contract)
from edgeopt.io import atomic_dir, write_json
from edgeopt.params import Data, Params
from edgeopt.paths import Paths
from edgeopt.stage import stage

# problem classes in the order the report lists them
PROBLEM_ORDER = ("empty class folder", NOT_IMAGE, NOT_REGULAR, CORRUPT, WRONG_SIZE, HIGH_DEPTH, BOMB)
SAMPLES_PER_SPLIT = 10  # test images also written as PNG, for `edgeopt predict` demos and device checks


def _to_contract(img, cfg: Data):
    """PIL image -> uint8 HWC array in the configured size and channels."""
    return to_contract(img, cfg.channels, cfg.image_size)


def load_digits_source(cfg: Data) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    raw = (d.images / 16.0 * 255.0).round().astype(np.uint8)
    images = np.stack([_to_contract(Image.fromarray(im, mode="L"), cfg) for im in raw])
    names = [f"digits/{i}" for i in range(len(raw))]
    return images, d.target.astype(np.int64), [str(i) for i in range(10)], names


def load_cifar10_source(cfg: Data, project_root: Path) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    from PIL import Image

    root = Path(cfg.root)
    root = root if root.is_absolute() else project_root / root
    expected = root / "cifar-10-batches-py"
    try:
        from torchvision.datasets import CIFAR10

        parts = [CIFAR10(str(root), train=t, download=cfg.download and not expected.exists()) for t in (True, False)]
    except Exception as exc:  # offline download, or a missing/corrupt local copy
        raise DataError(
            f"CIFAR-10 not available: expected the extracted python version at {expected} "
            f"({type(exc).__name__}: {str(exc)[:160]}). Put cifar-10-batches-py there, or set data.download: true "
            "with internet access, or use data.source: imagefolder") from None
    images, labels, names = [], [], []
    for part, split in zip(parts, ("train", "test")):
        for i, (arr, y) in enumerate(zip(part.data, part.targets)):
            images.append(_to_contract(Image.fromarray(arr), cfg))
            labels.append(y)
            names.append(f"cifar10/{split}/{i}")
    return np.stack(images), np.asarray(labels, np.int64), list(parts[0].classes), names


def load_imagefolder_source(cfg: Data, project_root: Path) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    root = Path(cfg.root)
    root = root if root.is_absolute() else project_root / root
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; set data.root to a folder laid out as root/<class>/<image>")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root}: no class folders found; expected root/<class>/<image>.png|jpg")
    problems: dict[str, list[str]] = {}
    images, labels, names = [], [], []
    for label, cdir in enumerate(class_dirs):
        files = sorted(p for p in cdir.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            problems.setdefault("empty class folder", []).append(f"{cdir.name}/")
            continue
        for f in files:
            rel = str(f.relative_to(root))
            if f.suffix.lower() not in IMAGE_EXTENSIONS:
                problems.setdefault(NOT_IMAGE, []).append(rel)
                continue
            try:
                images.append(decode(f, cfg.channels, cfg.image_size, cfg.resize))
            except ImageError as exc:
                problems.setdefault(exc.kind, []).append(f"{rel} ({exc.detail})" if exc.detail else rel)
                continue
            labels.append(label)
            names.append(rel)
    found = {k: problems[k] for k in sorted(problems, key=lambda k: (PROBLEM_ORDER + (k,)).index(k)) if problems[k]}
    if found:
        lines = [f"{root}: {sum(map(len, found.values()))} problem(s) in the image folder; nothing was written:"]
        for kind, items in found.items():
            shown = ", ".join(items[:8]) + (f", ... (+{len(items) - 8} more)" if len(items) > 8 else "")
            lines.append(f"  - {kind} ({len(items)}): {shown}")
        lines.append("Fix or remove these files (or set data.resize: true for size mismatches) and rerun prepare.")
        raise DataError("\n".join(lines))
    classes = [d.name for d in class_dirs]
    return np.stack(images), np.asarray(labels, np.int64), classes, names


def _dedupe(images: np.ndarray, labels: np.ndarray, names: list[str]):
    """Drop exact duplicate images (keeps the first), so a duplicate can never straddle train and test."""
    seen: dict[bytes, int] = {}
    keep, conflicts = [], []
    for i, img in enumerate(images):
        h = hashlib.sha1(img.tobytes()).digest()
        if h in seen:
            if labels[seen[h]] != labels[i]:
                conflicts.append(f"{names[i]} duplicates {names[seen[h]]} with another label")
            continue
        seen[h] = i
        keep.append(i)
    keep = np.asarray(keep)
    return images[keep], labels[keep], [names[i] for i in keep], len(images) - len(keep), conflicts


def _cap_per_class(labels: np.ndarray, cap: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = [rng.permutation(np.flatnonzero(labels == c))[:cap] for c in np.unique(labels)]
    return np.sort(np.concatenate(idx))


def make_splits(labels: np.ndarray, cfg: Data, seed: int, classes: list[str]) -> dict[str, np.ndarray]:
    from sklearn.model_selection import train_test_split

    counts = np.bincount(labels, minlength=len(classes))
    n_splits_min = 3  # each class needs at least one image in train, val and test
    small = [f"{classes[c]} ({counts[c]})" for c in range(len(classes)) if counts[c] < n_splits_min]
    if small:
        raise DataError(f"classes with fewer than {n_splits_min} images cannot be split into train/val/test: "
                        f"{', '.join(small)}; add images or remove the class")
    idx = np.arange(len(labels))
    trval, test = train_test_split(idx, test_size=cfg.test_fraction, stratify=labels, random_state=seed)
    val_share = cfg.val_fraction / (1 - cfg.test_fraction)
    train, val = train_test_split(trval, test_size=val_share, stratify=labels[trval], random_state=seed)
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def load_source(cfg: Data, project_root: Path):
    if cfg.source == "digits":
        return load_digits_source(cfg)
    if cfg.source == "cifar10":
        return load_cifar10_source(cfg, project_root)
    return load_imagefolder_source(cfg, project_root)


@stage("prepare")
def run(params: Params, paths: Paths) -> dict:
    cfg = params.data
    images, labels, classes, names = load_source(cfg, paths.root)
    if len(classes) < 2 or len(np.unique(labels)) < 2:
        raise DataError(f"data source {cfg.source!r} has only one class ({classes[0] if classes else 'none'}); "
                        "a classifier needs at least two class folders")
    images, labels, names, n_dupes, conflicts = _dedupe(images, labels, names)
    if conflicts:
        raise DataError(f"{len(conflicts)} identical image(s) carry different labels: {'; '.join(conflicts[:5])}")
    if cfg.max_images_per_class:
        keep = _cap_per_class(labels, cfg.max_images_per_class, params.seed)
        images, labels, names = images[keep], labels[keep], [names[i] for i in keep]
    splits = make_splits(labels, cfg, params.seed, classes)
    train_x = images[splits["train"]].astype(np.float32) / 255.0
    mean = train_x.mean(axis=(0, 1, 2))
    std = np.maximum(train_x.std(axis=(0, 1, 2)), 1e-3)
    content = hashlib.sha256()
    counts, files = {}, {}
    with atomic_dir(paths.prepared) as tmp:
        for split in SPLITS:
            ix = splits[split]
            (tmp / split).mkdir()
            np.save(tmp / split / "images.npy", np.ascontiguousarray(images[ix]))
            np.save(tmp / split / "labels.npy", labels[ix])
            content.update(split.encode() + images[ix].tobytes() + labels[ix].tobytes())
            counts[split] = {c: int((labels[ix] == i).sum()) for i, c in enumerate(classes)}
            files[split] = [names[i] for i in ix]
        _write_samples(tmp / "samples", images[splits["test"]], labels[splits["test"]], classes)
        meta = {
            "source": cfg.source, "root": cfg.root if cfg.source != "digits" else None,
            "classes": classes, "num_classes": len(classes), "image_size": cfg.image_size,
            "channels": cfg.channels, "layout": "NCHW", "dtype": "float32",
            "color_order": "RGB" if cfg.channels == 3 else "L", "resize": "bilinear",
            "scale": 1.0 / 255.0, "mean": mean.tolist(), "std": std.tolist(),
            "counts": counts, "duplicates_removed": n_dupes, "content_hash": content.hexdigest(),
            "seed": params.seed, "files": files,
        }
        write_json(tmp / "meta.json", meta)
    sizes = {s: int(len(splits[s])) for s in SPLITS}
    print(f"prepare: {cfg.source}: {len(labels)} images, {len(classes)} classes, splits {sizes}, "
          f"{n_dupes} duplicates removed")
    return {"source": cfg.source, "images": int(len(labels)), "classes": len(classes), **{f"{s}_images": n for s, n in sizes.items()},
            "duplicates_removed": n_dupes, "image_shape": [cfg.image_size, cfg.image_size, cfg.channels],
            "content_hash": meta["content_hash"]}


def _write_samples(folder: Path, images: np.ndarray, labels: np.ndarray, classes: list[str]) -> None:
    from PIL import Image

    folder.mkdir()
    for i in range(min(SAMPLES_PER_SPLIT, len(images))):
        img = images[i][..., 0] if images.shape[-1] == 1 else images[i]
        Image.fromarray(img).save(folder / f"test_{i:03d}_{classes[labels[i]]}.png")


if __name__ == "__main__":
    import sys

    from edgeopt.stage import stage_main

    sys.exit(stage_main(run))
