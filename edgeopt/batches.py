"""The training input pipeline: shuffled batches read from the prepared (memory-mapped) arrays by a
torch DataLoader, augmented and normalised as whole batch tensors on the training device.

Workers only slice uint8 arrays (no randomness), so results do not depend on `train.num_workers`: the batch
order and the augmentation draws come from two seeded generators in the main process.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

MIN_BATCH = 2  # BatchNorm needs two samples per batch in training mode


class ArrayBatches(Dataset):
    """Items are whole batches: `ds[indices]` -> (uint8 NHWC images, int64 labels) of those rows.

    One fancy-index read per batch (sorted indices: sequential reads of the memmap), no per-image Python work.
    A memory-mapped split is reopened by file name in a spawned worker instead of being pickled whole.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, np.asarray(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(np.ascontiguousarray(self.images[indices])), torch.from_numpy(self.labels[indices])

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if isinstance(self.images, np.memmap) and self.images.filename:
            state["images"] = str(self.images.filename)
        return state

    def __setstate__(self, state: dict) -> None:
        if isinstance(state["images"], str):
            state["images"] = np.load(state["images"], mmap_mode="r")
        self.__dict__.update(state)


class ShuffledBatches(Sampler):
    """A fresh seeded permutation every epoch, cut into batches of sorted indices; a last batch smaller than
    MIN_BATCH is dropped."""

    def __init__(self, n: int, batch_size: int, gen: torch.Generator):
        self.n, self.batch_size, self.gen = n, batch_size, gen

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + (rest >= MIN_BATCH)

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.gen).numpy()
        for start in range(0, self.n, self.batch_size):
            idx = np.sort(order[start:start + self.batch_size])
            if len(idx) >= MIN_BATCH:
                yield idx


def batch_loader(images: np.ndarray, labels: np.ndarray, batch_size: int, gen: torch.Generator, *,
                 num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """Batches of (uint8 NHWC, int64) in a seeded random order; iterate it once per epoch."""
    return DataLoader(ArrayBatches(images, labels), batch_size=None,
                      sampler=ShuffledBatches(len(labels), batch_size, gen), num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=num_workers > 0)


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Mirror out-of-range indices back inside [0, size) without repeating the edge (numpy 'reflect')."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def augment_batch(x: torch.Tensor, kind: str, gen: torch.Generator) -> torch.Tensor:
    """Random crop with reflect padding (1/8 of the side: 4 px at 32 px) and, for "crop_flip", a horizontal flip,
    of a whole contiguous (N, H, W, C) batch on its device: one `index_select` of pixel rows, no per-image loop, no
    padded copy. (Multi-tensor advanced indexing, x[b, rows, cols], was 5-50x slower on CPU here.)

    Reflect, not zero, padding: a constant border (black, or the mean colour after normalisation) is an edge that
    never occurs in test images; mirrored pixels keep the border statistics natural, and on a uniform background
    (digits) they are that background. The draws use `gen` (CPU), so CPU and CUDA see the same augmentation.
    """
    if kind == "none":
        return x
    n, h, w = x.shape[:3]
    pad_h, pad_w = max(1, h // 8), max(1, w // 8)
    rows = _reflect(torch.arange(h) + torch.randint(-pad_h, pad_h + 1, (n, 1), generator=gen), h)
    cols = _reflect(torch.arange(w) + torch.randint(-pad_w, pad_w + 1, (n, 1), generator=gen), w)
    if kind == "crop_flip":
        flip = torch.rand(n, 1, generator=gen) < 0.5
        cols = torch.where(flip, cols.flip(1), cols)
    rows, cols = rows.to(x.device), cols.to(x.device)  # small: the N*H*W pixel index is built on the device
    first = torch.arange(0, n * h * w, h * w, device=x.device).view(n, 1, 1)
    pixel = (first + rows.view(n, h, 1) * w + cols.view(n, 1, w)).view(-1)
    return x.reshape(n * h * w, -1).index_select(0, pixel).view(x.shape)
