"""Prepared splits as memory-mapped arrays, and the preprocessing every runtime applies. Torch-free.

Layout under data/prepared/: <split>/images.npy (N, H, W, C uint8), <split>/labels.npy (N int64), meta.json.
Arrays are opened with mmap, and iterated in batches, so evaluating 10,000+ images needs bounded memory.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from edgeopt.candidates import input_shape
from edgeopt.errors import DataError

SPLITS = ("train", "val", "test")


def load_meta(prepared: str | Path) -> dict:
    path = Path(prepared) / "meta.json"
    if not path.exists():
        raise DataError(f"{path}: prepared data not found; run `edgeopt prepare` (or `dvc repro prepare`) first")
    return json.loads(path.read_text())


def open_split(prepared: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 NHWC memmap, labels int64) of one split."""
    d = Path(prepared) / split
    try:
        images = np.load(d / "images.npy", mmap_mode="r")
        labels = np.load(d / "labels.npy")
    except FileNotFoundError:
        raise DataError(f"{d}: split {split!r} not found; run `edgeopt prepare` first") from None
    except ValueError as exc:
        raise DataError(f"{d}: split {split!r} is corrupt ({exc}); rerun `edgeopt prepare`") from None
    if len(images) != len(labels):
        raise DataError(f"{d}: {len(images)} images but {len(labels)} labels; rerun `edgeopt prepare`")
    return images, labels


class NpyWriter:
    """Write a .npy array of known shape row block by row block, never holding it in memory.

    The file is byte-identical to `np.save` of the whole array (same version 1.0 header), so stages that open it
    with `mmap_mode="r"` and hashes of it see no difference.
    """

    def __init__(self, path: str | Path, shape: tuple[int, ...], dtype: str | np.dtype = np.uint8):
        self.path, self.shape, self.dtype = Path(path), tuple(shape), np.dtype(dtype)
        self.written = 0
        self._fh: BinaryIO = open(self.path, "wb")
        np.lib.format.write_array_header_1_0(self._fh, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                        "fortran_order": False, "shape": self.shape})

    def write(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.shape[1:] or self.written + len(rows) > self.shape[0]:
            raise ValueError(f"{self.path}: rows {rows.shape} do not fit an array of shape {self.shape} "
                             f"({self.written} rows written)")
        self._fh.write(rows.tobytes())
        self.written += len(rows)

    def close(self) -> None:
        """Close; an incomplete array is an error (a reader would find a truncated file)."""
        self._fh.close()
        if self.written != self.shape[0]:
            raise ValueError(f"{self.path}: {self.written} of {self.shape[0]} rows written")

    def __enter__(self) -> "NpyWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._fh.close()


SCALE = 255.0  # uint8 pixels -> [0, 1]


def normalize(batch, mean, std, channels_last: bool = False):
    """uint8 NHWC -> float32 NCHW, scaled to [0, 1] then standardised per channel: the input contract, its one
    implementation. A numpy array (the runtimes; torch-free) gives a C-contiguous array; a torch tensor (training,
    evaluation) a tensor on its device in the asked memory format, set explicitly with fresh strides: a permuted
    NHWC tensor is channels_last-strided even when `is_contiguous()` says True (1 channel), and convolutions then
    pick the channels_last path. `mean` / `std`: per-channel lists (meta.json) or tensors."""
    tensor = hasattr(batch, "permute")
    if tensor:
        import torch

        fmt = torch.channels_last if channels_last else torch.contiguous_format
        x = batch.permute(0, 3, 1, 2).to(torch.float32, memory_format=fmt, copy=True)
        m, s = (torch.as_tensor(v, dtype=torch.float32, device=x.device).reshape(1, -1, 1, 1) for v in (mean, std))
    else:
        x = np.asarray(batch, dtype=np.float32).transpose(0, 3, 1, 2)
        m, s = (np.asarray(v, np.float32).reshape(1, -1, 1, 1) for v in (mean, std))
    out = (x / SCALE - m) / s
    return out if tensor else np.ascontiguousarray(out)


def iter_batches(images: np.ndarray, labels: np.ndarray, batch_size: int,
                 limit: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    n = len(images) if limit <= 0 else min(limit, len(images))
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        yield np.asarray(images[start:stop]), np.asarray(labels[start:stop])


def subset_indices(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A seeded, class-stratified subset of n indices (calibration, sensitivity scans)."""
    if n <= 0 or n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    # Interleave classes so any prefix is roughly balanced.
    by_class = [order[labels[order] == c] for c in np.unique(labels)]
    inter = [i for group in zip(*[list(g) + [None] * (max(map(len, by_class)) - len(g)) for g in by_class])
             for i in group if i is not None]
    return np.sort(np.asarray(inter[:n]))


@dataclass
class Calibration:
    """What post-training quantization and the sensitivity scan read, preprocessed by the input contract: a seeded,
    class-stratified subset of train (calibration) and of the validation split, with its labels."""
    calib: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    input_shape: tuple[int, int, int]


def calibration_set(prepared: str | Path, size: int, seed: int, val_samples: int = 0) -> Calibration:
    """`size` calibration images of train and `val_samples` validation images (0 = all), both subsets seeded and
    stratified (`subset_indices`); calibration never touches the test split."""
    meta = load_meta(prepared)
    tr_x, tr_y = open_split(prepared, "train")
    va_x, va_y = open_split(prepared, "val")
    cal = subset_indices(tr_y, size, seed)
    val = subset_indices(va_y, val_samples, seed)
    return Calibration(normalize(tr_x[cal], meta["mean"], meta["std"]), normalize(va_x[val], meta["mean"], meta["std"]),
                       np.asarray(va_y[val]), input_shape(meta))
