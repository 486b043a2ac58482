"""Fine-tune the pruned model to recover accuracy (`finetune` recipe), optionally distilling from the
unpruned baseline (Hinton KD).

A model pruned in unstructured mode keeps its zeros: they are re-applied after every optimizer step, so the
sparsity pruning bought is not trained away. Model selection uses validation accuracy only: if no epoch beats
the pruned model on validation, the pruned weights are kept (and the metrics say so).

Reads models/pruned.pt, models/baseline.pt, data/prepared; writes models/finetuned.pt, dvclive/finetune,
metrics/finetune.json.
"""
from __future__ import annotations

import copy
import sys
from typing import Callable

import torch
from torch import nn

from edgeopt.errors import CheckpointError
from edgeopt.models import load_checkpoint, save_checkpoint
from edgeopt.params import Params
from edgeopt.paths import Paths
from edgeopt.stage import stage, stage_main
from edgeopt.stats import WEIGHTED, model_stats
from edgeopt.training import accuracies, fit, fit_options, start_from


def keep_zeros(model: nn.Module) -> Callable[[nn.Module], None]:
    """An `after_step` hook that puts the currently zero conv/linear weights back to zero."""
    masks = [(m.weight, m.weight.detach() != 0) for m in model.modules() if isinstance(m, WEIGHTED)]

    @torch.no_grad()
    def reapply(_model: nn.Module) -> None:
        for i, (weight, mask) in enumerate(masks):
            if mask.device != weight.device:  # training moved the model (GPU): move each mask once
                masks[i] = (weight, mask := mask.to(weight.device))
            weight.mul_(mask)

    return reapply


@stage("finetune")
def run(params: Params, paths: Paths) -> dict:
    cfg = params.finetune
    start = start_from(params, paths, "pruned")
    splits, source, model, config, shape = start.splits, start.source, start.model, start.config, start.shape
    baseline, base_config, _ = load_checkpoint(paths.checkpoint("baseline"))
    if base_config["num_classes"] != config["num_classes"]:
        raise CheckpointError(f"{source}: {config['num_classes']} classes but the teacher "
                              f"{paths.checkpoint('baseline')} has {base_config['num_classes']}; rerun prune")
    sparse = start.info.get("mode") == "unstructured"
    reference = accuracies(baseline, splits)
    before = {**model_stats(model, shape, source), **accuracies(model, splits)}
    pruned_state = copy.deepcopy(model.state_dict())

    result = fit(model, splits, cfg, seed=params.seed, **fit_options(params.train),
                 teacher=baseline if cfg.kd else None, temperature=cfg.temperature, alpha=cfg.alpha,
                 live_dir=paths.live("finetune"), desc="finetune", after_step=keep_zeros(model) if sparse else None,
                 precision=cfg.precision)
    kept_pruned = result.best_val_accuracy < before["val_accuracy"]
    if kept_pruned:
        model.load_state_dict(pruned_state)

    out = paths.checkpoint("finetuned")
    recipe = {"epochs": cfg.epochs, "lr": cfg.lr, "schedule": cfg.schedule, "label_smoothing": cfg.label_smoothing,
              "kd": cfg.kd,
              **({"temperature": cfg.temperature, "alpha": cfg.alpha} if cfg.kd else {})}
    save_checkpoint(out, model, config, {"stage": "finetune", "source": "pruned", "mode": start.info.get("mode"),
                                         "recipe": recipe})
    after = {**model_stats(model, shape, out), **accuracies(model, splits)}
    return {"val_accuracy": after["val_accuracy"], "test_accuracy": after["test_accuracy"],
            "recovered_val_points": round(after["val_accuracy"] - before["val_accuracy"], 3),
            "recovered_test_points": round(after["test_accuracy"] - before["test_accuracy"], 3),
            "baseline_val_accuracy": reference["val_accuracy"], "baseline_test_accuracy": reference["test_accuracy"],
            "gap_to_baseline_test_points": round(reference["test_accuracy"] - after["test_accuracy"], 3),
            "params": after["params"], "nonzero_params": after["nonzero_params"], "macs": after["macs"],
            "best_epoch": result.best_epoch, "kept_pruned_weights": kept_pruned, "sparsity_kept": sparse,
            "images_per_s": round(result.images_per_s, 1), **result.summary(), **recipe,
            "before": before, "after": after, "history": result.history}


if __name__ == "__main__":  # what dvc.yaml runs: python -m stages.<name>
    sys.exit(stage_main(run))
