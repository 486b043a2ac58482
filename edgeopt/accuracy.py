"""Accuracy of a model file in its runtime on prepared (uint8 NHWC) images, streamed in batches. Torch-free.

Used by `evaluate` (every candidate) and by `promote` (the channel's current release, on the same test split,
for the no-regression policy), so both numbers come from one code path.
"""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

from edgeopt.arrays import iter_batches, normalize
from edgeopt.memory import anon_rss_mb


def correct_in_runtime(model, images: np.ndarray, labels: np.ndarray, mean: list[float], std: list[float],
                       batch_size: int) -> tuple[np.ndarray, float]:
    """(per-image top-1 correctness, bool, peak anonymous memory MB while streaming) of a runtime model on uint8
    NHWC images."""
    hits, peak = [], anon_rss_mb()
    for batch, y in iter_batches(images, labels, batch_size):
        logits = model.predict(normalize(batch, mean, std))
        hits.append(np.asarray(logits.argmax(1) == y, dtype=bool))
        peak = max(peak, anon_rss_mb())
    return (np.concatenate(hits) if hits else np.zeros(0, dtype=bool)), peak


def accuracy_in_runtime(model, images: np.ndarray, labels: np.ndarray, mean: list[float], std: list[float],
                        batch_size: int) -> tuple[float, float]:
    """(accuracy %, peak anonymous memory MB while streaming) of a runtime model on uint8 NHWC images."""
    hits, peak = correct_in_runtime(model, images, labels, mean, std, batch_size)
    return 100.0 * int(hits.sum()) / max(len(labels), 1), peak


def paired_drop(lost: int, gained: int, images: int) -> dict[str, float]:
    """The drop (points) of a model against a reference scored on the same `images`, and its standard error from
    the paired per-image differences: `lost` images only the reference got right, `gained` only the model. Paired,
    because both err mostly on the same images: the spread comes from the images that changed answer, not from the
    two accuracies. The SE is Agresti-Min's (half an image added to each of the four cells), so that a handful of
    changed answers (or none) does not claim certainty."""
    if images <= 0 or lost < 0 or gained < 0 or lost + gained > images:
        raise ValueError(f"lost {lost} and gained {gained} images do not fit {images} images")
    n = images + 2
    p_lost, p_gained = (lost + 0.5) / n, (gained + 0.5) / n
    var = (p_lost + p_gained - (p_lost - p_gained) ** 2) / n
    return {"drop": round(100 * (lost - gained) / images, 4), "drop_se": round(100 * math.sqrt(var), 4)}


def upper_bound(drop: float, se: float, confidence: float) -> float:
    """One-sided upper confidence bound of a drop (normal approximation): the drop is below it with `confidence`."""
    return drop + NormalDist().inv_cdf(confidence) * se
