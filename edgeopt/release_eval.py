"""Evaluate a release on a labelled image folder it never saw (a new camera, last month's data). Torch-free.

DATA_DIR/<class>/<image>: every class folder must be named after a class of the release (manifest `classes`);
a release class without a folder is reported as absent. Images are found recursively, decoded by the caller's
`load(path)` (the release's input contract through edgeopt.images, the decoder prepare and predict use) and
streamed through the release's runtime in batches, so memory does not grow with the number of images: the
folder is walked lazily and only one batch of pixels is held. Files that cannot be decoded are counted and
listed (the first LISTED_SKIPS), not fatal, unless nothing at all could be evaluated.

The result (`FORMAT`, docs/ARTIFACTS.md) holds accuracy with a 95 % interval, a per-class table, the
confusion matrix, the skipped files and the drift check: accuracy here against the accuracy recorded in the
manifest (`metrics.accuracy`, measured by the pipeline on its test split), failed when it is lower by more
than `max_drop` points.
"""
from __future__ import annotations

import math
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from edgeopt.errors import FolderMismatch, ImageError, NothingEvaluated
from edgeopt.images import IMAGE_EXTENSIONS, NOT_IMAGE
from edgeopt.markup import one_line
from edgeopt.memory import status_mb

FORMAT = "edgeopt-release-eval/1"
DEFAULT_MAX_DROP = 2.0  # points: a few images' worth on a typical test split; tighten for large folders
DEFAULT_BATCH = 64
LISTED_SKIPS = 200


@dataclass
class Folder:
    """A labelled folder matched against the release's classes."""
    root: Path
    classes: list[str]
    present: dict[str, Path]            # release class -> its folder
    ignored: list[str] = field(default_factory=list)  # hidden folders and loose files at the top level

    @property
    def absent(self) -> list[str]:
        return [c for c in self.classes if c not in self.present]


def _shown(names: list[str], limit: int = 20) -> str:
    items = [repr(one_line(n)) for n in names[:limit]]
    return ", ".join(items) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def scan_folder(data_dir: str | Path, classes: list[str], release: str = "the release") -> Folder:
    """Match the class folders of data_dir with the release's classes; FolderMismatch names what does not fit."""
    root = Path(data_dir)
    if not root.is_dir():
        raise FolderMismatch(f"{root}: not a folder; pass a folder laid out as DATA_DIR/<class>/<image>")
    present, unknown, ignored = {}, [], []
    known = set(classes)
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_dir():
            ignored.append(entry.name + ("/" if entry.is_dir() else ""))
        elif entry.name in known:
            present[entry.name] = Path(entry.path)
        else:
            unknown.append(entry.name)
    if unknown:
        raise FolderMismatch(
            f"{root}: class folder(s) {_shown(unknown)} not known to {release}, whose classes are "
            f"{_shown(classes)}; rename them to the release's class names or move them out of {root}")
    if not present:
        raise FolderMismatch(f"{root}: no class folders; expected {root}/<class>/<image> with classes "
                             f"{_shown(classes)}" + (f" (ignored: {_shown(ignored, 5)})" if ignored else ""))
    return Folder(root, list(classes), present, ignored)


def walk_files(directory: Path) -> Iterator[Path | ImageError]:
    """Files under directory, lazily (os.scandir: nothing is listed up front), hidden entries skipped, symlinked
    folders not followed (no loops); an unreadable folder is yielded as an ImageError and the walk goes on."""
    stack = [directory]
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                for entry in it:
                    if entry.name.startswith("."):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    else:
                        yield Path(entry.path)
        except OSError as exc:
            yield ImageError(d, "unreadable folder", exc.strerror or type(exc).__name__)


def labelled_files(folder: Folder) -> Iterator[tuple[Path, int] | ImageError]:
    """(file, class index) per image file; an ImageError for a file or folder that is no image."""
    for cls, d in folder.present.items():
        label = folder.classes.index(cls)
        for f in walk_files(d):
            if isinstance(f, ImageError):
                yield f
            else:
                yield (f, label) if f.suffix.lower() in IMAGE_EXTENSIONS else ImageError(f, NOT_IMAGE)


class _Progress:
    """One self-overwriting stderr line every ~2 s, only on a terminal (EDGEOPT_NO_PROGRESS=1 turns it off)."""

    def __init__(self) -> None:
        self.on = sys.stderr.isatty() and os.environ.get("EDGEOPT_NO_PROGRESS") != "1"
        self.last = time.monotonic()

    def update(self, done: int, skipped: int) -> None:
        if self.on and time.monotonic() - self.last > 2.0:
            self.last = time.monotonic()
            print(f"\r  {done:,} images evaluated, {skipped:,} skipped ...", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.on:
            print("\r" + " " * 60 + "\r", end="", file=sys.stderr, flush=True)


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion, in percent (sound for small n and for 0 % / 100 %)."""
    if n == 0:
        return (math.nan, math.nan)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (round(100 * max(0.0, centre - half), 2), round(100 * min(1.0, centre + half), 2))


def evaluate_folder(model, manifest: dict[str, Any], folder: Folder, load: Callable[[Path], np.ndarray],
                    batch_size: int = DEFAULT_BATCH) -> dict[str, Any]:
    """Confusion matrix and skipped files of `model` (a loaded edgeopt.runtime model) over the folder."""
    from edgeopt.runtime import predict_images

    contract = manifest["input"]
    k = len(folder.classes)
    confusion = np.zeros((k, k), dtype=np.int64)
    skipped: Counter = Counter()
    listed: list[dict[str, str]] = []
    batch: np.ndarray | None = None
    labels = np.zeros(batch_size, dtype=np.int64)
    filled = 0
    progress = _Progress()
    rss_start = status_mb("RssAnon")
    rss_peak = rss_start

    def flush(n: int) -> None:
        nonlocal rss_peak
        pred = predict_images(model, batch[:n], contract["mean"], contract["std"]).argmax(1)
        np.add.at(confusion, (labels[:n], pred), 1)
        rss = status_mb("RssAnon")
        rss_peak = max(rss_peak, rss) if rss is not None and rss_peak is not None else rss_peak
        progress.update(int(confusion.sum()), sum(skipped.values()))

    t0 = time.perf_counter()
    for item in labelled_files(folder):
        if isinstance(item, ImageError):
            skipped[item.kind] += 1
            if len(listed) < LISTED_SKIPS:
                listed.append({"file": _rel(item.path, folder.root), "problem": item.kind, "detail": item.detail})
            continue
        path, label = item
        try:
            arr = load(path)
        except ImageError as exc:
            skipped[exc.kind] += 1
            if len(listed) < LISTED_SKIPS:
                listed.append({"file": _rel(path, folder.root), "problem": exc.kind, "detail": exc.detail})
            continue
        if batch is None:
            batch = np.empty((batch_size, *arr.shape), dtype=np.uint8)
        batch[filled], labels[filled] = arr, label
        filled += 1
        if filled == batch_size:
            flush(filled)
            filled = 0
    if filled:
        flush(filled)
    progress.close()
    wall = time.perf_counter() - t0
    n = int(confusion.sum())
    return {"confusion": confusion, "images": n, "wall_s": round(wall, 3),
            "images_per_s": round(n / wall, 1) if wall > 0 else None,
            "skipped": {"count": sum(skipped.values()), "by_problem": dict(skipped.most_common()),
                        "files": listed, "listed": len(listed)},
            "memory": {"anon_rss_start_mb": _round(rss_start, 1), "anon_rss_peak_mb": _round(rss_peak, 1)}}


def _round(v: float | None, digits: int) -> float | None:
    return None if v is None else round(v, digits)


def _rel(path: str | Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def summarize(manifest: dict[str, Any], folder: Folder, measured: dict[str, Any],
              max_drop: float | None = DEFAULT_MAX_DROP) -> dict[str, Any]:
    """The report: accuracy, per-class table, confusion matrix, skipped files and the drift check (`max_drop`
    None: not asked for). Status `not_compared` when a check was asked for but the manifest records no accuracy:
    a drift check that could not run must not read as passed; `not_checked` when none was asked for."""
    confusion: np.ndarray = measured["confusion"]
    n, correct = int(confusion.sum()), int(np.trace(confusion))
    if n == 0:
        problems = measured["skipped"]["by_problem"]
        raise NothingEvaluated(
            f"{folder.root}: no image could be evaluated ({measured['skipped']['count']} file(s) skipped: "
            + (", ".join(f"{c} {k}" for k, c in problems.items()) or "the class folders are empty")
            + "); see the files listed with --json")
    per_class = []
    for i, cls in enumerate(folder.classes):
        total, hits = int(confusion[i].sum()), int(confusion[i, i])
        status = "ok" if total else ("empty" if cls in folder.present else "absent")
        per_class.append({"class": cls, "images": total, "correct": hits,
                          "accuracy": round(100.0 * hits / total, 2) if total else None, "status": status})
    accuracy = 100.0 * correct / n
    present = [r["accuracy"] for r in per_class if r["accuracy"] is not None]
    metrics = manifest.get("metrics") or {}
    recorded = metrics.get("accuracy")
    drift: dict[str, Any] = {"max_drop_pt": max_drop, "measured_accuracy": round(accuracy, 2),
                             "recorded_accuracy": recorded, "recorded_split": metrics.get("split"),
                             "recorded_images": metrics.get("images")}
    if max_drop is None:
        drift.update(difference_pt=None, passed=None, compared="not checked: a report without a drift check")
    elif isinstance(recorded, (int, float)) and not isinstance(recorded, bool) and math.isfinite(recorded):
        diff = accuracy - recorded
        drift.update(difference_pt=round(diff, 2), passed=-diff <= max_drop,
                     compared=f"accuracy on {n} images of {folder.root} vs manifest metrics.accuracy "
                              f"({metrics.get('split')} split, {metrics.get('images')} images)")
    else:
        drift.update(difference_pt=None, passed=None, compared="not compared: the manifest records no accuracy")
    return {
        "format": FORMAT,
        "release": f"{manifest.get('name')}@{manifest.get('version')}",
        "candidate": manifest.get("candidate"), "runtime": manifest.get("runtime"),
        "precision": manifest.get("precision"), "data_dir": str(folder.root),
        "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "images": n, "correct": correct, "accuracy": round(accuracy, 2),
        "accuracy_ci95": list(wilson_interval(correct, n)),
        "mean_class_accuracy": round(sum(present) / len(present), 2) if present else None,
        "classes": folder.classes, "absent_classes": [r["class"] for r in per_class if r["status"] != "ok"],
        "ignored": folder.ignored, "per_class": per_class,
        "confusion": {"rows": "true class", "columns": "predicted class", "labels": folder.classes,
                      "matrix": confusion.tolist()},
        "skipped": measured["skipped"], "drift": drift,
        # `ok` only for a check that ran and passed: a report read later must not pass for a verdict
        "status": ("drift" if drift["passed"] is False else "ok" if drift["passed"] else
                   "not_checked" if max_drop is None else "not_compared"),
        "wall_s": measured["wall_s"], "images_per_s": measured["images_per_s"], "memory": measured["memory"],
    }


def evaluate_release(release_dir: str | Path, data_dir: str | Path, load: Callable[[Path], np.ndarray], *,
                     max_drop: float | None = DEFAULT_MAX_DROP, batch_size: int = DEFAULT_BATCH,
                     threads: int = 0) -> dict[str, Any]:
    """The report for an already verified release directory (see edgeopt.releases.resolve_release)."""
    from edgeopt.predict import open_release
    from edgeopt.runtime import load_model

    manifest, _, classes, model_path, runtime = open_release(release_dir)  # contract and model file checked
    name = f"{manifest.get('name')}@{manifest.get('version')}"
    folder = scan_folder(data_dir, classes, name)
    model = load_model(model_path, runtime=runtime, threads=threads)
    return summarize(manifest, folder, evaluate_folder(model, manifest, folder, load, batch_size), max_drop)


# --- presentation -------------------------------------------------------------------------------------------

def _label(name: str, width: int = 24) -> str:
    s = one_line(name)
    return s if len(s) <= width else s[:width - 1] + "~"


def format_text(report: dict[str, Any], max_matrix: int = 20) -> str:
    """What `edgeopt evaluate-release` prints: summary, skipped files, per-class table, matrix, drift verdict."""
    from edgeopt.markup import pct, pt

    k = len(report["classes"])
    skipped = report["skipped"]
    lo, hi = report["accuracy_ci95"]
    out = [f"Release {report['release']} ({report['candidate']}, {report['runtime']}) on {report['data_dir']}: "
           f"{report['images']:,} images in {k - len(report['absent_classes'])} of {k} class folders "
           f"({report['wall_s']:.1f} s)"]
    if skipped["count"]:
        out.append(f"Skipped {skipped['count']:,} file(s), not counted: "
                   + ", ".join(f"{c} {p}" for p, c in skipped["by_problem"].items()))
        out += [f"  {one_line(s['file'])}: {s['problem']}" + (f" ({s['detail']})" if s["detail"] else "")
                for s in skipped["files"][:10]]
        if skipped["count"] > 10:
            out.append(f"  ... {skipped['count'] - 10:,} more (all of the first {LISTED_SKIPS} in the JSON report)")
    if report["ignored"]:
        out.append(f"Ignored at the top level (hidden or not a folder): {_shown(report['ignored'], 10)}")
    out.append(f"Accuracy {pct(report['accuracy'])} ({report['correct']:,} / {report['images']:,}; 95 % interval "
               f"{lo:.1f}-{hi:.1f} %), mean per-class accuracy {pct(report['mean_class_accuracy'])}")
    out += ["", f"{'class':24s} {'images':>7s} {'correct':>7s} {'accuracy':>9s}"]
    for r in report["per_class"]:
        acc = pct(r["accuracy"]) if r["status"] == "ok" else r["status"]
        out.append(f"{_label(r['class'])!s:24s} {r['images']:7,d} {r['correct']:7,d} {acc:>9s}")
    m = report["confusion"]["matrix"]
    if k <= max_matrix:
        names = [_label(c, 8) for c in report["classes"]]
        width = max(4, max(len(f"{v:,}") for row in m for v in row) + 1, max(map(len, names)) + 1)
        out += ["", "Confusion matrix (rows: true class, columns: predicted class):",
                " " * 9 + "".join(f"{n:>{width}s}" for n in names)]
        out += [f"{n:>8s} " + "".join(f"{v:>{width},d}" for v in row) for n, row in zip(names, m)]
    else:
        out += ["", f"Confusion matrix: {k} x {k}, in the JSON report and the PNG"]
    d = report["drift"]
    out.append("")
    if d["passed"] is None:
        out.append(f"Drift check: {d['compared']}" + (
            " -> NOT COMPARED (exit 4); --report-only measures without a drift check"
            if report["status"] == "not_compared" else ""))
    else:
        verdict = "ok" if d["passed"] else "FAILED (exit 3)"
        out.append(f"Drift check: {pct(d['measured_accuracy'])} here vs {pct(d['recorded_accuracy'])} recorded in the "
                   f"manifest ({d['recorded_split']} split, {d['recorded_images']} images): "
                   f"{pt(d['difference_pt'])}; allowed drop {pt(d['max_drop_pt'], sign=False)} -> {verdict}")
        if report["absent_classes"]:
            out.append(f"  note: {len(report['absent_classes'])} class(es) absent or empty here; the recorded figure "
                       "covers all classes")
    return "\n".join(out)


def confusion_png(report: dict[str, Any]) -> bytes:
    """The confusion matrix as a PNG: cells coloured by the share of the true class, counts written in."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(report["confusion"]["matrix"], dtype=float)
    k = len(m)
    share = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    # class names are user text: no mathtext ($...$), one line
    names = [_label(c, 20).replace("$", r"\$") for c in report["classes"]]
    names = [n + (" (absent)" if c in report["absent_classes"] else "") for n, c in zip(names, report["classes"])]
    side = min(16.0, max(5.0, 0.45 * k + 2.5))
    fig, ax = plt.subplots(figsize=(side + 1.2, side), dpi=100)
    try:
        im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
        if k <= 40:
            ax.set_xticks(range(k), names, rotation=90 if k > 10 else 0, fontsize=8)
            ax.set_yticks(range(k), names, fontsize=8)
        if k <= 25:
            for i in range(k):
                for j in range(k):
                    if m[i, j]:
                        ax.text(j, i, f"{int(m[i, j]):,}", ha="center", va="center", fontsize=8,
                                color="white" if share[i, j] > 0.5 else "black")
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        where = _label(Path(report["data_dir"]).name, 40).replace("$", r"\$")
        ax.set_title(f"{report['release']} on {where}: {report['accuracy']:.2f} % of {report['images']:,} images",
                     fontsize=10)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)
