"""Benchmark modes: which parameters each chain runs with and how hard the latency protocol measures.

Every setting the benchmark changes is a params.yaml override (`section.key: value`) applied to the project's
params.yaml and validated by edgeopt.params, so the chains run exactly what `dvc exp run -S ...` would run. The
overrides are written into each work directory's params.yaml and recorded in the benchmark JSON.

Compression settings of the realistic chain (mode `full`) and why:
- ResNet-18 with the CIFAR stem at width 0.5 (139 M MACs, 2.8 M params): the full-width model (557 M MACs)
  does not train 20 epochs on 2 CPU cores within the 40-minute budget; width 0.5 does. Every ratio is taken
  against this width-0.5 baseline, so the multiplier does not flatter the ratios.
- Structured pruning of 65 % of the channels of every layer, nothing protected (the classes are never pruned),
  kept channels rounded to multiples of 8 (`prune.round_to`, the default): params x0.11, MACs x0.09. Protecting
  the first conv or the classifier keeps the residual streams those layers feed at full width (at 60 %: MACs
  only x0.23 / x0.28 instead of x0.15). Measured here with OpenVINO INT8 at batch 1, 1 thread: the unpruned
  width-0.5 model 0.54 ms, 65 % pruned with odd channel counts 0.60 ms (slower than unpruned: the INT8 kernels
  work in channel blocks), the same with multiples of 8 0.26 ms. Below that the ResNet-18 graph (20 convs,
  8 residual adds) is overhead-bound: fewer MACs no longer buy speed.
- Fine-tuning with KD from the unpruned baseline for 15 epochs recovers the accuracy lost by pruning.
- Distillation student: the 6-conv small_cnn at width 2 (39 M MACs, 289 k params), taught by the unpruned
  baseline (the strongest teacher) for the baseline's own 20 epochs, and the same student without KD. Its
  shallow graph runs OpenVINO INT8 in 0.18 ms, which the pruned ResNet-18 cannot reach (measured with random
  weights: small_cnn w1 / w1.5 / w2 0.15 / 0.19 / 0.18 ms).
- KD weight alpha 0.3 (params.yaml default 0.7): this student, alone, outgrows its 65 % teacher; with alpha 0.7
  the KD student scored 1.8-3.0 pt *below* the same student without KD on three seeds (test 66.5 / 67.0 / 67.5 % vs
  68.2 / 69.7 / 70.4 %), with alpha 0.3 2.4 pt above it (70.6 % vs 68.2 %, one seed).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Applied to every chain the benchmark runs: never touch the repository (no git tags from promote), and keep
# the registry inside the work directory.
COMMON: dict[str, Any] = {"registry.tag": False, "registry.root": "registry"}

REALISTIC_FULL: dict[str, Any] = {
    "model.arch": "resnet18", "model.width": 0.5, "model.small_input": True,
    "train.epochs": 20, "train.batch_size": 64, "train.lr": 0.05, "train.early_stopping_patience": 0,
    "prune.mode": "structured", "prune.importance": "l1", "prune.target": "ratio", "prune.ratio": 0.65,
    "prune.protect": [],
    "finetune.epochs": 15, "finetune.lr": 0.02, "finetune.kd": True,
    "cluster.finetune_epochs": 2,
    "sensitivity.max_samples": 300,
    "distill.student_arch": "small_cnn", "distill.student_width": 2.0, "distill.epochs": 20,
    "distill.teacher": "baseline", "distill.alpha": 0.3,
    "quantize.calibration_size": 300,
    "bench.runs": 200, "bench.warmup": 20,
    "gate.max_latency_ms": 5.0, "gate.max_size_bytes": 2_000_000,
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
    notes: tuple[str, ...] = field(default_factory=tuple)


FULL = Profile(
    name="full",
    description="realistic compression results and pipeline cost (goal: < 40 min on 2 cores)",
    digits={},
    realistic=REALISTIC_FULL,
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
