"""Training throughput: the train stage against a bare PyTorch loop on the same model, data and settings.

What is compared (recorded in the JSON as `definition`):
- same architecture and width (the model zoo's `build_model`), same prepared train split, same batch size,
  same SGD recipe (lr, momentum, Nesterov, weight decay), same intra-op threads, same seed, no augmentation on
  either side (the stage runs with `train.augment=none`), fp32 on both sides, same number of epochs;
- images/s = training images processed / time spent in the training-step loop (forward, loss, backward,
  optimizer step, and for the stage also its per-batch data path: slicing the memory-mapped uint8 split,
  conversion and normalisation, progress bar, loss/accuracy bookkeeping). Validation after each epoch, the
  test evaluation, checkpoint writing and DVCLive logging are outside that loop on both sides' numbers; they
  are reported separately as the stage's wall time.
- The bare loop holds the whole split as one normalised float tensor in memory and indexes it: the cheapest
  possible input path, so any overhead of the pipeline's data path shows up as a lower stage figure.

A few untimed batches run first (one-off kernel set-up), then measurements alternate (bare, stage, bare,
stage, ...) so that load on the machine hits both sides; the best of each side is kept. Target: the stage within 10 % of the bare loop.
Both sides: CPU, NCHW (train.channels_last off), no label smoothing.

`input_pipeline` (PIPELINE_DEFINITION): images/s of the loader alone (read, augment, normalise) against images/s
of training with it, for the per-image loop edgeopt used before issue 16 ("before"), the vectorised DataLoader
pipeline ("after") and the same in channels_last; `python -m benchmarks.throughput --pipeline-only` runs it alone.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeopt.params import Params

DEFINITION = ("images/s over the training-step loop only (forward+loss+backward+SGD step, plus the stage's "
              "per-batch data path), same model/data/batch size/threads/seed/recipe, CPU, NCHW, fp32, no label "
              "smoothing, no augmentation on either "
              "side (stage run with train.augment=none); bare loop = preloaded normalised tensor + plain "
              "PyTorch; best of alternating repeats")
TARGET_OVERHEAD_PCT = 10.0


def bare_loop(prepared: Path, params: Params, epochs: int, max_batches: int = 0) -> dict[str, Any]:
    """Plain PyTorch: preloaded tensors, shuffled batches, SGD. No edgeopt training code."""
    import torch
    import torch.nn.functional as F

    from edgeopt.arrays import load_meta, open_split
    from edgeopt.models import build_model, config_for
    from edgeopt.runtime import usable_cores  # the cores the stage gets too

    t = params.train
    torch.manual_seed(params.seed)
    torch.set_num_threads(t.threads or usable_cores())
    meta = load_meta(prepared)
    images, labels = open_split(prepared, "train")
    mean = torch.tensor(meta["mean"], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(meta["std"], dtype=torch.float32).view(1, -1, 1, 1)
    x_all = ((torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float().div_(255.0) - mean) / std).contiguous()
    y_all = torch.from_numpy(np.array(labels))
    model = build_model(config_for(params.model.arch, params.model.width, params.model.small_input, meta))
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay,
                          nesterov=t.momentum > 0)
    n = len(y_all)
    gen = torch.Generator().manual_seed(params.seed)
    seen, busy = 0, 0.0
    wall0 = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        t0 = time.perf_counter()
        for b, s in enumerate(range(0, n, t.batch_size)):
            if max_batches and b >= max_batches:
                break
            idx = order[s:s + t.batch_size]
            if len(idx) < 2:
                continue
            loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(idx)
        busy += time.perf_counter() - t0
    return {"images_per_s": round(seen / busy, 2), "images": seen, "epochs": epochs,
            "train_loop_s": round(busy, 3), "wall_s": round(time.perf_counter() - wall0, 3),
            "threads": torch.get_num_threads()}


def stage_loop(prepared: Path, params: Params, epochs: int, scratch: Path) -> dict[str, Any]:
    """The train stage itself (stages.train.run) in a scratch project that shares the prepared data."""
    from edgeopt.params import params_from_dict
    from edgeopt.paths import Paths
    from stages import train

    shutil.rmtree(scratch, ignore_errors=True)
    (scratch / "data").mkdir(parents=True)
    (scratch / "data" / "prepared").symlink_to(prepared.resolve(), target_is_directory=True)
    raw = params.dump()
    raw["train"].update(epochs=epochs, augment="none", early_stopping_patience=0, precision="fp32", device="cpu",
                        label_smoothing=0.0, channels_last=False)
    p = params_from_dict(raw, "throughput")
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        m = train.run(p, Paths(scratch))
    import torch

    return {"images_per_s": round(float(m["train_images_per_s"]), 2), "epochs": m["epochs_run"],
            "wall_s": m["cost"]["wall_s"], "threads": torch.get_num_threads()}


PIPELINE_DEFINITION = (
    "images/s on CPU over the same batches (batch_size, seeded order, the data's augmentation: crop_flip for RGB), "
    "best (and median) of alternating repeats. loader_alone: model-ready float NCHW batches only, one whole "
    "epoch (read from the memmapped split, augment, normalise); training: the same plus forward+loss+backward+SGD "
    "step of the params' model over the first batches. "
    "before = the per-image loop edgeopt used until issue 16 (normalise, zero-pad, one slice per image, "
    "torch.stack); after = edgeopt.batches (DataLoader, one index_select per batch on uint8, reflect pad); "
    "after_channels_last = after with model and batches in channels_last")


PIPELINE_BATCHES = 10  # training batches per pipeline measurement (ResNet-18 w0.5, 32 px: ~10 s on 2 cores)


def legacy_batches(images: np.ndarray, labels: np.ndarray, batch_size: int, kind: str, mean, std, gen):
    """The data path of edgeopt.training.fit before issue 16, kept as the 'before' of this benchmark."""
    import torch
    import torch.nn.functional as F

    order = torch.randperm(len(labels), generator=gen).numpy()
    for s in range(0, len(labels), batch_size):
        idx = np.sort(order[s:s + batch_size])
        if len(idx) < 2:
            continue
        x = (torch.from_numpy(np.array(images[idx], copy=True)).permute(0, 3, 1, 2).float().div_(255.0) - mean) / std
        if kind != "none":
            n, _, h, w = x.shape
            pad = max(1, h // 8)
            padded = F.pad(x, (pad, pad, pad, pad))
            dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
            dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
            x = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
            if kind == "crop_flip":
                flip = torch.rand(n, generator=gen) < 0.5
                x[flip] = x[flip].flip(3)
        yield x, torch.from_numpy(np.array(labels[idx]))


def new_batches(images: np.ndarray, labels: np.ndarray, batch_size: int, kind: str, mean, std, gen,
                channels_last: bool = False):
    from edgeopt.arrays import normalize
    from edgeopt.batches import augment_batch, batch_loader

    for xb, yb in batch_loader(images, labels, batch_size, gen):
        yield normalize(augment_batch(xb, kind, gen), mean, std, channels_last), yb


def pipeline(prepared: Path, params: Params, repeats: int = 3, max_batches: int = 20,
             say: Callable[[str], None] = print) -> dict[str, Any]:
    """Loader images/s alone vs training images/s, before / after the vectorised pipeline, on CPU."""
    import os
    import statistics

    import torch
    import torch.nn.functional as F

    from edgeopt.models import build_model, config_for
    from edgeopt.runtime import usable_cores
    from edgeopt.training import Splits

    torch.set_num_threads(params.train.threads or usable_cores())
    splits = Splits.load(prepared)
    images, labels = splits.train
    kind = splits.augment_kind(params.train.augment)
    bs = params.train.batch_size
    variants = {"before": (legacy_batches, False), "after": (new_batches, False),
                "after_channels_last": (lambda *a: new_batches(*a, channels_last=True), True)}
    torch.manual_seed(params.seed)
    model = build_model(config_for(params.model.arch, params.model.width, params.model.small_input, splits.meta))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)

    def run(name: str, train: bool) -> float:
        make, cl = variants[name]
        model.to(memory_format=torch.channels_last if cl else torch.contiguous_format).train()
        gen = torch.Generator().manual_seed(params.seed)
        seen, t0 = 0, time.perf_counter()
        for b, (x, y) in enumerate(make(images, labels, bs, kind, splits.mean, splits.std, gen)):
            if train and b >= max_batches:  # the loader alone reads a whole epoch: ms per batch need many
                break
            if train:
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            seen += len(y)
        return seen / (time.perf_counter() - t0)

    load0 = os.getloadavg()[0]
    run("after", True)  # untimed: one-off kernel set-up
    loader: dict[str, list[float]] = {k: [] for k in variants}
    training: dict[str, list[float]] = {k: [] for k in variants}
    for i in range(repeats):
        for name in variants:  # alternating, so load from other processes hits every side
            loader[name].append(round(run(name, False), 1))
            training[name].append(round(run(name, True), 1))
        say(f"[throughput] pipeline repeat {i + 1}/{repeats}: loader {loader} | training {training} img/s "
            f"(load {os.getloadavg()[0]:.1f})")
    best = {k: {"loader_alone": max(loader[k]), "training": max(training[k])} for k in variants}
    for v in best.values():
        v["loader_share_of_step_pct"] = round(100.0 * v["training"] / v["loader_alone"], 2)
    median = {k: {"loader_alone": statistics.median(loader[k]), "training": statistics.median(training[k])}
              for k in variants}
    return {"definition": PIPELINE_DEFINITION, "augment": kind, "batch_size": bs, "batches_per_measurement":
            max_batches, "repeats": repeats, "image_shape": list(images.shape[1:]), "threads": torch.get_num_threads(),
            "model": {"arch": params.model.arch, "width": params.model.width}, "runs": {
                "loader_alone": loader, "training": training}, "best": best, "median": median,
            "loader_speedup": round(best["after"]["loader_alone"] / best["before"]["loader_alone"], 3),
            "training_speedup": round(best["after"]["training"] / best["before"]["training"], 3),
            "channels_last_speedup": round(best["after_channels_last"]["training"] / best["after"]["training"], 3),
            "load_average_start_end": [round(load0, 2), round(os.getloadavg()[0], 2)]}


def measure(prepared: Path, params: Params, scratch: Path, epochs: int, repeats: int,
            say: Callable[[str], None] = print) -> dict[str, Any]:
    bare, stage = [], []
    bare_loop(prepared, params, 1, max_batches=3)  # untimed: one-off kernel set-up must not hit the first side
    for i in range(repeats):
        say(f"[throughput] repeat {i + 1}/{repeats}: bare PyTorch loop, {epochs} epoch(s)")
        bare.append(bare_loop(prepared, params, epochs))
        say(f"[throughput]   bare {bare[-1]['images_per_s']:.1f} img/s; now the train stage")
        stage.append(stage_loop(prepared, params, epochs, scratch))
        say(f"[throughput]   stage {stage[-1]['images_per_s']:.1f} img/s")
    best_bare = max(b["images_per_s"] for b in bare)
    best_stage = max(s["images_per_s"] for s in stage)
    overhead = 100.0 * (best_bare - best_stage) / best_bare
    shutil.rmtree(scratch, ignore_errors=True)
    say("[throughput] input pipeline: loader alone vs training, before / after")
    input_pipeline = pipeline(prepared, params, repeats, max_batches=PIPELINE_BATCHES, say=say)
    return {"input_pipeline": input_pipeline, "definition": DEFINITION, "model": {"arch": params.model.arch, "width": params.model.width},
            "batch_size": params.train.batch_size, "epochs_per_measurement": epochs, "repeats": repeats,
            "bare": bare, "stage": stage, "bare_images_per_s": best_bare, "stage_images_per_s": best_stage,
            "overhead_pct": round(overhead, 2), "target_overhead_pct": TARGET_OVERHEAD_PCT,
            "met": overhead <= TARGET_OVERHEAD_PCT}


def measure_in_subprocess(prepared: Path, params_file: Path, scratch: Path, epochs: int, repeats: int,
                          say: Callable[[str], None] = print) -> dict[str, Any]:
    """`measure` in its own process (`python -m benchmarks.throughput`), so the runner never loads torch
    before the pipeline's stage processes are started (see benchmarks/chain.py on inherited memory peaks)."""
    import json
    import os
    import subprocess
    import sys

    out = scratch.parent / f"{scratch.name}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "benchmarks.throughput", "--prepared", str(prepared), "--params",
           str(params_file), "--scratch", str(scratch), "--epochs", str(epochs), "--repeats", str(repeats),
           "--out", str(out)]
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "EDGEOPT_NO_PROGRESS": "1", "PYTHONUNBUFFERED": "1"}
    tail: list[str] = []
    with subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            if line.startswith("[throughput]"):
                say(line)
            elif line:
                tail = (tail + [line])[-5:]
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"throughput measurement failed (exit {proc.returncode}): {' | '.join(tail)}")
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    import os

    from edgeopt.params import load_params

    os.environ.setdefault("EDGEOPT_NO_PROGRESS", "1")
    p = argparse.ArgumentParser(prog="python -m benchmarks.throughput",
                                description="train stage vs bare PyTorch loop on a prepared data set")
    p.add_argument("--prepared", required=True, help="data/prepared of a project")
    p.add_argument("--params", required=True, help="params file (model.*, train.*, seed)")
    p.add_argument("--scratch", help="scratch project directory for the train stage (not with --pipeline-only)")
    p.add_argument("--pipeline-only", action="store_true",
                   help="only the input pipeline: loader alone vs training, before / after (no train stage)")
    p.add_argument("--batches", type=int, default=PIPELINE_BATCHES, help="--pipeline-only: batches per measurement")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", required=True, help="JSON result")
    a = p.parse_args(argv)
    say = lambda m: print(m, flush=True)  # noqa: E731
    if a.pipeline_only:
        result = pipeline(Path(a.prepared), load_params(a.params), a.repeats, a.batches, say=say)
    elif not a.scratch:
        p.error("--scratch is required (or --pipeline-only)")
    else:
        result = measure(Path(a.prepared), load_params(a.params), Path(a.scratch), a.epochs, a.repeats, say=say)
    Path(a.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
