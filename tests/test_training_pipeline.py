"""The training machinery every stage shares: device choice, input pipeline, augmentation, LR schedules,
convergence check, and the GPU smoke script (its CUDA half runs only where a GPU is)."""
from __future__ import annotations

import json
import logging
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from edgeopt import accel
from edgeopt.arrays import normalize as normalize_batch  # the input contract's one implementation
from edgeopt.batches import ArrayBatches, augment_batch, batch_loader
from edgeopt.params import ParamsError, Train, load_params
from edgeopt.training import Splits, convergence, fit, kd_loss, lr_schedule, placed

REPO = Path(__file__).resolve().parents[1]


def _reference_augment(x: torch.Tensor, kind: str, gen: torch.Generator) -> torch.Tensor:
    """Per-image reference: F.pad(mode=reflect), crop at the drawn offset, flip. Same draws as augment_batch."""
    n, h, w, _ = x.shape
    ph, pw = max(1, h // 8), max(1, w // 8)
    dy = torch.randint(-ph, ph + 1, (n, 1), generator=gen)
    dx = torch.randint(-pw, pw + 1, (n, 1), generator=gen)
    flip = torch.rand(n, 1, generator=gen) < 0.5 if kind == "crop_flip" else torch.zeros(n, 1, dtype=torch.bool)
    padded = F.pad(x.permute(0, 3, 1, 2).float(), (pw, pw, ph, ph), mode="reflect")
    out = []
    for i in range(n):
        img = padded[i, :, ph + dy[i, 0]:ph + dy[i, 0] + h, pw + dx[i, 0]:pw + dx[i, 0] + w]
        out.append(img.flip(2) if flip[i, 0] else img)
    return torch.stack(out).permute(0, 2, 3, 1).to(x.dtype)


@pytest.mark.parametrize("kind, shape", [("crop", (9, 16, 16, 1)), ("crop_flip", (7, 32, 32, 3)),
                                         ("crop_flip", (5, 12, 20, 3))])
def test_vectorised_augmentation_equals_the_per_image_reflect_crop_and_flip(kind, shape):
    x = torch.randint(0, 256, shape, dtype=torch.uint8)
    out = augment_batch(x, kind, torch.Generator().manual_seed(3))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert torch.equal(out, _reference_augment(x, kind, torch.Generator().manual_seed(3)))
    assert not torch.equal(out, x)  # something moved: the test would pass on an identity otherwise
    assert torch.equal(augment_batch(x, kind, torch.Generator().manual_seed(3)), out)  # seeded
    assert augment_batch(x, "none", torch.Generator()) is x


def test_normalize_batch_gives_the_input_contract_in_the_asked_memory_format():
    x = torch.randint(0, 256, (4, 6, 6, 1), dtype=torch.uint8)
    mean, std = torch.tensor([0.3]).view(1, -1, 1, 1), torch.tensor([0.2]).view(1, -1, 1, 1)
    out = normalize_batch(x, mean, std)
    expected = (x.permute(0, 3, 1, 2).float() / 255.0 - 0.3) / 0.2
    assert torch.allclose(out, expected, atol=1e-6)
    # 1 channel: a permuted NHWC tensor claims is_contiguous() but has channels_last strides, which sends
    # convolutions down the channels_last path; the batch gets the canonical NCHW strides instead
    assert out.stride() == (36, 36, 6, 1)
    rgb = normalize_batch(torch.zeros(2, 5, 5, 3, dtype=torch.uint8), mean.expand(1, 3, 1, 1), std, channels_last=True)
    assert rgb.is_contiguous(memory_format=torch.channels_last) and not rgb.is_contiguous()


def test_loader_covers_the_split_once_per_epoch_in_a_seeded_order(tmp_path):
    images = np.arange(50 * 2 * 2, dtype=np.uint8).reshape(50, 2, 2, 1)
    labels = np.arange(50)
    loader = batch_loader(images, labels, 16, torch.Generator().manual_seed(0))
    epochs = [[yb.numpy() for _, yb in loader] for _ in range(2)]
    assert [len(b) for b in epochs[0]] == [16, 16, 16, 2]  # a last batch of 2 is kept, one of 1 would not be
    assert len(loader) == 4 and len(batch_loader(images[:49], labels[:49], 16, torch.Generator())) == 3
    for batches in epochs:
        seen = np.concatenate(batches)
        assert sorted(seen.tolist()) == list(range(50))
        assert all(np.all(np.diff(b) > 0) for b in batches)  # sorted: sequential reads of the memmap
    assert not np.array_equal(np.concatenate(epochs[0]), np.concatenate(epochs[1]))  # reshuffled per epoch
    again = [yb.numpy() for _, yb in batch_loader(images, labels, 16, torch.Generator().manual_seed(0))]
    assert all(np.array_equal(a, b) for a, b in zip(again, epochs[0]))
    xb, yb = next(iter(loader))
    assert xb.dtype == torch.uint8 and torch.equal(xb[:, 0, 0, 0], torch.from_numpy(images[yb.numpy(), 0, 0, 0]))


def test_memory_mapped_split_travels_to_a_worker_by_file_name(tmp_path):
    np.save(tmp_path / "images.npy", np.random.default_rng(0).integers(0, 255, (200, 8, 8, 3), dtype=np.uint8))
    images = np.load(tmp_path / "images.npy", mmap_mode="r")
    ds = ArrayBatches(images, np.arange(200))
    blob = pickle.dumps(ds)
    assert len(blob) < 4000  # the file name, not 38 KB of pixels
    copy = pickle.loads(blob)
    idx = np.array([3, 7, 150])
    assert isinstance(copy.images, np.memmap) and torch.equal(copy[idx][0], ds[idx][0])


def test_workers_do_not_change_the_training_result(tiny_project):
    """Workers only slice arrays; order and augmentation are drawn in the main process."""
    splits = Splits.load(tiny_project / "data" / "prepared")
    splits.train = (splits.train[0][:256], splits.train[1][:256])
    histories = []
    for workers in (0, 2):
        torch.manual_seed(0)
        from edgeopt.models import build_model, model_config

        model = build_model(model_config("small_cnn", 10, 1, 0.5, True, 16))
        r = fit(model, splits, Train(epochs=2, batch_size=32), seed=0, num_workers=workers)
        histories.append([(round(h["train_loss"], 6), h["val_accuracy"]) for h in r.history])
    assert histories[0] == histories[1]


def test_cuda_without_a_gpu_is_a_clear_params_error_and_auto_falls_back_once(monkeypatch, caplog, tiny_project,
                                                                             tiny_params):
    from edgeopt.errors import exit_code_for
    from edgeopt.paths import Paths
    from stages import train

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(accel, "_told_fallback", False)
    tiny_params.train.device = "cuda"
    with pytest.raises(ParamsError) as err:
        train.run(tiny_params, Paths(tiny_project))
    assert "train.device is 'cuda'" in str(err.value) and "set train.device: auto" in str(err.value)
    assert exit_code_for(err.value) == 2 and "\n" not in str(err.value)
    failed = json.loads((tiny_project / "metrics" / "train.json").read_text())  # the stage decorator's record
    assert failed["status"] == "failed" and failed["exit_code"] == 2 and "train.device is 'cuda'" in failed["error"]
    assert "ran_with" not in failed  # no lineage: nothing was built
    with caplog.at_level(logging.INFO, logger="edgeopt.training"):
        assert accel.resolve_device("auto") == torch.device("cpu")
        assert accel.resolve_device("auto") == torch.device("cpu")
        assert accel.resolve_device("cpu") == torch.device("cpu")
    lines = [r.getMessage() for r in caplog.records if r.name == "edgeopt.training"]
    assert lines == ["train.device auto: no CUDA GPU visible, training on the CPU"]


def test_auto_and_cuda_pick_the_gpu_when_torch_sees_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert accel.resolve_device("auto").type == accel.resolve_device("cuda").type == "cuda"
    assert accel.resolve_device("cpu").type == "cpu"


def test_precision_falls_back_where_the_device_lacks_it(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    with pytest.warns(UserWarning, match="no bf16 .pre-Ampere.: training with fp16"):
        assert accel.resolve_precision("bf16", cuda) == "fp16"
    with pytest.warns(UserWarning, match="fp16 is for CUDA GPUs"):
        assert accel.resolve_precision("fp16", cpu) == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert accel.resolve_precision("bf16", cuda) == "bf16" and accel.resolve_precision("fp16", cuda) == "fp16"
    assert accel.resolve_precision("fp32", cuda) == "fp32"
    assert not accel.grad_scaler(cpu, "fp32").is_enabled()


def test_placed_hands_models_back_on_cpu_contiguous_and_in_eval_mode_even_on_failure():
    from edgeopt.models import build_model, model_config

    model = build_model(model_config("small_cnn", 10, 3, 0.5, True, 16)).train()
    ids = [id(p) for p in model.parameters()]
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    with pytest.raises(RuntimeError, match="boom"):
        with placed(torch.device("cpu"), True, model, None):
            assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
            raise RuntimeError("boom")
    assert conv.weight.is_contiguous() and not model.training
    assert [id(p) for p in model.parameters()] == ids  # optimizer and after-step hooks still hold these


def _lrs(recipe, epochs=4, steps=10, lr=0.1):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr, momentum=0.9)
    sched = lr_schedule(opt, recipe, epochs, steps, lr)
    out = []
    for _ in range(epochs * steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        if sched is not None:
            sched.step()
    return out, opt


def test_onecycle_is_torch_onecyclelr_with_a_quarter_warm_up_and_survives_tiny_runs():
    lrs, opt = _lrs(Train(epochs=4, schedule="onecycle"))
    ref_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    ref = torch.optim.lr_scheduler.OneCycleLR(ref_opt, max_lr=0.1, total_steps=40, pct_start=0.25,
                                              cycle_momentum=False)
    expected = []
    for _ in range(40):
        expected.append(ref_opt.param_groups[0]["lr"])
        ref_opt.step()
        ref.step()
    assert lrs == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert lrs[0] == pytest.approx(0.1 / 25) and max(lrs) == pytest.approx(0.1) and lrs[-1] < 1e-5
    assert int(np.argmax(lrs)) == 9  # the peak after a quarter of the steps
    assert opt.param_groups[0]["momentum"] == 0.9  # the recipe's momentum, not cycled
    tiny, _ = _lrs(Train(epochs=1, schedule="onecycle"), epochs=1, steps=3)  # OneCycleLR itself divides by zero
    assert tiny[0] == pytest.approx(0.004) and tiny[1] == pytest.approx(0.1) and tiny[2] < 0.06


def test_cosine_with_warmup_and_step_schedules():
    lrs, _ = _lrs(Train(epochs=4, schedule="cosine", warmup_epochs=1))
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1) and lrs[10] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 0.001
    plain, _ = _lrs(Train(epochs=4, schedule="cosine"))
    assert plain[0] == 0.1 and plain[20] == pytest.approx(0.05)
    stepped, _ = _lrs(Train(epochs=4, schedule="step", step_size=2, gamma=0.5))
    assert stepped[19] == 0.1 and stepped[20] == pytest.approx(0.05)
    assert set(_lrs(Train(epochs=4, schedule="none"))[0]) == {0.1}


def test_recipe_knobs_are_validated_and_defaults_match_params_yaml():
    with pytest.raises(ParamsError, match="warmup_epochs applies to schedule: cosine only"):
        load_params(REPO / "params.yaml", ["train.warmup_epochs=1"])
    with pytest.raises(ParamsError, match="must be smaller than epochs"):
        load_params(REPO / "params.yaml", ["finetune.schedule=cosine", "finetune.warmup_epochs=8"])
    with pytest.raises(ParamsError, match="train.device"):
        load_params(REPO / "params.yaml", ["train.device=gpu"])
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    new = {"train": ["schedule", "warmup_epochs", "label_smoothing", "precision", "device", "num_workers",
                     "pin_memory", "channels_last", "converged_max_gain"],
           "finetune": ["schedule", "warmup_epochs", "label_smoothing"],
           "distill": ["schedule", "warmup_epochs", "label_smoothing"]}
    from edgeopt.params import Params

    defaults = Params()
    for section, keys in new.items():
        for key in keys:
            assert getattr(getattr(defaults, section), key) == raw[section][key], f"{section}.{key}"


def test_label_smoothing_applies_to_the_ce_term_of_kd():
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    smooth_ce = F.cross_entropy(s, y, label_smoothing=0.1)
    assert kd_loss(s, t, y, 4.0, 0.0, 0.1).item() == pytest.approx(smooth_ce.item(), rel=1e-6)
    assert kd_loss(s, t, y, 4.0, 0.5, 0.1).item() == pytest.approx(
        kd_loss(s, t, y, 4.0, 0.5).item() + 0.5 * (smooth_ce - F.cross_entropy(s, y)).item(), rel=1e-5)


def test_convergence_check_of_a_history():
    h = lambda *vals: [{"val_accuracy": v} for v in vals]
    still_climbing = convergence(h(50, 60, 70, 80, 85, 88, 90, 91, 93, 95), 0.5)
    assert still_climbing == {"converged": False, "val_gain_last_20pct": 4.0, "converged_max_gain": 0.5}
    plateau = convergence(h(50, 80, 90, 95, 95.2, 95, 94, 95.1, 95.3, 95.0), 0.5)
    assert plateau["converged"] and plateau["val_gain_last_20pct"] == pytest.approx(0.1)
    assert convergence(h(60, 97), 0.5)["val_gain_last_20pct"] == 37  # window: the last epoch
    assert convergence(h(99), 0.5) == {"converged": False, "val_gain_last_20pct": None, "converged_max_gain": 0.5}


def test_gpu_smoke_plumbing_runs_cpu_against_cpu(tmp_path):
    """The smoke script's checks on CPU vs CPU (identical by construction); the CUDA run is the test below."""
    out = tmp_path / "smoke.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_smoke", "--devices", "cpu", "cpu", "--epochs", "1",
                           "--max-train", "256", "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["ok"] and {c["name"] for c in result["checks"]} == {
        "first_forward_logits", "fit_cpu_vs_cpu_fp32", "checkpoint_cpu_and_same_layout", "after_step_hooks_on_device"}
    if not torch.cuda.is_available():
        proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_smoke"], cwd=REPO, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 2 and "train.device is 'cuda'" in proc.stderr


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="no CUDA GPU visible: benchmarks/gpu_smoke.py compares CUDA with CPU training and "
                           "needs one (run it where a GPU exists: python -m benchmarks.gpu_smoke)")
def test_gpu_smoke_cuda_matches_cpu(tmp_path):
    out = tmp_path / "smoke.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_smoke", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["ok"] and result["gpu"] and any(c["name"].startswith("fit_cuda_") for c in result["checks"])


def test_pipeline_benchmark_compares_the_same_batches_and_records_both_sides(tiny_project, tiny_params):
    from benchmarks import throughput

    splits = Splits.load(tiny_project / "data" / "prepared")
    images, labels = splits.train
    old = throughput.legacy_batches(images, labels, 32, "none", splits.mean, splits.std, torch.Generator().manual_seed(0))
    new = throughput.new_batches(images, labels, 32, "none", splits.mean, splits.std, torch.Generator().manual_seed(0))
    for (xo, yo), (xn, yn) in zip(old, new):
        assert torch.equal(yo, yn) and torch.allclose(xo, xn, atol=1e-6)
    r = throughput.pipeline(tiny_project / "data" / "prepared", tiny_params, repeats=1, max_batches=2, say=lambda m: None)
    assert set(r["best"]) == {"before", "after", "after_channels_last"} and r["augment"] == "crop"
    assert all(v["loader_alone"] > 0 and v["training"] > 0 for v in r["best"].values())
    assert r["loader_speedup"] == pytest.approx(r["best"]["after"]["loader_alone"] / r["best"]["before"]["loader_alone"],
                                                rel=1e-2)
