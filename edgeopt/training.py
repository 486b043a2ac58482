"""The one training loop every stage uses (train, fine-tune, distill, cluster-preserving fine-tuning, QAT).

Early stopping and model selection use the validation split only; the test split is touched once, at the end.
"""
from __future__ import annotations

import math
import os
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from edgeopt.accel import autocast, describe, grad_scaler, model_device, resolve_device, resolve_precision
from edgeopt.arrays import load_meta, normalize, open_split
from edgeopt.batches import augment_batch, batch_loader
from edgeopt.candidates import input_shape
from edgeopt.models import load_checkpoint
from edgeopt.runtime import usable_cores


def set_seed(seed: int, threads: int = 0) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads or usable_cores())


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

    def to_tensor(self, images: np.ndarray | torch.Tensor, device: torch.device | str = "cpu",
                  channels_last: bool = False) -> torch.Tensor:
        """uint8 NHWC images (array or tensor) -> the normalised float NCHW batch on `device`."""
        x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.array(images, copy=True))
        return normalize(x.to(device), self.mean, self.std, channels_last)

    def augment_kind(self, augment: str) -> str:
        if augment != "auto":
            return augment
        return "crop_flip" if self.meta["channels"] == 3 else "crop"


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float, alpha: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """Hinton KD: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(labels, smoothed)."""
    t = temperature
    kl = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.softmax(teacher_logits / t, dim=1),
                  reduction="batchmean")
    ce = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    return alpha * t * t * kl + (1 - alpha) * ce


@torch.no_grad()
def evaluate(model: nn.Module, splits: Splits, split: str = "val", batch_size: int = 256,
             limit: int = 0, channels_last: bool = False) -> dict[str, float]:
    """Accuracy (%) and mean cross-entropy (unsmoothed) of a PyTorch model on one split, on the model's device."""
    images, labels = getattr(splits, split)
    n = len(labels) if limit <= 0 else min(limit, len(labels))
    device = model_device(model)
    model.eval()
    correct, loss = 0, 0.0
    for s in range(0, n, batch_size):
        x = splits.to_tensor(images[s:s + batch_size][: n - s], device, channels_last)
        y = torch.from_numpy(np.array(labels[s:s + batch_size][: n - s])).to(device)
        logits = model(x)
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    return {"accuracy": 100.0 * correct / max(n, 1), "loss": loss / max(n, 1)}


def accuracies(model: nn.Module, splits: Splits) -> dict[str, float]:
    """Validation and test accuracy (%) of a PyTorch model: the before/after figures of the compressing stages."""
    return {f"{s}_accuracy": evaluate(model, splits, s)["accuracy"] for s in ("val", "test")}


@dataclass
class StageStart:
    """What a stage that continues from a checkpoint begins with (`start_from`)."""
    splits: Splits
    source: Path    # the checkpoint file
    model: nn.Module
    config: dict
    info: dict

    @property
    def shape(self) -> tuple[int, int, int]:
        return input_shape(self.config)


def start_from(params, paths, checkpoint: str) -> StageStart:
    """How prune, finetune and cluster open: seed and threads (`seed`, `train.threads`), the prepared splits,
    then checkpoint `checkpoint` (`paths.checkpoint`; a missing or corrupt one is a CheckpointError naming it)."""
    set_seed(params.seed, params.train.threads)
    splits = Splits.load(paths.prepared)
    source = paths.checkpoint(checkpoint)
    model, config, info = load_checkpoint(source)
    return StageStart(splits, source, model, config, info)


ONECYCLE_PCT_START = 0.25  # fraction of the steps spent raising the LR (torch's default 0.3; fast.ai uses 0.25)
ONECYCLE_DIV, ONECYCLE_FINAL_DIV = 25.0, 1e4  # start at lr/25, end at lr/25/1e4 (torch OneCycleLR's defaults)


def _cos_between(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (1 + math.cos(math.pi * min(1.0, pct)))


def lr_schedule(optimizer: torch.optim.Optimizer, recipe, epochs: int, steps_per_epoch: int, lr: float):
    """The recipe's LR schedule as a factor of `lr`, stepped after every optimizer step (None: constant LR).

    onecycle: torch OneCycleLR's policy (cosine from lr/25 up to lr over the first 25 % of the steps, then down to
    lr/2.5e5), momentum left at the recipe's; written out because OneCycleLR divides by zero below 5 steps in all
    (a tiny data set, one epoch). cosine: cosine annealing to 0 after a linear warm-up of `warmup_epochs`.
    step: x gamma every `step_size` epochs.
    """
    total = max(1, epochs * steps_per_epoch)
    if recipe.schedule == "onecycle":
        up = max(1.0, ONECYCLE_PCT_START * total - 1)  # the step with the peak LR, as OneCycleLR counts it

        def factor(step: int) -> float:
            if step <= up:
                return _cos_between(1 / ONECYCLE_DIV, 1.0, step / up)
            return _cos_between(1.0, 1 / ONECYCLE_DIV / ONECYCLE_FINAL_DIV, (step - up) / max(1.0, total - 1 - up))
    elif recipe.schedule == "cosine":
        warm = min(round(recipe.warmup_epochs * steps_per_epoch), total - 1)

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return _cos_between(1.0, 0.0, (step - warm) / (total - warm))
    elif recipe.schedule == "step":
        def factor(step: int) -> float:
            return recipe.gamma ** (step // steps_per_epoch // recipe.step_size)
    else:
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


CONVERGENCE_WINDOW = 0.2  # the last 20 % of the epochs run


def convergence(history: list[dict[str, float]], max_gain: float) -> dict[str, object]:
    """Did validation plateau? `val_gain_last_20pct`: how many points the best validation accuracy rose during the
    last 20 % of the epochs run (>= 0; the best epoch is the model kept). Converged when that is <= max_gain; a
    run too short to have a window before the last 20 % cannot be judged (gain None, not converged)."""
    vals = [row["val_accuracy"] for row in history]
    window = max(1, math.ceil(CONVERGENCE_WINDOW * len(vals)))
    gain = round(max(vals) - max(vals[:-window]), 3) if len(vals) > window else None
    return {"converged": gain is not None and gain <= max_gain, "val_gain_last_20pct": gain,
            "converged_max_gain": max_gain}


@dataclass
class FitResult:
    history: list[dict[str, float]]
    best_epoch: int
    best_val_accuracy: float
    stopped_early: bool
    images_per_s: float
    precision: str = "fp32"
    device: dict[str, str] = field(default_factory=lambda: {"device": "cpu"})
    convergence: dict[str, object] = field(default_factory=dict)

    def summary(self) -> dict[str, object]:
        """What every training stage records in its metrics: device, precision and the convergence check."""
        return {**self.device, "precision": self.precision, **self.convergence}


AUGMENT_SEED_OFFSET = 2 ** 32  # the augmentation generator's seed: independent of the batch order's


@contextmanager
def placed(device: torch.device, channels_last: bool, *models: nn.Module | None):
    """Models on the training device (in place: Parameter objects keep their identity for the optimizer and
    after-step hooks), handed back on the CPU, contiguous, in eval mode, whatever happens."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    live = [m for m in models if m is not None]
    for m in live:
        m.to(device, memory_format=fmt)
    try:
        yield
    finally:
        for m in live:
            m.to("cpu", memory_format=torch.contiguous_format).eval()


def fit(model: nn.Module, splits: Splits, recipe, *, seed: int, augment: str = "auto", patience: int = 0,
        teacher: nn.Module | None = None, temperature: float = 4.0, alpha: float = 0.0,
        live_dir: str | Path | None = None, desc: str = "train",
        after_step: Callable[[nn.Module], None] | None = None,
        parameters: list[nn.Parameter] | None = None, epochs: int | None = None,
        lr: float | None = None, precision: str = "fp32", device: str = "cpu", num_workers: int = 0,
        pin_memory: bool = True, channels_last: bool = False, converged_max_gain: float = 0.5) -> FitResult:
    """SGD (Nesterov) training with the recipe (any params section with lr/momentum/weight_decay/schedule/...).

    With a teacher, the loss is Hinton KD. `after_step` runs after every optimizer step (e.g. to keep weights
    on their cluster centroids). The weights of the best validation epoch are restored at the end, and the model
    (and teacher) are handed back on the CPU in eval mode whatever `device` trained them.
    precision "bf16"/"fp16": the forward passes run under autocast; losses, weights, gradients, optimizer state and
    validation stay fp32 (fp16 adds a gradient scaler). The stages pass `**fit_options(params.train)`.
    """
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    epochs, lr = epochs or recipe.epochs, lr or recipe.lr
    pin_memory = pin_memory and dev.type == "cuda"
    kind = splits.augment_kind(augment)
    aug_gen = torch.Generator().manual_seed(seed + AUGMENT_SEED_OFFSET)
    images, labels = splits.train
    n = len(labels)
    loader = batch_loader(images, labels, recipe.batch_size, torch.Generator().manual_seed(seed),
                          num_workers=num_workers, pin_memory=pin_memory)
    mean, std = splits.mean.to(dev), splits.std.to(dev)
    live = None
    if live_dir is not None:
        from dvclive import Live

        live = Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=False)
    best_acc, best_epoch, best_state, history, bad = -1.0, -1, None, [], 0
    seen, busy = 0, 0.0
    stopped = False
    with placed(dev, channels_last, model, teacher):
        params = parameters if parameters is not None else [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
                                    nesterov=recipe.momentum > 0)
        scheduler = lr_schedule(optimizer, recipe, epochs, len(loader), lr)
        scaler = grad_scaler(dev, precision)
        for epoch in range(epochs):
            model.train()
            total_loss = torch.zeros((), device=dev)
            correct = torch.zeros((), dtype=torch.long, device=dev)
            bar = tqdm(loader, desc=f"{desc} epoch {epoch + 1}/{epochs}", leave=False,
                       disable=os.environ.get("EDGEOPT_NO_PROGRESS") == "1", mininterval=1.0)
            t0 = time.perf_counter()
            for xb, yb in bar:
                x = augment_batch(xb.to(dev, non_blocking=pin_memory), kind, aug_gen)
                x = normalize(x, mean, std, channels_last)
                y = yb.to(dev, non_blocking=pin_memory)
                with autocast(dev, precision):
                    logits = model(x)
                    if teacher is not None:
                        with torch.no_grad():
                            t_logits = teacher(x)
                logits = logits.float()  # losses in fp32: KD's softmax at temperature T needs the precision
                if teacher is not None:
                    loss = kd_loss(logits, t_logits.float(), y, temperature, alpha, recipe.label_smoothing)
                else:
                    loss = F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                if scheduler is not None:
                    scheduler.step()
                if after_step is not None:
                    after_step(model)
                total_loss += loss.detach() * len(y)  # summed on the device: no host sync per step
                correct += (logits.detach().argmax(1) == y).sum()
                seen += len(y)
            epoch_loss, epoch_correct = total_loss.item(), correct.item()  # waits for the device's queued work
            busy += time.perf_counter() - t0
            val = evaluate(model, splits, "val", channels_last=channels_last)
            row = {"epoch": epoch + 1, "train_loss": epoch_loss / n, "train_accuracy": 100.0 * epoch_correct / n,
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
        if best_state is not None:
            model.load_state_dict(best_state)
    if live is not None:
        live.end()
    return FitResult(history, best_epoch, best_acc, stopped, seen / busy if busy > 0 else math.nan, precision,
                     describe(dev), convergence(history, converged_max_gain))


FIT_OPTIONS = ("augment", "device", "num_workers", "pin_memory", "channels_last", "converged_max_gain")


def fit_options(train) -> dict:
    """The train.* knobs every training stage (train, finetune, distill, cluster, QAT) hands to `fit`. Read key by
    key, so a stage's params view checks each one against dvc.yaml."""
    return {k: getattr(train, k) for k in FIT_OPTIONS}
