"""prepare: read the data source, drop exact duplicates, make stratified seeded splits -> data/prepared/.

Sources (data.source): digits (scikit-learn, offline), cifar10 (torchvision; downloads when online, else reads a
local copy; its official test batch is the test split unless data.official_test is false), imagefolder
(root/<class>/<image>, optionally a separate test tree data.test_root with the same class folders).

Memory stays bounded whatever the size of an image folder: every image is decoded once and appended to a raw
file in the output's temp dir (deduplicated by a hash of its pixels), the splits are copied from that file block
by block, and the train mean/std come from exact per-channel pixel histograms. Every problem found in an image
folder is collected and reported together (file, class, count); nothing under data/prepared/ changes unless the
whole preparation succeeds. What is skipped on purpose (hidden entries, files beside the class folders) is listed
in the summary and in meta.json "ignored", never dropped silently.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import sys
import unicodedata
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from edgeopt.arrays import NpyWriter, SPLITS
from edgeopt.errors import DataError, ImageError
from edgeopt.images import (BOMB, CORRUPT, HIGH_DEPTH, IMAGE_EXTENSIONS, NOT_IMAGE, NOT_REGULAR, WRONG_SIZE, decode,
                            to_contract)
from edgeopt.io import atomic_dir, write_json
from edgeopt.params import Data, Params
from edgeopt.paths import Paths
from edgeopt.stage import stage, stage_main

# Class folder names become labels, file names (samples) and report text: long enough for any real label, short
# enough for file-system limits (255 bytes per name) and readable reports.
MAX_CLASS_NAME_CHARS, MAX_CLASS_NAME_BYTES = 100, 200
NAME_TOO_LONG = f"class folder name too long (over {MAX_CLASS_NAME_CHARS} characters or {MAX_CLASS_NAME_BYTES} bytes)"
NAME_CONTROL = "class folder name with control or invisible format characters"
NAME_CLASH = "class folder names that differ only in case or Unicode normalisation"
MISSING_IN_TEST = "class folder missing from data.test_root"
EXTRA_IN_TEST = "class folder only in data.test_root (not in data.root)"
BROKEN_LINK = "broken symlink"
LINK_LOOP = "folder reached twice through symlinks (a loop or a second link)"
UNREADABLE = "unreadable folder"
# problem classes in the order the report lists them
PROBLEM_ORDER = (NAME_TOO_LONG, NAME_CONTROL, NAME_CLASH, MISSING_IN_TEST, EXTRA_IN_TEST, "empty class folder",
                 UNREADABLE, BROKEN_LINK, LINK_LOOP, NOT_IMAGE, NOT_REGULAR, CORRUPT, WRONG_SIZE, HIGH_DEPTH, BOMB)
SAMPLES_PER_SPLIT = 10  # test images also written as PNG, for `edgeopt predict` demos and device checks
STORE = ".decoded.u8"  # decoded images, in the output's temp dir; removed before the output is published
BLOCK_BYTES = 1 << 20  # rows copied per block: bounds the memory of copying splits and of the statistics


@dataclass
class Part:
    """Images of one origin: "pool" (train/val, and test when carved) or "test" (a separate test set)."""
    kind: str
    origin: str  # where the images come from, recorded in meta.json split_sources
    items: Callable[[], Iterator[tuple[str, int, np.ndarray | ImageError]]]  # (name, label, image or why not)
    shown: str = ""  # prefix of its names in problem reports (the test tree's path)


@dataclass
class Source:
    classes: list[str]
    parts: list[Part]  # in decode order: a separate test set first, so deduplication keeps it whole
    where: str  # the folder(s) named in a problem report
    problems: dict[str, list[str]] = field(default_factory=dict)
    ignored: list[dict[str, str]] = field(default_factory=list)


def _array_items(images: np.ndarray, labels, names: list[str], cfg: Data, mode: str | None = None):
    from PIL import Image

    def items():
        for arr, y, name in zip(images, labels, names):
            yield name, int(y), to_contract(Image.fromarray(arr, mode=mode), cfg.channels, cfg.image_size)
    return items


def digits_source(cfg: Data) -> Source:
    from sklearn.datasets import load_digits

    d = load_digits()
    raw = (d.images / 16.0 * 255.0).round().astype(np.uint8)
    names = [f"digits/{i}" for i in range(len(raw))]
    return Source([str(i) for i in range(10)],
                  [Part("pool", f"scikit-learn digits ({len(raw)} images)",
                        _array_items(raw, d.target, names, cfg, "L"))],
                  "digits")


def cifar10_source(cfg: Data, project_root: Path) -> Source:
    """torchvision's CIFAR-10 (held in memory by torchvision itself: 180 MB). With data.official_test the
    10,000-image test batch is the test split, as in published results; otherwise it joins the pool."""
    root = _resolve(cfg.root, project_root)
    expected = root / "cifar-10-batches-py"
    try:
        from torchvision.datasets import CIFAR10

        parts = {s: CIFAR10(str(root), train=s == "train", download=cfg.download and not expected.exists())
                 for s in ("train", "test")}
    except Exception as exc:  # offline download, or a missing/corrupt local copy
        raise DataError(
            f"CIFAR-10 not available: expected the extracted python version at {expected} "
            f"({type(exc).__name__}: {str(exc)[:160]}). Put cifar-10-batches-py there, or set data.download: true "
            "with internet access, or use data.source: imagefolder") from None

    def part(split: str, kind: str, origin: str) -> Part:
        data = parts[split]
        return Part(kind, origin, _array_items(data.data, data.targets,
                                               [f"cifar10/{split}/{i}" for i in range(len(data.data))], cfg))
    train = part("train", "pool", f"CIFAR-10 training batches data_batch_1..5 ({len(parts['train'].data)} images)")
    test_origin = f"CIFAR-10 official test batch test_batch ({len(parts['test'].data)} images)"
    chosen = ([part("test", "test", test_origin), train] if cfg.official_test
              else [train, part("test", "pool", test_origin)])
    return Source(list(parts["train"].classes), chosen, str(expected))


# --- image folders ---------------------------------------------------------------------------------------------
def _resolve(folder: str, project_root: Path) -> Path:
    path = Path(folder)
    return path if path.is_absolute() else project_root / path


@dataclass
class Tree:
    """One image folder, listed (not decoded): its class folders and files, problems, what it skips."""
    root: Path
    shown: str  # prefix of its paths in reports ("" for data.root, the folder itself for data.test_root)
    classes: dict[str, list[Path]] = field(default_factory=dict)
    problems: dict[str, list[str]] = field(default_factory=dict)
    ignored: list[dict[str, str]] = field(default_factory=list)

    def rel(self, path: Path) -> str:
        return str(path.relative_to(self.root))

    def show(self, rel: str) -> str:
        return f"{self.shown}/{rel}" if self.shown else rel

    def problem(self, kind: str, rel: str) -> None:
        self.problems.setdefault(kind, []).append(self.show(rel))

    def ignore(self, rel: str, reason: str) -> None:
        self.ignored.append({"path": self.show(rel), "reason": reason})


def scan_tree(root: Path, shown: str = "") -> Tree:
    """List root/<class>/**/<file>. Hidden entries (.cache/, .DS_Store) and files beside the class folders are
    skipped and listed; symlinks are followed (DVC's symlink cache and shared data mounts use them), broken
    links and loops are problems; non-regular files are left to the decoder, which refuses them unopened."""
    tree = Tree(root, shown)
    visited: set[tuple[int, int]] = set()
    for entry in sorted(root.iterdir()):
        name = entry.name
        if name.startswith("."):
            tree.ignore(name + ("/" if entry.is_dir() else ""), "hidden folder" if entry.is_dir() else "hidden file")
        elif entry.is_symlink() and not entry.exists():
            tree.problem(BROKEN_LINK, name)
        elif not entry.is_dir():
            tree.ignore(name, "not in a class folder")
        else:
            tree.classes[name] = _class_files(tree, entry, visited)
    return tree


def _class_files(tree: Tree, cdir: Path, visited: set[tuple[int, int]]) -> list[Path]:
    def unreadable(err: OSError) -> None:
        tree.problem(UNREADABLE, f"{tree.rel(Path(err.filename))}/ ({err.strerror})")

    st = cdir.stat()
    visited.add((st.st_dev, st.st_ino))
    files = []
    for dirpath, dirnames, filenames in os.walk(cdir, followlinks=True, onerror=unreadable):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            rel = tree.rel(here / d)
            if d.startswith("."):
                tree.ignore(rel + "/", "hidden folder")
                continue
            st = (here / d).stat()
            if (st.st_dev, st.st_ino) in visited:
                tree.problem(LINK_LOOP, rel + "/")
                continue
            visited.add((st.st_dev, st.st_ino))
            keep.append(d)
        dirnames[:] = keep
        for f in filenames:
            if f.startswith("."):
                tree.ignore(tree.rel(here / f), "hidden file")
            else:
                files.append(here / f)
    if not files:
        tree.problem("empty class folder", f"{cdir.name}/")
    return sorted(files)


def class_name_problems(names: list[str]) -> dict[str, list[str]]:
    """Names that cannot be labels: too long, with control/format characters, or equal to another one up to case
    or Unicode normalisation (two classes on one file system, one on another, and indistinguishable in reports)."""
    problems: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for name in names:
        if len(name) > MAX_CLASS_NAME_CHARS or len(name.encode()) > MAX_CLASS_NAME_BYTES:
            problems.setdefault(NAME_TOO_LONG, []).append(f"{name[:40]}... ({len(name)} characters)")
        if any(unicodedata.category(ch) in ("Cc", "Cf") for ch in name):
            problems.setdefault(NAME_CONTROL, []).append(ascii(name)[:60])
        key = unicodedata.normalize("NFKC", name).casefold()
        if key in seen:
            problems.setdefault(NAME_CLASH, []).append(f"{ascii(seen[key])} and {ascii(name)}")
        seen.setdefault(key, name)
    return problems


def _tree_items(tree: Tree, classes: list[str], cfg: Data):
    def items():
        for label, cls in enumerate(classes):
            for f in tree.classes.get(cls, []):
                rel = tree.rel(f)
                if f.is_symlink() and not f.exists():
                    yield rel, label, ImageError(tree.show(rel), BROKEN_LINK)
                elif f.suffix.lower() not in IMAGE_EXTENSIONS:
                    yield rel, label, ImageError(tree.show(rel), NOT_IMAGE)
                else:
                    try:
                        yield rel, label, decode(f, cfg.channels, cfg.image_size, cfg.resize)
                    except ImageError as exc:
                        exc.path = tree.show(rel)
                        yield rel, label, exc
    return items


def imagefolder_source(cfg: Data, project_root: Path) -> Source:
    root = _resolve(cfg.root, project_root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; set data.root to a folder laid out as "
                        "root/<class>/<image>")
    tree = scan_tree(root)
    if not tree.classes and not tree.problems:
        stray = (f" (only {len(tree.ignored)} ignored entr{'y' if len(tree.ignored) == 1 else 'ies'}, e.g. "
                 f"{tree.ignored[0]['path']}: {tree.ignored[0]['reason']})" if tree.ignored else "")
        raise DataError(f"{root}: no class folders found{stray}; expected root/<class>/<image>.png|jpg")
    classes = sorted(tree.classes)
    problems = {**class_name_problems(classes)}
    for kind, items in tree.problems.items():
        problems.setdefault(kind, []).extend(items)
    pool = Part("pool", f"image folder {root} ({sum(map(len, tree.classes.values()))} files)",
                _tree_items(tree, classes, cfg))
    test_root = _resolve(cfg.test_root, project_root)
    if not test_root.exists() and cfg.test_root == Data.model_fields["test_root"].default:
        return Source(classes, [pool], str(root), problems, tree.ignored)  # the placeholder, outside a clone
    if not test_root.is_dir():
        raise DataError(f"data.test_root {test_root} does not exist; set it to a folder with the same class folders "
                        "as data.root (root/<class>/<image>), or to an empty folder (the shipped data/raw/test-images) "
                        "to carve the test split from data.root")
    test = scan_tree(test_root, shown=str(test_root))
    if not test.classes and not test.problems:  # no class folder (the shipped placeholder): carve from root
        return Source(classes, [pool], str(root), problems, tree.ignored)
    missing, extra = sorted(set(classes) - set(test.classes)), sorted(set(test.classes) - set(classes))
    if missing:
        problems[MISSING_IN_TEST] = [f"{c}/" for c in missing]
    if extra:
        problems[EXTRA_IN_TEST] = [f"{c}/" for c in extra]
    for kind, items in test.problems.items():
        problems.setdefault(kind, []).extend(items)
    test_part = Part("test", f"image folder {test_root} ({sum(map(len, test.classes.values()))} files)",
                     _tree_items(test, classes, cfg), shown=str(test_root))
    return Source(classes, [test_part, pool], f"{root} (test: {test_root})", problems, tree.ignored + test.ignored)


def open_source(cfg: Data, project_root: Path) -> Source:
    if cfg.source == "digits":
        return digits_source(cfg)
    if cfg.source == "cifar10":
        return cifar10_source(cfg, project_root)
    return imagefolder_source(cfg, project_root)


def raise_problems(where: str, problems: dict[str, list[str]]) -> None:
    found = {k: problems[k] for k in sorted(problems, key=lambda k: (PROBLEM_ORDER + (k,)).index(k)) if problems[k]}
    if not found:
        return
    lines = [f"{where}: {sum(map(len, found.values()))} problem(s) in the image folder; nothing was written:"]
    for kind, items in found.items():
        shown = ", ".join(items[:8]) + (f", ... (+{len(items) - 8} more)" if len(items) > 8 else "")
        lines.append(f"  - {kind} ({len(items)}): {shown}")
    lines.append("Fix or remove these files (or set data.resize: true for size mismatches) and rerun prepare.")
    raise DataError("\n".join(lines))


# --- decoded images on disk ------------------------------------------------------------------------------------
class DecodedStore:
    """Every distinct decoded image, appended to one raw uint8 file; labels, names and origins in memory (a few
    dozen bytes per image). Exact duplicates (same pixels) are dropped as they arrive, keeping the first, so a
    duplicate can never straddle train and test."""

    def __init__(self, path: Path, shape: tuple[int, int, int]):
        self.path, self.shape = path, shape
        self.row_bytes = int(np.prod(shape))
        self._fh = open(path, "wb")
        self._seen: dict[bytes, int] = {}
        self.labels: list[int] = []
        self.names: list[str] = []
        self.parts: list[Part] = []
        self.duplicates = 0
        self.conflicts: list[str] = []

    def add(self, image: np.ndarray, label: int, name: str, part: Part) -> None:
        data = np.ascontiguousarray(image).tobytes()
        h = hashlib.sha1(data).digest()
        first = self._seen.get(h)
        if first is not None:
            self.duplicates += 1
            if self.labels[first] != label:
                self.conflicts.append(f"{self.shown(len(self.names), name, part)} duplicates {self.shown(first)} "
                                      "with another label")
            return
        self._seen[h] = len(self.names)
        self._fh.write(data)
        self.labels.append(label)
        self.names.append(name)
        self.parts.append(part)

    def shown(self, i: int, name: str | None = None, part: Part | None = None) -> str:
        name, part = (self.names[i], self.parts[i]) if name is None else (name, part)
        return f"{part.shown}/{name}" if part.shown else name

    def close(self) -> None:
        self._fh.close()
        self._seen.clear()

    def blocks(self, index: np.ndarray) -> Iterator[np.ndarray]:
        """The images at `index` (in that order), a block of rows at a time."""
        per_block = max(1, BLOCK_BYTES // self.row_bytes)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for start in range(0, len(index), per_block):
                rows = [os.pread(fd, self.row_bytes, int(i) * self.row_bytes) for i in index[start:start + per_block]]
                yield np.frombuffer(b"".join(rows), np.uint8).reshape(-1, *self.shape)
        finally:
            os.close(fd)


def _cap_per_class(labels: np.ndarray, cap: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = [rng.permutation(np.flatnonzero(labels == c))[:cap] for c in np.unique(labels)]
    return np.sort(np.concatenate(idx))


def cap_images(labels: np.ndarray, is_test: np.ndarray, cfg: Data, seed: int) -> np.ndarray:
    """Indices kept by data.max_images_per_class; a separate test set is capped in the same train:test ratio."""
    if not is_test.any():
        return _cap_per_class(labels, cfg.max_images_per_class, seed)
    pool, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    test_cap = max(1, math.ceil(cfg.max_images_per_class * cfg.test_fraction / (1 - cfg.test_fraction)))
    return np.sort(np.concatenate([pool[_cap_per_class(labels[pool], cfg.max_images_per_class, seed)],
                                   test[_cap_per_class(labels[test], test_cap, seed)]]))


# --- splits ----------------------------------------------------------------------------------------------------
def _stratified(idx: np.ndarray, share: float, labels: np.ndarray, seed: int, what: str, knob: str
                ) -> tuple[np.ndarray, np.ndarray]:
    """(rest, taken): `share` of idx taken stratified, refusing (instead of sklearn's ValueError) when either side
    would have fewer images than there are classes."""
    from sklearn.model_selection import train_test_split

    n_classes = len(np.unique(labels[idx]))
    n_taken = math.ceil(share * len(idx))
    if n_taken < n_classes:
        raise DataError(f"too few images to split: {knob} puts {n_taken} of {len(idx)} images into {what}, fewer "
                        f"than the {n_classes} classes (every class needs an image in train, val and test); add "
                        f"images or raise {knob.split()[0]}")
    if len(idx) - n_taken < n_classes:
        raise DataError(f"too few images to split: {knob} leaves {len(idx) - n_taken} of {len(idx)} images beside "
                        f"{what}, fewer than the {n_classes} classes; add images or lower {knob.split()[0]}")
    rest, taken = train_test_split(idx, test_size=share, stratify=labels[idx], random_state=seed)
    return rest, taken


def make_splits(labels: np.ndarray, is_test: np.ndarray, cfg: Data, seed: int, classes: list[str]
                ) -> dict[str, np.ndarray]:
    """Stratified, seeded train/val/test. With a separate test set (is_test), train and val share the rest."""
    pool = np.flatnonzero(~is_test)
    counts = np.bincount(labels[pool], minlength=len(classes))
    n_min = 3 if not is_test.any() else 2  # each class needs at least one image in every split it is carved into
    small = [f"{classes[c]} ({counts[c]})" for c in range(len(classes)) if counts[c] < n_min]
    if small:
        into = "train/val/test" if n_min == 3 else "train/val"
        raise DataError(f"classes with fewer than {n_min} images cannot be split into {into}: "
                        f"{', '.join(small)}; add images or remove the class")
    if is_test.any():
        test = np.flatnonzero(is_test)
        train, val = _stratified(pool, cfg.val_fraction, labels, seed, "val", f"data.val_fraction {cfg.val_fraction:g}")
    else:
        trval, test = _stratified(pool, cfg.test_fraction, labels, seed, "test",
                                  f"data.test_fraction {cfg.test_fraction:g}")
        val_share = cfg.val_fraction / (1 - cfg.test_fraction)
        train, val = _stratified(trval, val_share, labels, seed, "val", f"data.val_fraction {cfg.val_fraction:g}")
    splits = {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}
    per_split = {s: np.bincount(labels[ix], minlength=len(classes)) for s, ix in splits.items()}
    empty = [f"{s} has no image of class {classes[c]} ({', '.join(f'{t} {per_split[t][c]}' for t in SPLITS)})"
             for s in SPLITS for c in range(len(classes)) if per_split[s][c] == 0]
    if empty:
        raise DataError(f"the data set is too small to split: {'; '.join(empty[:5])}"
                        f"{f' (+{len(empty) - 5} more)' if len(empty) > 5 else ''}; every class needs images in "
                        "train, val and test: add images to these classes or adjust data.val_fraction / "
                        "data.test_fraction")
    return splits


def split_sources(source: Source, cfg: Data, separate_test: bool) -> dict[str, dict[str, str]]:
    pool = next(p for p in source.parts if p.kind == "pool").origin
    if separate_test:
        test = next(p for p in source.parts if p.kind == "test").origin
        return {"train": {"from": pool, "how": "stratified, seeded: the rest after val"},
                "val": {"from": pool, "how": f"stratified, seeded: data.val_fraction {cfg.val_fraction:g} of it"},
                "test": {"from": test, "how": "all of it (a separate test set)"}}
    origin = " + ".join(p.origin for p in source.parts)
    return {"train": {"from": origin, "how": "stratified, seeded: the rest after val and test"},
            "val": {"from": origin, "how": f"stratified, seeded: data.val_fraction {cfg.val_fraction:g} of all"},
            "test": {"from": origin, "how": f"stratified, seeded: data.test_fraction {cfg.test_fraction:g} of all"}}


def channel_stats(histogram: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std on the [0, 1] scale from 256-bin pixel counts: exact (integer sums), so they do
    not depend on how the images were streamed, rounded once to float32. std is floored at 1e-3 (constant images)."""
    values = np.arange(256)
    mean, std = [], []
    for counts in histogram:
        n = int(counts.sum())
        s = sum(int(c) * int(v) for c, v in zip(counts, values))
        q = sum(int(c) * int(v) * int(v) for c, v in zip(counts, values))
        mean.append(float(np.float32(Fraction(s, n * 255))))
        std.append(float(np.float32(max(math.sqrt(Fraction(n * q - s * s, n * n * 255 * 255)), 1e-3))))
    return mean, std


def write_splits(tmp: Path, store: DecodedStore, splits: dict[str, np.ndarray], labels: np.ndarray):
    """data/prepared/<split>/{images,labels}.npy copied block by block from the store; returns the content hash
    (sha256 of split name, images and labels, as np.save would have written them) and the train histogram."""
    content = hashlib.sha256()
    histogram = np.zeros((store.shape[2], 256), np.int64)
    for split in SPLITS:
        ix = splits[split]
        (tmp / split).mkdir()
        content.update(split.encode())
        with NpyWriter(tmp / split / "images.npy", (len(ix), *store.shape)) as out:
            for block in store.blocks(ix):
                out.write(block)
                content.update(block.tobytes())
                if split == "train":
                    for c in range(store.shape[2]):
                        histogram[c] += np.bincount(block[..., c].ravel(), minlength=256)
        np.save(tmp / split / "labels.npy", labels[ix])
        content.update(labels[ix].tobytes())
    return content.hexdigest(), histogram


def fill_store(source: Source, store: DecodedStore) -> DecodedStore:
    """Decode every image of the source once into the store; all problems found are raised together."""
    for part in source.parts:
        for name, label, image in part.items():
            if isinstance(image, ImageError):
                source.problems.setdefault(image.kind, []).append(
                    f"{image.path} ({image.detail})" if image.detail else image.path)
            else:
                store.add(image, label, name, part)
    store.close()
    raise_problems(source.where, source.problems)
    return store


@contextlib.contextmanager
def _no_trace(folder: Path) -> Iterator[None]:
    """On failure, remove `folder` again if this run created it and left it empty (a refused run writes nothing)."""
    existed = folder.exists()
    try:
        yield
    except BaseException:
        if not existed:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


@stage("prepare")
def run(params: Params, paths: Paths) -> dict:
    cfg = params.data
    source = open_source(cfg, paths.root)
    classes = source.classes
    shape = (cfg.image_size, cfg.image_size, cfg.channels)
    with _no_trace(paths.prepared.parent), atomic_dir(paths.prepared) as tmp:
        store = fill_store(source, DecodedStore(tmp / STORE, shape))
        labels = np.asarray(store.labels, np.int64)
        is_test = np.asarray([p.kind == "test" for p in store.parts], bool)
        if len(classes) < 2 or len(np.unique(labels)) < 2:
            raise DataError(f"data source {cfg.source!r} has only one class ({classes[0] if classes else 'none'}); "
                            "a classifier needs at least two class folders")
        if store.conflicts:
            raise DataError(f"{len(store.conflicts)} identical image(s) carry different labels: "
                            f"{'; '.join(store.conflicts[:5])}")
        keep = cap_images(labels, is_test, cfg, params.seed) if cfg.max_images_per_class else np.arange(len(labels))
        splits = {s: keep[ix] for s, ix in make_splits(labels[keep], is_test[keep], cfg, params.seed, classes).items()}
        content_hash, histogram = write_splits(tmp, store, splits, labels)
        mean, std = channel_stats(histogram)
        test_images = np.concatenate(list(store.blocks(splits["test"][:SAMPLES_PER_SPLIT])))
        _write_samples(tmp / "samples", test_images, labels[splits["test"]], classes)
        (tmp / STORE).unlink()
        meta = {
            "source": cfg.source, "root": cfg.root if cfg.source != "digits" else None,
            "test_root": cfg.test_root if cfg.source == "imagefolder" and bool(is_test.any()) else None,
            "classes": classes, "num_classes": len(classes), "image_size": cfg.image_size,
            "channels": cfg.channels, "layout": "NCHW", "dtype": "float32",
            "color_order": "RGB" if cfg.channels == 3 else "L", "resize": "bilinear",
            "scale": 1.0 / 255.0, "mean": mean, "std": std,
            "counts": {s: {c: int((labels[ix] == i).sum()) for i, c in enumerate(classes)} for s, ix in splits.items()},
            "duplicates_removed": store.duplicates, "content_hash": content_hash, "seed": params.seed,
            "split_sources": split_sources(source, cfg, bool(is_test.any())), "ignored": source.ignored,
            "files": {s: [store.names[i] for i in ix] for s, ix in splits.items()},
        }
        write_json(tmp / "meta.json", meta)
    sizes = {s: int(len(splits[s])) for s in SPLITS}
    print(f"prepare: {cfg.source}: {len(keep)} images, {len(classes)} classes, splits {sizes}, "
          f"{store.duplicates} duplicates removed")
    if is_test.any():
        print(f"prepare: test split = {meta['split_sources']['test']['from']}")
    if source.ignored:
        shown = ", ".join(f"{i['path']} ({i['reason']})" for i in source.ignored[:5])
        n_ignored = len(source.ignored)
        print(f"prepare: ignored {n_ignored} hidden or stray entr{'y' if n_ignored == 1 else 'ies'}: {shown}"
              f"{', ...' if n_ignored > 5 else ''} (all listed in meta.json \"ignored\")")
    return {"source": cfg.source, "images": int(len(keep)), "classes": len(classes),
            **{f"{s}_images": n for s, n in sizes.items()}, "duplicates_removed": store.duplicates,
            "ignored": len(source.ignored), "image_shape": list(shape), "content_hash": content_hash}


def _write_samples(folder: Path, images: np.ndarray, labels: np.ndarray, classes: list[str]) -> None:
    from PIL import Image

    folder.mkdir()
    for i in range(min(SAMPLES_PER_SPLIT, len(images))):
        img = images[i][..., 0] if images.shape[-1] == 1 else images[i]
        Image.fromarray(img).save(folder / f"test_{i:03d}_{classes[labels[i]]}.png")


if __name__ == "__main__":  # what dvc.yaml runs: python -m stages.<name>
    sys.exit(stage_main(run))
