"""Cluster stage: BN folding is exact for every zoo architecture, layers keep <= N_c values (also after
cluster-preserving fine-tuning), sparsity survives, the stage runs end to end and when disabled."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch import nn

from edgeopt.models import build_model, load_checkpoint, model_config, save_checkpoint
from edgeopt.paths import Paths
from edgeopt.stats import unique_weights
from stages import cluster
from stages.cluster import cluster_model, conv_bn_pairs, fold_batchnorm, project


pytestmark = pytest.mark.usefixtures("one_thread")


def _with_random_bn_stats(model: nn.Module) -> nn.Module:
    torch.manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


EXPECTED_PAIRS = {"small_cnn": 6, "resnet18": 20, "mobilenet_v2": 52, "vgg16_bn": 13, "resnet34": 36}


@pytest.mark.parametrize("arch", list(EXPECTED_PAIRS))
def test_bn_folding_preserves_outputs_and_reloads(arch, tmp_path):
    size = 32 if arch == "vgg16_bn" else 16
    cfg = model_config(arch, 10, 1, 1.0, True, size)
    model = _with_random_bn_stats(build_model(cfg))
    x = torch.randn(4, 1, size, size)
    with torch.no_grad():
        reference = model(x)
        folded = fold_batchnorm(model)
        out = model(x)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in build_model(cfg).modules())
    assert len(folded) == EXPECTED_PAIRS[arch] == n_bn  # every zoo BN follows a conv
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert torch.allclose(out, reference, atol=1e-5, rtol=1e-5), (out - reference).abs().max()

    save_checkpoint(tmp_path / "folded.pt", model, cfg)
    reloaded, config, _ = load_checkpoint(tmp_path / "folded.pt")
    conv, bn = folded[0]
    assert config["shapes"][bn] == {"type": "identity"} and config["shapes"][conv]["bias"] is True
    assert torch.equal(reloaded(x), out)


def test_bn_shared_by_a_skip_connection_is_not_folded():
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # the conv output is used twice: folding would change the sum

    assert conv_bn_pairs(Skip()) == []


def test_clustered_layers_keep_at_most_n_values_and_zeros(tmp_path):
    model = build_model(model_config("small_cnn", 10, 1, 1.0, True, 16))
    with torch.no_grad():
        model.features[3].weight[:, :4] = 0  # a sparse layer: zeros must stay exactly zero
    clustered, skipped = cluster_model(model, n_clusters=8, min_weights=300, seed=0)
    counts = unique_weights(model)
    assert skipped == {"features.0": "< 300 weights"} and counts["features.0"] == 9 * model.features[0].out_channels
    assert set(clustered) == set(counts) - {"features.0"}
    assert all(counts[n] <= 8 for n in clustered) and max(counts[n] for n in clustered) == 8
    w = model.features[3].weight
    assert torch.all(w[:, :4] == 0) and clustered["features.3"].zero_cluster >= 0

    # An optimizer step moves weights apart; projecting restores <= 8 values per layer and the zeros.
    with torch.no_grad():
        for layer in clustered.values():
            layer.weight.add_(torch.randn_like(layer.weight) * 0.01)
    for layer in clustered.values():
        project(layer)
    counts = unique_weights(model)
    assert all(counts[n] <= 8 for n in clustered) and torch.all(w[:, :4] == 0)


def test_cluster_preserving_training_moves_centroids_not_assignments(tiny_project, tiny_params):
    from edgeopt.training import Splits, fit

    model, _, _ = load_checkpoint(Paths(tiny_project).checkpoint("baseline"))
    fold_batchnorm(model)
    clustered, _ = cluster_model(model, n_clusters=4, min_weights=64, seed=0)
    start = {n: layer.weight.detach().clone() for n, layer in clustered.items()}
    fit(model, Splits.load(Paths(tiny_project).prepared), tiny_params.finetune, seed=0, epochs=1, lr=0.01,
        after_step=lambda _m: [project(layer) for layer in clustered.values()])

    for name, layer in clustered.items():
        w = layer.weight.detach().reshape(-1)
        assert torch.unique(w).numel() <= 4, name
        for c in range(layer.clusters):  # each cluster still shares one value
            assert torch.unique(w[layer.assignments == c]).numel() == 1, name
    assert any(not torch.equal(start[n], layer.weight) for n, layer in clustered.items())  # centroids trained


def _with_finetuned(project):
    paths = Paths(project)
    shutil.copy(paths.checkpoint("baseline"), paths.checkpoint("finetuned"))  # stand-in, the stage only reads it
    return paths


def test_stage_end_to_end_with_cluster_preserving_finetuning(tiny_project, tiny_params):
    tiny_params.train.threads = 1
    paths = _with_finetuned(tiny_project)
    metrics = cluster.run(tiny_params, paths)

    model, config, info = load_checkpoint(paths.checkpoint("clustered"))
    counts = unique_weights(model)
    assert info["clustered_layers"] and all(counts[n] <= 16 for n in info["clustered_layers"])
    assert metrics["max_unique_per_clustered_layer"] <= 16 and metrics["finetune_epochs"] == 1
    assert metrics["folded_bn"] == 6 and all(s["type"] != "bn" for s in config["shapes"].values())
    assert metrics["val_accuracy_after_fold"] == metrics["before"]["val_accuracy"]
    assert metrics["test_accuracy"] > 80 and abs(metrics["accuracy_change_test_points"]) < 10
    assert metrics["unique_weights"] < 0.05 * metrics["unique_weights_before"]
    assert metrics["gzip_bytes"] < 0.9 * metrics["gzip_bytes_before"]
    assert json.loads(paths.metrics("cluster").read_text())["gzip_bytes"] == metrics["gzip_bytes"]
    table = paths.report("cluster_layers.md").read_text()
    assert "| features.3 |" in table and "BatchNorm folded" in table


def test_stage_disabled_copies_the_finetuned_model(tiny_project, tiny_params):
    tiny_params.train.threads = 1
    tiny_params.quantize.source = "finetuned"
    tiny_params.cluster.enabled = False
    paths = _with_finetuned(tiny_project)
    metrics = cluster.run(tiny_params, paths)

    source, _, _ = load_checkpoint(paths.checkpoint("finetuned"))
    model, _, info = load_checkpoint(paths.checkpoint("clustered"))
    assert metrics["enabled"] is False and "copy of models/finetuned.pt" in metrics["note"]
    assert info["enabled"] is False
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), model.state_dict().values()))
    assert "disabled" in paths.report("cluster_layers.md").read_text()
