"""Model statistics every stage reports: params, non-zero params, MACs, unique weight values, sizes."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeopt.io import gzip_size, tree_size

WEIGHTED = (nn.Conv2d, nn.Linear)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_nonzero(model: nn.Module) -> int:
    return sum(int((p != 0).sum()) for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (conv and linear layers; the rest is noise)."""
    total = 0

    def conv_hook(m: nn.Conv2d, _inp, out):
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total += out.numel() * k

    def linear_hook(m: nn.Linear, _inp, out):
        nonlocal total
        total += out.numel() * m.in_features

    hooks = [m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
             for m in model.modules() if isinstance(m, WEIGHTED)]
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return int(total)


def unique_weights(model: nn.Module) -> dict[str, int]:
    """Distinct values in each conv / linear weight tensor."""
    return {name: int(torch.unique(m.weight.detach()).numel())
            for name, m in model.named_modules() if isinstance(m, WEIGHTED)}


def model_stats(model: nn.Module, input_shape: tuple[int, ...], checkpoint: str | Path | None = None) -> dict[str, Any]:
    uw = unique_weights(model)
    stats: dict[str, Any] = {
        "params": count_params(model),
        "nonzero_params": count_nonzero(model),
        "macs": count_macs(model, input_shape),
        "unique_weights": int(sum(uw.values())),
        "weight_tensors": len(uw),
    }
    if checkpoint is not None and Path(checkpoint).exists():
        stats["file_bytes"] = tree_size(checkpoint)
        stats["file_gzip_bytes"] = gzip_size(checkpoint)
    return stats
