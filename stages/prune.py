"""Prune the baseline: structured filter pruning with Torch-Pruning's dependency graph, or unstructured
magnitude pruning with torch.nn.utils.prune.

Structured pruning removes whole channels; the dependency graph keeps residual adds, BatchNorm, depthwise
convs and the classifier consistent, so the model really gets smaller (params, MACs, file size). Unstructured
pruning only zeroes weights: non-zero parameters drop, dense size and MACs do not (reported as such).

Protection (Torch-Pruning's `ignored_layers`, the meaning of the L1-filter-pruning paper): a protected layer keeps
all its filters (output channels), and so does every layer coupled to them (e.g. the residual stream a ResNet stem
feeds). Its *input* channels still follow the layers that feed it, so protecting the classifier keeps the classes
while the last conv is pruned. The classifier's outputs (the classes) are never pruned, protected or not.

Reads models/baseline.pt, data/prepared; writes models/pruned.pt, reports/prune_layers.md, metrics/prune.json.
"""
from __future__ import annotations

import copy
import sys
import warnings
from typing import Any

import torch
from torch import nn

from edgeopt.errors import StageError
from edgeopt.io import atomic_write_text
from edgeopt.models import save_checkpoint
from edgeopt.params import Params, Prune
from edgeopt.paths import Paths
from edgeopt.stage import stage, stage_main
from edgeopt.stats import WEIGHTED, count_macs, count_params, model_stats
from edgeopt.training import accuracies, start_from

MAX_RATIO = 0.95        # no channel group is cut below 5 % of its width (and never to a single channel)
SEARCH_TOLERANCE = 0.005  # ratio precision of the MACs/params target search


def weighted_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, WEIGHTED)}


def first_conv_name(model: nn.Module) -> str:
    """The conv that reads the image: the first conv in module order for every zoo architecture."""
    return next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))


def classifier_name(model: nn.Module) -> str:
    """The layer producing the logits: the last linear in module order for every zoo architecture."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]


def resolve_protected(model: nn.Module, protect: list[str]) -> list[str]:
    """Names of the conv/linear layers covered by `prune.protect` (aliases and containers expanded)."""
    layers = weighted_layers(model)
    modules = dict(model.named_modules())
    out: list[str] = []
    for entry in protect:
        name = {"first_conv": first_conv_name(model), "classifier": classifier_name(model)}.get(entry, entry)
        if name not in modules or not name:
            sample = ", ".join(list(layers)[:8])
            raise StageError(f"prune.protect: no module named {entry!r} in this model; use first_conv, "
                             f"classifier or module names such as {sample}")
        inside = [n for n in layers if n == name or n.startswith(name + ".")]
        if not inside:
            raise StageError(f"prune.protect: module {entry!r} contains no conv or linear layer to protect")
        out += [n for n in inside if n not in out]
    return out


def make_importance(kind: str):
    import torch_pruning as tp

    return {"l1": lambda: tp.importance.MagnitudeImportance(p=1),
            "l2": lambda: tp.importance.MagnitudeImportance(p=2),
            "bn_scale": tp.importance.BNScaleImportance,
            "random": tp.importance.RandomImportance}[kind]()


def _ignored_layers(model: nn.Module, protected: list[str]) -> list[nn.Module]:
    """Layers whose output channels must not be pruned: the classifier (the label contract) and `protected`."""
    names = [classifier_name(model)] + [n for n in protected if n != classifier_name(model)]
    return [model.get_submodule(n) for n in names]


def _pruner_class():
    import torch_pruning as tp

    class BlockAlignedPruner(tp.pruner.BasePruner):
        """A pruned layer keeps a multiple of `round_to` channels: the nearest multiple, never below one block.

        Torch-Pruning rounds the kept count *down* and, when that reaches zero, silently leaves the layer
        unpruned; both distort the requested ratio. Measured on ResNet-18 w0.5 with 65 % pruned: odd channel
        counts ran OpenVINO INT8 at 0.60 ms, multiples of 8 at 0.26 ms (the unpruned model: 0.54 ms).
        """

        def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
            keep = current_channels - n_pruned
            keep = min(current_channels, max(round_to, round_to * round(keep / round_to)))
            return current_channels - keep

    return BlockAlignedPruner


def prune_structured(model: nn.Module, example: torch.Tensor, cfg: Prune, ratio: float, protected: list[str],
                     seed: int) -> None:
    """Remove `ratio` of the channels (per group, or globally ranked) in `cfg.iterative_steps` steps, in place."""
    torch.manual_seed(seed)  # random importance; also makes the target search repeatable
    model.eval()  # tracing must not update BatchNorm statistics
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Torch-Pruning warns about unwrapped parameters it does not need
        pruner = _pruner_class()(
            model, example, importance=make_importance(cfg.importance), global_pruning=cfg.global_pruning,
            pruning_ratio=ratio, max_pruning_ratio=max(MAX_RATIO, ratio), iterative_steps=cfg.iterative_steps,
            round_to=cfg.round_to if cfg.round_to > 1 else None, ignored_layers=_ignored_layers(model, protected))
        for _ in range(cfg.iterative_steps):
            pruner.step()


def search_ratio(model: nn.Module, example: torch.Tensor, cfg: Prune, protected: list[str], seed: int) -> float:
    """Smallest channel ratio that removes at least `target_reduction` of the MACs or params (bisection)."""
    shape = tuple(example.shape[1:])
    measure = (lambda m: count_macs(m, shape)) if cfg.target == "macs" else count_params
    base = measure(model)

    def reduction(ratio: float) -> float:
        trial = copy.deepcopy(model)
        prune_structured(trial, example, cfg, ratio, protected, seed)
        return 1.0 - measure(trial) / base

    best = reduction(MAX_RATIO)
    if best < cfg.target_reduction:
        raise StageError(f"prune.target_reduction={cfg.target_reduction} of {cfg.target} is not reachable: "
                         f"pruning {MAX_RATIO:.0%} of the prunable channels removes only {best:.1%} with "
                         f"prune.protect={cfg.protect}; lower prune.target_reduction or protect fewer layers")
    lo, hi = 0.0, MAX_RATIO
    while hi - lo > SEARCH_TOLERANCE:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if reduction(mid) >= cfg.target_reduction else (mid, hi)
    return hi


def prune_unstructured(model: nn.Module, cfg: Prune, protected: list[str]) -> float:
    """Zero the smallest weights of every unprotected conv/linear, made permanent; returns the fraction zeroed."""
    from torch.nn.utils import prune

    if cfg.target == "macs":
        raise StageError("prune.target=macs needs prune.mode=structured: unstructured pruning zeroes weights "
                         "but dense MACs stay the same; use target: ratio or params")
    if cfg.importance == "bn_scale":
        raise StageError("prune.importance=bn_scale ranks channels, not single weights; with "
                         "prune.mode=unstructured use l1, l2 or random")
    targets = [(m, "weight") for n, m in weighted_layers(model).items() if n not in protected]
    prunable = sum(m.weight.numel() for m, _ in targets)
    amount = cfg.ratio
    if cfg.target == "params":
        amount = cfg.target_reduction * count_params(model) / max(prunable, 1)
        if amount >= 1:
            raise StageError(f"prune.target_reduction={cfg.target_reduction} of params is not reachable by "
                             f"zeroing the {prunable} unprotected weights; lower it or protect fewer layers")
    # For single weights L1 and L2 magnitude give the same ranking.
    method = prune.RandomUnstructured if cfg.importance == "random" else prune.L1Unstructured
    if cfg.global_pruning:
        prune.global_unstructured(targets, pruning_method=method, amount=amount)
    else:
        for module, attr in targets:
            method.apply(module, attr, amount=amount)
    for module, attr in targets:
        prune.remove(module, attr)
    return amount


def layer_rows(model: nn.Module) -> dict[str, dict[str, Any]]:
    rows = {}
    for name, m in weighted_layers(model).items():
        conv = isinstance(m, nn.Conv2d)
        rows[name] = {"type": "conv" if conv else "linear", "in": m.in_channels if conv else m.in_features,
                      "out": m.out_channels if conv else m.out_features, "groups": m.groups if conv else 1,
                      "weights": m.weight.numel(), "nonzero": int((m.weight != 0).sum())}
    return rows


def layers_markdown(before: dict, after: dict, protected: list[str], title: str, totals: dict[str, tuple]) -> str:
    lines = [f"# {title}", "", "| layer | type | in | out | weights | non-zero weights | note |",
             "|---|---|---|---|---|---|---|"]
    for name, b in before.items():
        a = after[name]
        dw = " (depthwise)" if b["groups"] > 1 and b["groups"] == b["in"] else ""
        note = "protected" if name in protected else ("pruned" if (a["in"], a["out"]) != (b["in"], b["out"])
                                                      else "")
        lines.append(f"| {name} | {b['type']}{dw} | {b['in']} -> {a['in']} | {b['out']} -> {a['out']} | "
                     f"{b['weights']} -> {a['weights']} | {b['nonzero']} -> {a['nonzero']} | {note} |")
    lines += ["", "| model | before | after |", "|---|---|---|"]
    lines += [f"| {key} | {round(b, 2)} | {round(a, 2)} |" for key, (b, a) in totals.items()]
    return "\n".join(lines) + "\n"


def reduction(before: dict, after: dict, key: str) -> float:
    return round(1.0 - after[key] / before[key], 4) if before.get(key) else 0.0


@stage("prune")
def run(params: Params, paths: Paths) -> dict:
    cfg = params.prune
    start = start_from(params, paths, "baseline")
    splits, source, model, config, shape = start.splits, start.source, start.model, start.config, start.shape
    protected = resolve_protected(model, cfg.protect)
    before = {**model_stats(model, shape, source), **accuracies(model, splits)}
    rows_before = layer_rows(model)

    done: dict[str, Any] = {"mode": cfg.mode, "importance": cfg.importance, "target": cfg.target,
                            "global_pruning": cfg.global_pruning, "round_to": cfg.round_to,
                            "iterative_steps": cfg.iterative_steps,
                            "protect": cfg.protect, "protected_layers": protected}
    if cfg.mode == "structured":
        example = torch.randn(1, *shape)
        ratio = cfg.ratio if cfg.target == "ratio" else search_ratio(model, example, cfg, protected, params.seed)
        prune_structured(model, example, cfg, ratio, protected, params.seed)
        done["ratio"] = round(ratio, 4)
    else:
        done["ratio"] = round(prune_unstructured(model, cfg, protected), 4)  # fraction of unprotected weights
    if cfg.target != "ratio":
        done["target_reduction"] = cfg.target_reduction

    out = paths.checkpoint("pruned")
    save_checkpoint(out, model, config, {"stage": "prune", **done, "source": "baseline"})
    rows_after = layer_rows(model)
    after = {**model_stats(model, shape, out), **accuracies(model, splits)}
    totals = {k: (before[k], after[k]) for k in ("params", "nonzero_params", "macs", "file_bytes",
                                                 "val_accuracy", "test_accuracy")}
    atomic_write_text(paths.report("prune_layers.md"), layers_markdown(
        rows_before, rows_after, protected,
        f"Pruning: {cfg.mode}, {cfg.importance} importance, ratio {done['ratio']}", totals))
    reductions = {k: reduction(before, after, k) for k in ("params", "nonzero_params", "macs", "file_bytes")}
    return {**done, "val_accuracy": after["val_accuracy"], "test_accuracy": after["test_accuracy"],
            "params": after["params"], "nonzero_params": after["nonzero_params"], "macs": after["macs"],
            **{f"{k}_reduction": v for k, v in reductions.items()},
            "channels_before": sum(r["out"] for r in rows_before.values()),
            "channels_after": sum(r["out"] for r in rows_after.values()),
            "before": before, "after": after}


if __name__ == "__main__":  # what dvc.yaml runs: python -m stages.<name>
    sys.exit(stage_main(run))
