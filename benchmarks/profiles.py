"""Benchmark modes: which parameters each chain runs with and how hard the latency protocol measures.

Every setting the benchmark changes is a params.yaml override (`section.key: value`) applied to the project's
params.yaml and validated by edgeopt.params, so the chains run exactly what `dvc exp run -S ...` would run. The
overrides are written into each work directory's params.yaml and recorded in the benchmark JSON.

Settings of the realistic chain (mode `full`) and why (issue 12: accuracy at a MAC budget against a converged
baseline and an external peer, benchmarks/reference.py, trained on the same images in the same run):
- Baseline: ResNet-18 with the CIFAR stem at FULL width (555 M MACs, 11.2 M params), trained with
  one-cycle SGD (Nesterov, max lr 0.1), label smoothing 0.1, crop + flip, batch 128, 90 epochs, no early
  stopping (the schedule decides), bf16 autocast where the CPU has native bf16 (2x here; fp32 elsewhere, with a
  warning). 90 epochs because that is where this recipe plateaus on the CIFAR subset: 40 epochs were 2.4-4.0 pt
  short of 60 (two seeds, benchmarks/recorded/2026-11-30-longer-training/), 60 about 1 pt short of 90, and 135
  added +0.20 pt on the mean of three seeds (benchmarks/recorded/2026-11-30-h200-convergence/). It costs about
  53 min a seed on this 2-core CPU, so the mode's 40-minute goal is not met on such a machine
  (benchmark.json's `budget` says by how much); on a GPU (`train.device: auto`) 90 epochs take minutes.
  Whether it converged is decided by the in-run check on every seed and by the convergence probe (seed 0
  trained again for 1.5x the epochs must gain <= 0.5 pt of test accuracy; the in-run check alone passed a
  baseline 4 pt short of its 60-epoch accuracy).
- Pruning 68 % of the channels of every layer (L1, block-aligned to 8, nothing protected) leaves ~9 % of the
  MACs, then 40 epochs of KD fine-tuning from the baseline (from seed 0's 90-epoch baseline, 77.58 %: 15 epochs
  reached 74.53 %, 40 reached 76.89 %), 2 of cluster-preserving fine-tuning. INT8 quantizes the fine-tuned
  model, not the clustered one: 16-value clustering cost 0.88 and 1.18 pt on seeds 0 and 1 (90-epoch baselines),
  OpenVINO INT8 of the unclustered model -0.1 and +0.5 pt, and INT8 alone already makes it 36x smaller than
  the FP32 ONNX baseline; the clustered model stays an FP32 candidate.
- Distillation student: the 6-conv small_cnn at width 2 (39 M MACs, 7 % of the baseline's), taught by the
  unpruned baseline for 40 epochs, KD alpha 0.3 (0.7 cost this student 1.8-3.0 pt on three seeds when its
  teacher was weaker: it outgrows a teacher), and the same student without KD beside it.
- Gate: accuracy drop <= 0.5 pt (the issue's target), p90 <= 5 ms, <= 2 MB.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Applied to every chain the benchmark runs: never touch the repository (no git tags from promote), and keep
# the registry inside the work directory.
COMMON: dict[str, Any] = {"registry.tag": False, "registry.root": "registry"}

REALISTIC_FULL: dict[str, Any] = {
    "model.arch": "resnet18", "model.width": 1.0, "model.small_input": True,
    "train.epochs": 90, "train.batch_size": 128, "train.lr": 0.1, "train.schedule": "onecycle",
    "train.label_smoothing": 0.1, "train.precision": "bf16", "train.early_stopping_patience": 0,
    "prune.mode": "structured", "prune.importance": "l1", "prune.target": "ratio", "prune.ratio": 0.68,
    "prune.protect": [],
    "finetune.epochs": 40, "finetune.lr": 0.02, "finetune.kd": True, "finetune.batch_size": 128,
    "finetune.precision": "bf16",
    "cluster.finetune_epochs": 2, "quantize.source": "finetuned",
    "sensitivity.max_samples": 300,
    "distill.student_arch": "small_cnn", "distill.student_width": 2.0, "distill.epochs": 40,
    "distill.teacher": "baseline", "distill.alpha": 0.3, "distill.lr": 0.05, "distill.batch_size": 128,
    "distill.precision": "bf16",
    "quantize.modes": ["ov_int8", "ort_int8_static"], "quantize.calibration_size": 300,
    "bench.runs": 200, "bench.warmup": 20,
    "gate.max_accuracy_drop": 0.5, "gate.max_latency_ms": 5.0, "gate.max_size_bytes": 2_000_000,
}


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    digits: dict[str, Any]             # overrides of the default (digits) run: {} = params.yaml as it is
    realistic: dict[str, Any]          # overrides of the realistic run (data.* is added from the data found)
    warmup: int = 20                   # latency protocol: untimed calls, then `runs` timed calls at batch 1,
    runs: int = 200                    # repeated `rounds` times interleaved over all rows; the round with
    rounds: int = 3                    # the lowest p50 is kept (the least disturbed one)
    batch: int = 64                    # batched throughput (all cores); 0 = skip
    batch_runs: int = 20
    throughput_epochs: int = 1         # train stage vs bare loop: epochs per measurement
    throughput_repeats: int = 3        # alternating measurements per side; the best is kept
    in_process: bool = False           # run stages in this process (faster; peak memory is then cumulative)
    digits_chain: bool = True          # also run the default (digits) chain for the cost table
    budget_s: float = 2400.0           # the mode's wall-time goal (reported, not enforced)
    seeds: int = 3                     # headline rows (baseline, pick, the peer) over this many training seeds
    reference_epochs: tuple[int, int] = (15, 5)  # the peer script's epochs (bare, KD): 15 / 5 as written
    probe_factor: float = 1.5          # convergence probe: seed 0's baseline again with this many times the
                                       # epochs (benchmarks/convergence_probe.py); 0 = not run
    notes: tuple[str, ...] = field(default_factory=tuple)


FULL = Profile(
    name="full",
    description="realistic compression results and pipeline cost (goal: < 40 min on 2 cores)",
    digits={},
    realistic=REALISTIC_FULL,
    notes=("full mode trains the baseline for 90 epochs, where it plateaus (about 53 min a seed on a 2-core CPU): "
           "on such a machine the 40-minute goal is not met; a GPU (train.device: auto) brings it within reach",),
)

QUICK = Profile(
    name="quick",
    description="smoke run of everything in a few minutes: tiny epochs, 100 images per class, width 0.25; "
                "the numbers show that it works, not what the pipeline achieves",
    digits={"train.epochs": 3, "finetune.epochs": 2, "distill.epochs": 2, "cluster.finetune_epochs": 1,
            "quantize.calibration_size": 100, "sensitivity.max_samples": 100, "bench.runs": 50, "bench.warmup": 5},
    realistic={**REALISTIC_FULL, "data.max_images_per_class": 100, "model.width": 0.25,
               "train.epochs": 4, "finetune.epochs": 3, "distill.epochs": 3, "cluster.finetune_epochs": 1,
               "quantize.calibration_size": 100, "sensitivity.max_samples": 100,
               "bench.runs": 50, "bench.warmup": 5,
               # a 4-epoch model is far from converged: accuracy drops are noise, so the gate is relaxed to let
               # the chain reach promote/report; the targets section still reports the real drop
               "gate.max_accuracy_drop": 100.0},
    warmup=5, runs=50, rounds=1, batch=32, batch_runs=5, throughput_epochs=1, throughput_repeats=1,
    budget_s=600.0, seeds=1, reference_epochs=(2, 1),
    notes=("quick mode: gate.max_accuracy_drop relaxed to 100 in the realistic chain so it runs to the end; "
           "accuracy figures of a 4-epoch model are not representative",),
)

SMOKE = Profile(
    name="smoke",
    description="the runner's own test: a few images, width 0.125, one epoch, stages in-process",
    digits={"data.max_images_per_class": 40, "train.epochs": 1, "finetune.epochs": 1, "distill.epochs": 1,
            "cluster.finetune_epochs": 0, "sensitivity.enabled": False, "quantize.modes": ["ov_int8"],
            "quantize.calibration_size": 50, "distill.also_without_kd": False,
            "bench.runs": 5, "bench.warmup": 1, "gate.max_accuracy_drop": 100.0,
            "validate.min_images_per_class": 5},
    realistic={**REALISTIC_FULL, "data.max_images_per_class": 30, "model.width": 0.125,
               "train.epochs": 1, "finetune.epochs": 1, "distill.epochs": 1, "cluster.finetune_epochs": 0,
               "sensitivity.enabled": False, "quantize.modes": ["ov_int8", "ort_int8_dynamic"],
               "quantize.calibration_size": 50, "distill.also_without_kd": False,
               "bench.runs": 5, "bench.warmup": 1, "gate.max_accuracy_drop": 100.0,
               "validate.min_images_per_class": 5, "export.parity_samples": 32,
               # a 1-epoch model's INT8 top-1 agreement and a loaded machine's p90 are noise: the runner is
               # under test here, not the gates
               "export.min_agreement_quantized": 0.0, "gate.max_latency_ms": 1000.0},
    warmup=1, runs=5, rounds=1, batch=8, batch_runs=2, throughput_epochs=1, throughput_repeats=1,
    in_process=True, digits_chain=False, budget_s=180.0, seeds=2, reference_epochs=(1, 1),
    notes=("smoke mode: tests the runner only; every number is meaningless",),
)

PROFILES = {p.name: p for p in (FULL, QUICK, SMOKE)}
