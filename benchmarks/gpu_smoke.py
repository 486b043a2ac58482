"""GPU smoke test: the training loop on CUDA against the CPU, from the same seed, on the embedded digits set.

    python -m benchmarks.gpu_smoke [--epochs 3] [--out gpu_smoke.json]     # needs a CUDA GPU (exit 0 / 1)
    python -m benchmarks.gpu_smoke --devices cpu cpu                        # the script's own plumbing, no GPU

Checks, each with its tolerance in the JSON:
1. the same initial weights and the same batch give the same logits on both devices (first forward; TF32
   convolutions on the GPU round to ~1e-3, so the bound is 2e-2 absolute);
2. `fit` with the same seed sees the same batches and augmentation on both devices (the draws come from CPU
   generators), so the per-epoch training loss agrees within 10 % + 0.05 and validation accuracy within 3 pt;
3. bf16 autocast on the GPU (fp16 + gradient scaler on GPUs without bf16) learns as well: val within 3 pt;
4. what `fit` hands back is on the CPU, and its checkpoint loads with plain `torch.load` on a machine without
   CUDA: every saved tensor is a CPU tensor, contiguous, with the same keys, shapes and dtypes as the
   CPU-trained model's (export and bench then run the same way);
5. the after-step hooks of cluster-preserving fine-tuning and sparse fine-tuning run on the device (their
   masks / assignments follow the weights) and keep their invariants.
Exit 0 when every check passes, 1 otherwise, 2 when a CUDA device is asked for and none is visible.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

LOGIT_ATOL = 2e-2
LOSS_RTOL, LOSS_ATOL = 0.10, 0.05
VAL_POINTS = 3.0


def digits_splits(size: int = 16, max_train: int = 0):
    """The scikit-learn digits (offline), upscaled by pixel repetition, as in-memory Splits (70/10/20); the train
    split optionally capped at max_train images."""
    from sklearn.datasets import load_digits

    from edgeopt.training import Splits

    d = load_digits()
    scale = size // 8
    imgs = np.kron((d.images / 16.0 * 255).round(), np.ones((scale, scale))).astype(np.uint8)[..., None]
    order = np.random.default_rng(0).permutation(len(imgs))
    cut = [int(len(order) * f) for f in (0.7, 0.8)]
    parts = np.split(order, cut)
    parts[0] = parts[0][:max_train or None]
    x = imgs[parts[0]].astype(np.float32) / 255.0
    meta = {"channels": 1, "mean": [float(x.mean())], "std": [float(x.std()) + 1e-6], "num_classes": 10}
    return Splits(*((imgs[p], d.target[p].astype(np.int64)) for p in parts), meta=meta)


def _recipe(epochs: int):
    from edgeopt.params import Train

    return Train(epochs=epochs, batch_size=64, lr=0.05, schedule="onecycle", label_smoothing=0.1)


def _options(device: str) -> dict[str, Any]:
    """The stages' train.* options (defaults: channels_last, ...) on the given device."""
    from edgeopt.training import fit_options

    return {**fit_options(_recipe(1)), "device": device}


def _model():
    from edgeopt.models import build_model, model_config

    return build_model(model_config("small_cnn", 10, 1, 1.0, True, 16))


def _train(splits, device: str, epochs: int, precision: str = "fp32") -> tuple[Any, Any, float]:
    from edgeopt.training import fit, set_seed

    set_seed(0, 0)
    model = _model()
    t0 = time.perf_counter()
    result = fit(model, splits, _recipe(epochs), seed=0, **_options(device), precision=precision, desc=f"{device}")
    return model, result, time.perf_counter() - t0


def _check(name: str, ok: bool, **details: Any) -> dict[str, Any]:
    print(f"[gpu_smoke] {'PASS' if ok else 'FAIL'} {name}: {json.dumps(details, default=str)}", flush=True)
    return {"name": name, "ok": bool(ok), **details}


def first_forward(splits, dev_a: str, dev_b: str) -> dict[str, Any]:
    import torch

    torch.manual_seed(0)
    model = _model().eval()
    x = splits.to_tensor(splits.train[0][:64])
    with torch.no_grad():
        a = model.to(dev_a)(x.to(dev_a)).cpu()
        b = model.to(dev_b)(x.to(dev_b)).cpu()
    diff = float((a - b).abs().max())
    return _check("first_forward_logits", diff <= LOGIT_ATOL, max_abs_diff=diff, atol=LOGIT_ATOL)


def curves_agree(ref, other, name: str) -> dict[str, Any]:
    losses = [(r["train_loss"], o["train_loss"]) for r, o in zip(ref.history, other.history)]
    loss_ok = all(abs(a - b) <= LOSS_ATOL + LOSS_RTOL * abs(a) for a, b in losses)
    val_gap = abs(ref.history[-1]["val_accuracy"] - other.history[-1]["val_accuracy"])
    return _check(name, loss_ok and val_gap <= VAL_POINTS and len(ref.history) == len(other.history),
                  train_loss=[[round(a, 4), round(b, 4)] for a, b in losses], final_val_gap_points=round(val_gap, 3),
                  tolerances={"loss_rtol": LOSS_RTOL, "loss_atol": LOSS_ATOL, "val_points": VAL_POINTS},
                  devices=[ref.device, other.device], precision=[ref.precision, other.precision])


def checkpoint_portable(model_a, model_b) -> dict[str, Any]:
    """Both models saved as checkpoints: CPU tensors, loadable by plain torch.load, same layout."""
    import torch

    from edgeopt.models import load_checkpoint, model_config, save_checkpoint

    cfg = model_config("small_cnn", 10, 1, 1.0, True, 16)
    states, problems = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, m in enumerate((model_a, model_b)):
            path = save_checkpoint(Path(tmp) / f"m{i}.pt", m, cfg)
            raw = torch.load(io.BytesIO(path.read_bytes()), weights_only=True)  # no map_location: as on a CPU host
            state = raw["state_dict"]
            problems += [f"{k}: {v.device}" for k, v in state.items() if v.device.type != "cpu"]
            problems += [f"{k}: not contiguous" for k, v in state.items() if not v.is_contiguous()]
            load_checkpoint(path)
            states.append({k: (tuple(v.shape), str(v.dtype)) for k, v in state.items()})
    in_memory = [f"{n}: {p.device}" for m in (model_a, model_b) for n, p in m.state_dict().items()
                 if p.device.type != "cpu"]
    same = states[0] == states[1]
    return _check("checkpoint_cpu_and_same_layout", not problems and not in_memory and same,
                  problems=problems[:5], handed_back_off_cpu=in_memory[:5], same_layout=same)


def hooks_on_device(splits, device: str) -> dict[str, Any]:
    """Cluster-preserving and sparse fine-tuning hooks (stages.cluster / stages.finetune) on the device."""
    import torch

    from edgeopt.stats import WEIGHTED, unique_weights
    from edgeopt.training import fit
    from stages.cluster import cluster_model, project
    from stages.finetune import keep_zeros

    torch.manual_seed(0)
    model = _model()
    clustered, _ = cluster_model(model, 8, 500, seed=0)
    fit(model, splits, _recipe(1), seed=0, **_options(device), desc="cluster-hook",
        after_step=lambda _m: [project(layer) for layer in clustered.values()])
    worst = max(unique_weights(model)[n] for n in clustered)
    sparse = _model()
    with torch.no_grad():
        for m in sparse.modules():
            if isinstance(m, WEIGHTED):
                m.weight.mul_((torch.rand_like(m.weight) > 0.5).float())
    zeros = [(m.weight == 0).clone() for m in sparse.modules() if isinstance(m, WEIGHTED)]
    fit(sparse, splits, _recipe(1), seed=0, **_options(device), desc="sparse-hook", after_step=keep_zeros(sparse))
    kept = all(bool((m.weight[z] == 0).all()) for m, z in
               zip([m for m in sparse.modules() if isinstance(m, WEIGHTED)], zeros))
    return _check("after_step_hooks_on_device", worst <= 8 and kept, max_unique_per_clustered_layer=worst,
                  zeros_kept=kept, device=device)


def run(devices: tuple[str, str], epochs: int, max_train: int = 0) -> dict[str, Any]:
    import torch

    from edgeopt.accel import resolve_device

    for d in devices:
        resolve_device(d)  # 'cuda' without a GPU: ParamsError (exit 2)
    splits = digits_splits(max_train=max_train)
    ref_dev, dev = devices
    checks = [first_forward(splits, ref_dev, dev)]
    ref_model, ref, ref_s = _train(splits, ref_dev, epochs)
    model, other, s = _train(splits, dev, epochs)
    checks.append(curves_agree(ref, other, f"fit_{ref_dev}_vs_{dev}_fp32"))
    if dev == "cuda":
        _, mixed, mixed_s = _train(splits, dev, epochs, precision="bf16")
        gap = abs(ref.history[-1]["val_accuracy"] - mixed.history[-1]["val_accuracy"])
        checks.append(_check(f"fit_cuda_{mixed.precision}_learns", gap <= VAL_POINTS, final_val_gap_points=gap,
                             precision=mixed.precision, seconds=round(mixed_s, 2)))
    checks.append(checkpoint_portable(ref_model, model))
    checks.append(hooks_on_device(splits, dev))
    return {"format": "edgeopt-gpu-smoke/1", "devices": list(devices), "epochs": epochs,
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "train_seconds": {"reference": round(ref_s, 2), "device": round(s, 2)},
            "images_per_s": {"reference": round(ref.images_per_s, 1), "device": round(other.images_per_s, 1)},
            "checks": checks, "ok": all(c["ok"] for c in checks)}


def main(argv: list[str] | None = None) -> int:
    import os

    from edgeopt.errors import ParamsError

    os.environ.setdefault("EDGEOPT_NO_PROGRESS", "1")
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_smoke", description=__doc__.splitlines()[0])
    p.add_argument("--devices", nargs=2, default=["cpu", "cuda"], choices=["cpu", "cuda"],
                   help="reference device, device under test (default: cpu cuda)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--max-train", type=int, default=0, help="cap the training images (0 = all 1,257)")
    p.add_argument("--out", help="write the result JSON here")
    a = p.parse_args(argv)
    try:
        result = run(tuple(a.devices), a.epochs, a.max_train)
    except ParamsError as exc:
        print(f"gpu_smoke: {exc}", file=sys.stderr)
        return 2
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2))
    print(f"[gpu_smoke] {'all checks passed' if result['ok'] else 'FAILED'}", flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
