"""Weight clustering (k-means weight sharing): every large conv/linear weight tensor keeps at most
`cluster.n_clusters` distinct values, which is what an entropy coder or palettised format can exploit.

Order: fold BatchNorm into the preceding conv (so the folded weights are what gets clustered), cluster each
layer with 1-D k-means (k-means++ init), then optionally fine-tune with assignments fixed: after every optimizer
step each weight is replaced by the mean of its cluster, which is SGD on the centroids. Exact zeros (from
unstructured pruning) form their own cluster pinned at 0, so sparsity survives.

Reads models/finetuned.pt, data/prepared; writes models/clustered.pt, reports/cluster_layers.md,
metrics/cluster.json. With `cluster.enabled: false` models/clustered.pt is a copy of models/finetuned.pt.
"""
from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeopt.errors import StageError
from edgeopt.io import atomic_write_text
from edgeopt.models import _set_module, save_checkpoint
from edgeopt.params import Params
from edgeopt.paths import Paths
from edgeopt.stage import stage, stage_main
from edgeopt.stats import WEIGHTED, model_stats, unique_weights
from edgeopt.training import StageStart, accuracies, fit, fit_options, start_from

MAX_FIT_SAMPLES = 100_000  # k-means is fitted on a seeded sample of a large layer; every weight is then assigned


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, bn) module names where the BN reads only that conv's output, found on the torch.fx graph."""
    from torch import fx

    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as exc:  # data-dependent control flow in a custom model
        raise StageError(f"cannot trace the model to find conv->BatchNorm pairs ({type(exc).__name__}: "
                         f"{str(exc)[:200]}); set cluster.fold_bn: false") from None
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0] if node.args else None
        if (isinstance(src, fx.Node) and src.op == "call_module" and isinstance(modules.get(src.target), nn.Conv2d)
                and len(src.users) == 1 and calls[src.target] == 1 and calls[node.target] == 1
                and modules[node.target].track_running_stats):
            pairs.append((src.target, node.target))
    return pairs


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> list[tuple[str, str]]:
    """Fold each BN into its conv (the conv gains a bias, the BN becomes nn.Identity), in place, eval semantics."""
    pairs = conv_bn_pairs(model)
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        conv.weight.copy_(conv.weight.double() * scale.view(-1, 1, 1, 1))
        conv.bias = nn.Parameter(((bias - bn.running_mean.double()) * scale + bn.bias.double()).float())
        _set_module(model, bn_name, nn.Identity())
    return pairs


@dataclass
class ClusteredLayer:
    weight: nn.Parameter
    assignments: torch.Tensor  # cluster index of every weight (flattened)
    clusters: int
    zero_cluster: int          # index of the cluster pinned at 0, or -1


def kmeans_1d(values: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Sorted k-means++ centroids of 1-D values (scikit-learn), fitted on at most MAX_FIT_SAMPLES values."""
    from sklearn.cluster import KMeans

    if len(values) > MAX_FIT_SAMPLES:
        values = np.random.default_rng(seed).choice(values, MAX_FIT_SAMPLES, replace=False)
    k = min(k, len(np.unique(values)))
    km = KMeans(n_clusters=k, init="k-means++", n_init=1, random_state=seed).fit(values.reshape(-1, 1))
    return np.sort(km.cluster_centers_.ravel())


@torch.no_grad()
def cluster_weight(weight: nn.Parameter, n_clusters: int, seed: int) -> ClusteredLayer:
    """Replace the weight by its nearest centroid, centroids being the exact means of their members."""
    flat = weight.detach().reshape(-1)
    zeros = flat == 0
    keep_zero = bool(zeros.any()) and not bool(zeros.all())
    values = flat[~zeros] if keep_zero else flat
    centroids = torch.from_numpy(kmeans_1d(values.double().numpy(), n_clusters - keep_zero, seed))
    assign = torch.bucketize(flat.double(), (centroids[1:] + centroids[:-1]) / 2)
    if keep_zero:
        assign = torch.where(zeros, len(centroids), assign)
    used = torch.bincount(assign) > 0  # drop clusters left empty, keep the order
    assign = (torch.cumsum(used, 0) - 1)[assign]
    layer = ClusteredLayer(weight, assign, int(assign.max()) + 1, int(assign[zeros].max()) if keep_zero else -1)
    project(layer)
    return layer


@torch.no_grad()
def project(layer: ClusteredLayer) -> None:
    """Set every weight to the mean of its cluster (the zero cluster stays at 0).

    Assignments index the weight in logical (NCHW) order: reshape/copy_ follow that order whatever the memory
    format training uses (channels_last), and the assignments follow the weight to its device once."""
    weight = layer.weight.data
    if layer.assignments.device != weight.device:
        layer.assignments = layer.assignments.to(weight.device)
    sums = torch.zeros(layer.clusters, dtype=torch.float64, device=weight.device).index_add_(
        0, layer.assignments, weight.reshape(-1).double())
    means = sums / torch.bincount(layer.assignments, minlength=layer.clusters).clamp_min(1)
    if layer.zero_cluster >= 0:
        means[layer.zero_cluster] = 0.0
    weight.copy_(means.float()[layer.assignments].view(weight.shape))


def cluster_model(model: nn.Module, n_clusters: int, min_weights: int, seed: int
                  ) -> tuple[dict[str, ClusteredLayer], dict[str, str]]:
    """Cluster every conv/linear weight with >= min_weights weights; returns (clustered, skipped: reason)."""
    clustered, skipped = {}, {}
    for name, m in model.named_modules():
        if not isinstance(m, WEIGHTED):
            continue
        if m.weight.numel() < min_weights:
            skipped[name] = f"< {min_weights} weights"
        elif torch.unique(m.weight.detach()).numel() <= n_clusters:
            skipped[name] = f"already <= {n_clusters} values"
        else:
            clustered[name] = cluster_weight(m.weight, n_clusters, seed)
    return clustered, skipped


def layers_markdown(before: dict[str, int], after: dict[str, int], sizes: dict[str, int],
                    clustered: dict[str, ClusteredLayer], skipped: dict[str, str], folded: list[tuple[str, str]],
                    n_clusters: int) -> str:
    lines = [f"# Weight clustering: at most {n_clusters} values per layer", "",
             "| layer | weights | unique values before | unique values after | note |", "|---|---|---|---|---|"]
    for name in before:
        note = skipped.get(name, "clustered" + (", zeros kept" if name in clustered
                                                 and clustered[name].zero_cluster >= 0 else ""))
        lines.append(f"| {name} | {sizes[name]} | {before[name]} | {after[name]} | {note} |")
    if folded:
        lines += ["", f"BatchNorm folded into the preceding conv first ({len(folded)} pairs): "
                  + ", ".join(f"{b} -> {c}" for c, b in folded)]
    return "\n".join(lines) + "\n"


def _disabled(start: StageStart, paths: Paths) -> dict[str, Any]:
    model, splits = start.model, start.splits
    out = paths.checkpoint("clustered")
    save_checkpoint(out, model, start.config, {"stage": "cluster", "enabled": False, "source": "finetuned"})
    note = "clustering disabled (cluster.enabled: false): models/clustered.pt is a copy of models/finetuned.pt"
    atomic_write_text(paths.report("cluster_layers.md"), f"# Weight clustering\n\n{note}\n")
    stats = model_stats(model, start.shape, out)
    return {"enabled": False, "note": note, **accuracies(model, splits), "params": stats["params"],
            "macs": stats["macs"], "unique_weights": stats["unique_weights"], "after": stats}


@stage("cluster")
def run(params: Params, paths: Paths) -> dict:
    cfg = params.cluster
    start = start_from(params, paths, "finetuned")
    if not cfg.enabled:
        return _disabled(start, paths)
    splits, source, model, config, shape = start.splits, start.source, start.model, start.config, start.shape

    before = {**model_stats(model, shape, source), **accuracies(model, splits)}
    folded = fold_batchnorm(model) if cfg.fold_bn else []
    folded_acc = accuracies(model, splits)
    unique_before = unique_weights(model)
    clustered, skipped = cluster_model(model, cfg.n_clusters, cfg.min_weights, params.seed)
    clustered_acc = accuracies(model, splits)

    tuned: dict[str, Any] = {"finetune_epochs": cfg.finetune_epochs}
    if cfg.finetune_epochs and clustered:
        clustered_weights = copy.deepcopy(model.state_dict())
        result = fit(model, splits, params.finetune, seed=params.seed, **fit_options(params.train),
                     epochs=cfg.finetune_epochs, lr=cfg.lr, desc="cluster-finetune",
                     after_step=lambda _m: [project(layer) for layer in clustered.values()])
        kept = result.best_val_accuracy < clustered_acc["val_accuracy"]
        if kept:  # no epoch beat the freshly clustered weights on validation
            model.load_state_dict(clustered_weights)
        tuned.update(best_epoch=result.best_epoch, kept_clustered_weights=kept, **result.summary(),
                     history=result.history)

    unique_after = unique_weights(model)
    worst = max((unique_after[n] for n in clustered), default=0)
    if worst > cfg.n_clusters:  # the invariant every consumer of clustered.pt relies on
        raise StageError(f"internal error: a clustered layer has {worst} > {cfg.n_clusters} unique values")
    out = paths.checkpoint("clustered")
    save_checkpoint(out, model, config, {"stage": "cluster", "enabled": True, "source": "finetuned",
                                         "n_clusters": cfg.n_clusters, "fold_bn": cfg.fold_bn,
                                         "clustered_layers": sorted(clustered), "pruning_mode": start.info.get("mode")})
    sizes = {n: m.weight.numel() for n, m in model.named_modules() if isinstance(m, WEIGHTED)}
    atomic_write_text(paths.report("cluster_layers.md"), layers_markdown(
        unique_before, unique_after, sizes, clustered, skipped, folded, cfg.n_clusters))
    after = {**model_stats(model, shape, out), **accuracies(model, splits)}
    return {"enabled": True, "n_clusters": cfg.n_clusters, "fold_bn": cfg.fold_bn, "folded_bn": len(folded),
            "layers_clustered": len(clustered), "layers_skipped": len(skipped),
            "max_unique_per_clustered_layer": worst,
            "val_accuracy": after["val_accuracy"], "test_accuracy": after["test_accuracy"],
            "accuracy_change_test_points": round(after["test_accuracy"] - before["test_accuracy"], 3),
            "val_accuracy_after_fold": folded_acc["val_accuracy"],
            "val_accuracy_after_clustering": clustered_acc["val_accuracy"],
            "test_accuracy_after_clustering": clustered_acc["test_accuracy"],
            "unique_weights_before": before["unique_weights"], "unique_weights": after["unique_weights"],
            "gzip_bytes_before": before["file_gzip_bytes"], "gzip_bytes": after["file_gzip_bytes"],
            "gzip_ratio": round(after["file_gzip_bytes"] / before["file_gzip_bytes"], 4),
            "params": after["params"], "macs": after["macs"], **tuned,
            "layers": {n: {"weights": sizes[n], "unique_before": unique_before[n], "unique_after": unique_after[n],
                           "clustered": n in clustered} for n in sizes},
            "before": before, "after": after}


if __name__ == "__main__":  # what dvc.yaml runs: python -m stages.<name>
    sys.exit(stage_main(run))
