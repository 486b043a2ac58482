"""Accuracy of a model file in its runtime on prepared (uint8 NHWC) images, streamed in batches. Torch-free.

Used by `evaluate` (every candidate) and by `promote` (the channel's current release, on the same test split,
for the no-regression policy), so both numbers come from one code path.
"""
from __future__ import annotations

import numpy as np

from edgeopt.arrays import iter_batches, normalize
from edgeopt.memory import anon_rss_mb


def accuracy_in_runtime(model, images: np.ndarray, labels: np.ndarray, mean: list[float], std: list[float],
                        batch_size: int) -> tuple[float, float]:
    """(accuracy %, peak anonymous memory MB while streaming) of a runtime model on uint8 NHWC images."""
    correct, peak = 0, anon_rss_mb()
    for batch, y in iter_batches(images, labels, batch_size):
        logits = model.predict(normalize(batch, mean, std))
        correct += int((logits.argmax(1) == y).sum())
        peak = max(peak, anon_rss_mb())
    return 100.0 * correct / max(len(labels), 1), peak
