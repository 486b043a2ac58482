"""The one training loop every stage uses (train, fine-tune, distill, cluster-preserving fine-tuning, QAT).

Early stopping and model selection use the validation split only; the test split is touched once, at the end.
"""
from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from edgeopt.arrays import load_meta, open_split


def set_seed(seed: int, threads: int = 0) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads or os.cpu_count() or 1)


@dataclass
class Splits:
    """All three splits as uint8 NHWC arrays plus the normalisation of the input contract."""
    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    meta: dict = field(default_factory=dict)

    @classmethod
    def load(cls, prepared: str | Path) -> "Splits":
        meta = load_meta(prepared)
        return cls(*(open_split(prepared, s) for s in ("train", "val", "test")), meta=meta)

    @property
    def mean(self) -> torch.Tensor:
        return torch.tensor(self.meta["mean"], dtype=torch.float32).view(1, -1, 1, 1)

    @property
    def std(self) -> torch.Tensor:
        return torch.tensor(self.meta["std"], dtype=torch.float32).view(1, -1, 1, 1)

    def to_tensor(self, images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.array(images, copy=True)).permute(0, 3, 1, 2).float().div_(255.0)
        return (x - self.mean) / self.std

    def augment_kind(self, augment: str) -> str:
        if augment != "auto":
            return augment
        return "crop_flip" if self.meta["channels"] == 3 else "crop"


def augment_batch(x: torch.Tensor, kind: str, gen: torch.Generator) -> torch.Tensor:
    """Random crop with padding (1/8 of the side) and, for natural images, horizontal flip."""
    if kind == "none":
        return x
    n, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    if kind == "crop_flip":
        flip = torch.rand(n, generator=gen) < 0.5
        out[flip] = out[flip].flip(3)
    return out


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float, alpha: float) -> torch.Tensor:
    """Hinton KD: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(labels)."""
    t = temperature
    kl = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.softmax(teacher_logits / t, dim=1),
                  reduction="batchmean")
    return alpha * t * t * kl + (1 - alpha) * F.cross_entropy(student_logits, labels)


@torch.no_grad()
def evaluate(model: nn.Module, splits: Splits, split: str = "val", batch_size: int = 256,
             limit: int = 0) -> dict[str, float]:
    """Accuracy (%) and mean cross-entropy of a PyTorch model on one split."""
    images, labels = getattr(splits, split)
    n = len(labels) if limit <= 0 else min(limit, len(labels))
    model.eval()
    correct, loss = 0, 0.0
    for s in range(0, n, batch_size):
        x = splits.to_tensor(images[s:s + batch_size][: n - s])
        y = torch.from_numpy(np.array(labels[s:s + batch_size][: n - s]))
        logits = model(x)
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    return {"accuracy": 100.0 * correct / max(n, 1), "loss": loss / max(n, 1)}


def _schedule(optimizer: torch.optim.Optimizer, kind: str, epochs: int, step_size: int, gamma: float):
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
    if kind == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
    return None


@dataclass
class FitResult:
    history: list[dict[str, float]]
    best_epoch: int
    best_val_accuracy: float
    stopped_early: bool
    images_per_s: float
    precision: str = "fp32"


def native_bf16() -> bool:
    """Whether this CPU runs bf16 matmuls/convs natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and
    slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str) -> str:
    if precision == "bf16" and not native_bf16():
        import warnings

        warnings.warn("precision bf16 asked for, but this CPU has no native bf16 (AVX512-BF16 / AMX): training in "
                      "fp32 instead, which is faster here; set precision: fp32 to silence this", stacklevel=3)
        return "fp32"
    return precision


def fit(model: nn.Module, splits: Splits, recipe, *, seed: int, augment: str = "auto", patience: int = 0,
        teacher: nn.Module | None = None, temperature: float = 4.0, alpha: float = 0.0,
        live_dir: str | Path | None = None, desc: str = "train",
        after_step: Callable[[nn.Module], None] | None = None,
        parameters: list[nn.Parameter] | None = None, epochs: int | None = None,
        lr: float | None = None, precision: str = "fp32") -> FitResult:
    """SGD training with the recipe (any params section with lr/momentum/weight_decay/schedule/...).

    With a teacher, the loss is Hinton KD. `after_step` runs after every optimizer step (e.g. to keep weights
    on their cluster centroids). The weights of the best validation epoch are restored at the end.
    precision "bf16": the forward passes run under CPU autocast; losses, weights, gradients, optimizer state and
    validation stay fp32 (the usual mixed-precision recipe).
    """
    import time

    precision = resolve_precision(precision)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    epochs = epochs or recipe.epochs
    lr = lr or recipe.lr
    gen = torch.Generator().manual_seed(seed)
    kind = splits.augment_kind(augment)
    params = parameters if parameters is not None else [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
                                nesterov=recipe.momentum > 0)
    scheduler = _schedule(optimizer, recipe.schedule, epochs, recipe.step_size, recipe.gamma)
    images, labels = splits.train
    n = len(labels)
    live = None
    if live_dir is not None:
        from dvclive import Live

        live = Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=False)
    if teacher is not None:
        teacher.eval()
    best_acc, best_epoch, best_state, history, bad = -1.0, -1, None, [], 0
    seen, busy = 0, 0.0
    stopped = False
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n, generator=gen).numpy()
        total_loss, correct = 0.0, 0
        bar = tqdm(range(0, n, recipe.batch_size), desc=f"{desc} epoch {epoch + 1}/{epochs}", leave=False,
                   disable=os.environ.get("EDGEOPT_NO_PROGRESS") == "1", mininterval=1.0)
        t0 = time.perf_counter()
        for s in bar:
            idx = np.sort(order[s:s + recipe.batch_size])
            if len(idx) < 2:  # BatchNorm needs two samples in training mode
                continue
            x = augment_batch(splits.to_tensor(images[idx]), kind, gen)
            y = torch.from_numpy(np.array(labels[idx]))
            with autocast:
                logits = model(x)
                if teacher is not None:
                    with torch.no_grad():
                        t_logits = teacher(x)
            logits = logits.float()  # losses in fp32: KD's softmax at temperature T needs the precision
            if teacher is not None:
                loss = kd_loss(logits, t_logits.float(), y, temperature, alpha)
            else:
                loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step(model)
            total_loss += loss.item() * len(idx)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(idx)
        busy += time.perf_counter() - t0
        if scheduler is not None:
            scheduler.step()
        val = evaluate(model, splits, "val")
        row = {"epoch": epoch + 1, "train_loss": total_loss / n, "train_accuracy": 100.0 * correct / n,
               "val_loss": val["loss"], "val_accuracy": val["accuracy"], "lr": optimizer.param_groups[0]["lr"]}
        history.append(row)
        tqdm.write(f"{desc} epoch {epoch + 1}/{epochs}: train loss {row['train_loss']:.4f} "
                   f"acc {row['train_accuracy']:.2f}% | val loss {val['loss']:.4f} acc {val['accuracy']:.2f}%")
        if live is not None:
            for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
                split, metric = k.split("_", 1)
                live.log_metric(f"{split}/{metric}", row[k])
            live.next_step()
        if val["accuracy"] > best_acc:
            best_acc, best_epoch, bad = val["accuracy"], epoch + 1, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if patience and bad >= patience:
                stopped = True
                tqdm.write(f"{desc}: early stop after epoch {epoch + 1} (no val improvement for {patience})")
                break
    if live is not None:
        live.end()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return FitResult(history, best_epoch, best_acc, stopped, seen / busy if busy > 0 else math.nan, precision)
