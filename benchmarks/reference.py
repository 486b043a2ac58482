"""The external peer every headline number is compared with: a bare PyTorch script, as a practitioner writes it.

ResNet-18 with the CIFAR stem (3x3 conv, no max-pool), full width; SGD with Nesterov momentum 0.9, one-cycle
learning rate (max 0.1), weight decay 5e-4, random crop (reflect padding 4) + horizontal flip, batch 128,
15 epochs, FP32 (on the GPU when there is one, as such a script does: convolutions then in TF32, PyTorch's
default), on every non-test image of the benchmark's prepared data (train + val: a script has no
model-selection split). Then Torch-Pruning removes 50 % of the channels of every layer (L1 magnitude, the
classifier kept) and 5 epochs of Hinton KD (T 4, alpha 0.7) from the unpruned model recover accuracy.

Deliberately independent of edgeopt's training code (only the prepared arrays are shared, so both see the same
images and the same test split); the exported ONNX files are measured by the benchmark under the same protocol
as edgeopt's candidates.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

EPOCHS, BATCH, LR, WD = 15, 128, 0.1, 5e-4
PRUNE_RATIO, KD_EPOCHS, KD_LR, KD_T, KD_ALPHA = 0.5, 5, 0.05, 4.0, 0.7


def _resnet18(classes: int):
    import torchvision
    from torch import nn

    m = torchvision.models.resnet18(weights=None, num_classes=classes)
    m.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    m.maxpool = nn.Identity()
    return m


def _augment(x, gen):
    """Random crop with reflect padding 4 and horizontal flip, for a whole batch at once."""
    import torch
    import torch.nn.functional as F

    n, c, h, w = x.shape
    p = F.pad(x, (4, 4, 4, 4), mode="reflect")
    # random draws on the CPU generator whatever the device: a GPU run draws the same crops and flips
    dy, dx = torch.randint(0, 9, (n,), generator=gen), torch.randint(0, 9, (n,), generator=gen)
    ar = torch.arange(h)
    dy, dx, ar = dy.to(x.device), dx.to(x.device), ar.to(x.device)
    out = p.gather(2, (dy[:, None] + ar)[:, None, :, None].expand(n, c, h, w + 8))
    out = out.gather(3, (dx[:, None] + ar)[:, None, None, :].expand(n, c, h, w))
    flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)
    out[flip] = out[flip].flip(3)
    return out


def _fit(model, x, y, epochs: int, lr: float, seed: int, teacher=None):
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=WD)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * math.ceil(len(y) / BATCH))
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(y), generator=gen).split(BATCH):
            idx = idx.to(x.device)
            xb, yb = _augment(x[idx], gen), y[idx]
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            if teacher is not None:
                with torch.no_grad():
                    t = teacher(xb)
                kl = F.kl_div(F.log_softmax(out / KD_T, 1), F.softmax(t / KD_T, 1), reduction="batchmean")
                loss = KD_ALPHA * KD_T * KD_T * kl + (1 - KD_ALPHA) * loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def run(prepared: Path, out_dir: Path, seed: int, threads: int = 0, epochs: int = EPOCHS,
        kd_epochs: int = KD_EPOCHS) -> dict[str, Any]:
    """Train the bare script and its pruned + KD model on `prepared`; export both to ONNX in `out_dir`.
    `epochs` / `kd_epochs` below the script's 15 / 5 only for the benchmark's smoke and quick modes."""
    import torch
    import torch_pruning as tp

    from edgeopt.arrays import load_meta, open_split
    from edgeopt.onnx_export import export_onnx
    from edgeopt.stats import count_macs, count_params

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    meta = load_meta(prepared)
    xs, ys = zip(*(open_split(prepared, s) for s in ("train", "val")))
    images, labels = np.concatenate(xs), np.concatenate(ys)
    mean = torch.tensor(meta["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(meta["std"]).view(1, -1, 1, 1)
    x = ((torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std).to(device)
    y = torch.from_numpy(labels.astype(np.int64)).to(device)
    shape = (int(meta["channels"]), int(meta["image_size"]), int(meta["image_size"]))
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"seed": seed, "train_images": int(len(y)), "device": device.type, "recipe": {
        "epochs": epochs, "batch": BATCH, "max_lr": LR, "weight_decay": WD, "schedule": "one-cycle",
        "augment": "crop (reflect pad 4) + flip", "prune_ratio": PRUNE_RATIO, "kd_epochs": kd_epochs,
        "kd_lr": KD_LR, "kd_temperature": KD_T, "kd_alpha": KD_ALPHA}}

    t0 = time.perf_counter()
    model = _fit(_resnet18(int(meta["num_classes"])).to(device), x, y, epochs, LR, seed).cpu()
    result["bare"] = {"train_s": round(time.perf_counter() - t0, 1), "params": count_params(model),
                      "macs": count_macs(model, shape),
                      "onnx": str(export_onnx(model, shape, out_dir / "bare" / "model.onnx"))}

    t0 = time.perf_counter()
    import copy

    student = copy.deepcopy(model)
    pruner = tp.pruner.MagnitudePruner(student, torch.randn(1, *shape), importance=tp.importance.MagnitudeImportance(p=1),
                                       pruning_ratio=PRUNE_RATIO, ignored_layers=[student.fc])
    pruner.step()
    _fit(student.to(device), x, y, kd_epochs, KD_LR, seed, teacher=model.to(device))
    student, model = student.cpu(), model.cpu()
    result["pruned_kd"] = {"train_s": round(time.perf_counter() - t0, 1), "params": count_params(student),
                           "macs": count_macs(student, shape),
                           "onnx": str(export_onnx(student, shape, out_dir / "pruned_kd" / "model.onnx"))}
    return result


if __name__ == "__main__":  # one seed in its own process: python -m benchmarks.reference PREPARED OUT SEED [E KD]
    import json
    import sys

    extra = [int(a) for a in sys.argv[4:6]]
    print("EDGEOPT-REFERENCE " + json.dumps(run(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), 0, *extra)))
