"""Fine-tune stage: recovers the accuracy pruning cost, with KD from the baseline; keeps unstructured sparsity."""
from __future__ import annotations

import json

import torch

from edgeopt.models import load_checkpoint
from edgeopt.paths import Paths
from edgeopt.stats import count_nonzero, count_params
from stages import finetune, prune


def test_finetune_recovers_accuracy_of_a_pruned_model(tiny_project, tiny_params):
    tiny_params.train.threads = 1
    tiny_params.prune.ratio = 0.75  # hard enough that the pruned model is clearly worse than the baseline
    tiny_params.finetune.epochs = 3  # one-cycle spends its first quarter warming up: 2 epochs got 79-80 %
    paths = Paths(tiny_project)
    pruned = prune.run(tiny_params, paths)
    metrics = finetune.run(tiny_params, paths)

    assert metrics["kd"] is True and metrics["epochs"] == 3
    assert metrics["before"]["val_accuracy"] == pruned["val_accuracy"]
    assert metrics["val_accuracy"] > pruned["val_accuracy"] + 5
    assert metrics["recovered_val_points"] == round(metrics["val_accuracy"] - pruned["val_accuracy"], 3)
    assert metrics["test_accuracy"] > 80 and not metrics["kept_pruned_weights"]
    assert metrics["baseline_test_accuracy"] == pruned["before"]["test_accuracy"]
    assert metrics["params"] == pruned["params"] and metrics["macs"] == pruned["macs"]
    assert metrics["device"] == "cpu" and metrics["label_smoothing"] == tiny_params.finetune.label_smoothing
    assert metrics["converged"] in (True, False) and metrics["val_gain_last_20pct"] is not None

    model, config, info = load_checkpoint(paths.checkpoint("finetuned"))
    assert count_params(model) == pruned["params"]
    assert info["recipe"]["kd"] is True and info["recipe"]["alpha"] == tiny_params.finetune.alpha
    assert config["shapes"] == load_checkpoint(paths.checkpoint("pruned"))[1]["shapes"]
    assert json.loads(paths.metrics("finetune").read_text())["val_accuracy"] == metrics["val_accuracy"]
    curve = paths.live("finetune") / "plots" / "metrics" / "val" / "accuracy.tsv"
    assert len(curve.read_text().strip().splitlines()) == 1 + 3  # header + one row per epoch


def test_finetune_keeps_the_zeros_of_unstructured_pruning(tiny_project, tiny_params):
    tiny_params.train.threads = 1
    tiny_params.prune.mode = "unstructured"
    tiny_params.prune.ratio = 0.6
    tiny_params.finetune.kd = False
    tiny_params.finetune.epochs = 1
    paths = Paths(tiny_project)
    prune.run(tiny_params, paths)
    pruned, _, _ = load_checkpoint(paths.checkpoint("pruned"))
    metrics = finetune.run(tiny_params, paths)

    model, _, info = load_checkpoint(paths.checkpoint("finetuned"))
    assert metrics["sparsity_kept"] is True and info["mode"] == "unstructured"
    assert count_nonzero(model) <= count_nonzero(pruned) < 0.5 * count_params(model)
    for (name, w0), w1 in zip(pruned.state_dict().items(), model.state_dict().values()):
        if name.endswith("weight") and w0.dim() > 1:
            assert torch.all(w1[w0 == 0] == 0), name
    assert metrics["kd"] is False and "alpha" not in metrics
