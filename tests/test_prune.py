"""Prune stage: structured pruning really shrinks zoo models consistently, protection, targets, unstructured mode."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from edgeopt.models import build_model, load_checkpoint, model_config, save_checkpoint
from edgeopt.params import Prune
from edgeopt.paths import Paths
from edgeopt.stage import StageError
from edgeopt.stats import count_macs, count_nonzero, count_params
from stages import prune
from stages.prune import layer_rows, prune_structured, resolve_protected, search_ratio


pytestmark = pytest.mark.usefixtures("one_thread")


def _random_model(arch: str, size: int = 16):
    torch.manual_seed(0)
    cfg = model_config(arch, 10, 1, 1.0, True, size)
    model = build_model(cfg).eval()
    with torch.no_grad():  # non-trivial BN scales so bn_scale importance has something to rank
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.2, 1.5)
    return model, cfg, torch.randn(2, 1, size, size)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2",
                                  pytest.param("vgg16_bn", marks=pytest.mark.slow),
                                  pytest.param("resnet34", marks=pytest.mark.slow)])
def test_structured_zoo_model_is_smaller_runs_and_reloads(arch, tmp_path):
    size = 32 if arch == "vgg16_bn" else 16  # five max-pools
    model, cfg, x = _random_model(arch, size)
    before = layer_rows(model)
    macs0, params0 = count_macs(model, (1, size, size)), count_params(model)
    protected = resolve_protected(model, ["first_conv", "classifier"])
    prune_structured(model, x[:1], Prune(ratio=0.5), 0.5, protected, seed=0)
    after = layer_rows(model)

    assert sum(r["out"] for r in after.values()) < 0.75 * sum(r["out"] for r in before.values())
    assert count_macs(model, (1, size, size)) < 0.5 * macs0
    assert count_params(model) < 0.5 * params0
    for name in protected:  # protected layers keep their filters (output channels)
        assert after[name]["out"] == before[name]["out"]
    for name, r in after.items():  # depthwise convs stay depthwise
        if before[name]["groups"] > 1:
            assert r["groups"] == r["in"] == r["out"]
    out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()

    save_checkpoint(tmp_path / "pruned.pt", model, cfg)
    reloaded, _, _ = load_checkpoint(tmp_path / "pruned.pt")
    assert torch.equal(reloaded(x), model(x))


def test_protect_by_module_name_keeps_the_coupled_channels():
    model, _, x = _random_model("resnet18")
    before = layer_rows(model)
    protected = resolve_protected(model, ["layer3.0.conv1"])  # classifier not protected: its inputs may shrink
    prune_structured(model, x[:1], Prune(ratio=0.5), 0.5, protected, seed=0)
    after = layer_rows(model)
    assert after["layer3.0.conv1"]["out"] == before["layer3.0.conv1"]["out"] == 256
    assert after["layer3.0.conv1"]["in"] < 128  # its input channels follow the (pruned) layer2 residual stream
    assert after["conv1"]["out"] == 32 and after["fc"]["in"] == 256 and after["fc"]["out"] == 10


def test_unknown_protected_layer_is_named_in_the_error():
    model, _, _ = _random_model("small_cnn")
    with pytest.raises(StageError, match="'features.99'.*first_conv"):
        resolve_protected(model, ["features.99"])


@pytest.mark.parametrize("target", ["macs", "params"])
def test_target_reduction_is_reached_closely(target):
    model, _, x = _random_model("small_cnn")
    measure = (lambda m: count_macs(m, (1, 16, 16))) if target == "macs" else count_params
    base = measure(model)
    cfg = Prune(target=target, target_reduction=0.6)
    protected = resolve_protected(model, cfg.protect)
    ratio = search_ratio(model, x[:1], cfg, protected, seed=0)
    prune_structured(model, x[:1], cfg, ratio, protected, seed=0)
    achieved = 1 - measure(model) / base
    assert 0.6 <= achieved < 0.66


def test_unreachable_target_says_what_to_do():
    model, _, x = _random_model("small_cnn")
    cfg = Prune(target="macs", target_reduction=0.99)
    with pytest.raises(StageError, match="target_reduction=0.99.*not reachable"):
        search_ratio(model, x[:1], cfg, resolve_protected(model, cfg.protect), seed=0)


@pytest.mark.parametrize("importance,global_pruning,steps", [("l2", True, 1), ("bn_scale", False, 2),
                                                            ("random", False, 1)])
def test_importance_criteria_and_global_iterative_pruning(importance, global_pruning, steps):
    model, _, x = _random_model("small_cnn")
    params0 = count_params(model)
    cfg = Prune(importance=importance, global_pruning=global_pruning, iterative_steps=steps)
    prune_structured(model, x[:1], cfg, 0.5, resolve_protected(model, cfg.protect), seed=0)
    assert 0.15 * params0 < count_params(model) < 0.6 * params0
    assert model(x).shape == (2, 10)


def test_stage_structured_on_tiny_project(tiny_project, tiny_params):
    tiny_params.train.threads = 1
    paths = Paths(tiny_project)
    metrics = prune.run(tiny_params, paths)

    model, cfg, info = load_checkpoint(paths.checkpoint("pruned"))
    assert info["mode"] == "structured" and info["ratio"] == 0.5
    assert metrics["params"] == count_params(model) < metrics["before"]["params"]
    assert metrics["macs"] == count_macs(model, (1, 16, 16))
    assert metrics["macs_reduction"] > 0.5 and metrics["params_reduction"] > 0.5
    assert metrics["after"]["file_bytes"] < 0.6 * metrics["before"]["file_bytes"]
    assert metrics["protected_layers"] == ["features.0", "classifier"]
    base = layer_rows(load_checkpoint(paths.checkpoint("baseline"))[0])
    after = layer_rows(model)
    for name in ("features.0", "classifier"):  # protected: filters (outputs) kept
        assert after[name]["out"] == base[name]["out"]
    assert after["classifier"]["in"] == base["classifier"]["in"] // 2  # follows the pruned last conv
    for name in ("features.3", "features.7", "features.10", "features.14", "features.17"):
        assert after[name]["out"] == base[name]["out"] // 2
    assert metrics["before"]["test_accuracy"] > 80
    assert 0 <= metrics["test_accuracy"] <= 100
    assert json.loads(paths.metrics("prune").read_text())["macs"] == metrics["macs"]
    table = paths.report("prune_layers.md").read_text()
    c3, c7 = base["features.3"]["out"], base["features.7"]["out"]
    assert f"| features.7 | conv | {c3} -> {c3 // 2} | {c7} -> {c7 // 2} |" in table
    c = base["classifier"]["in"]
    assert f"| classifier | linear | {c} -> {c // 2} | 10 -> 10 | " in table and "protected |" in table


def test_stage_unstructured_reports_nonzeros_honestly(tiny_project, tiny_params):
    tiny_params.train.threads = 1
    tiny_params.prune.mode = "unstructured"
    tiny_params.prune.global_pruning = True
    tiny_params.prune.ratio = 0.7
    paths = Paths(tiny_project)
    metrics = prune.run(tiny_params, paths)

    before, after = metrics["before"], metrics["after"]
    assert after["params"] == before["params"] and after["macs"] == before["macs"]
    assert after["nonzero_params"] < 0.4 * before["nonzero_params"]
    model, _, info = load_checkpoint(paths.checkpoint("pruned"))
    assert info["mode"] == "unstructured"
    assert count_nonzero(model) == after["nonzero_params"]
    assert not any("weight_orig" in k or "weight_mask" in k for k in model.state_dict())  # made permanent
    assert torch.count_nonzero(model.features[0].weight) == model.features[0].weight.numel()  # protected


def test_unstructured_rejects_a_macs_target(tiny_project, tiny_params):
    tiny_params.prune.mode = "unstructured"
    tiny_params.prune.target = "macs"
    with pytest.raises(StageError, match="target=macs needs prune.mode=structured"):
        prune.run(tiny_params, Paths(tiny_project))
    assert not Paths(tiny_project).checkpoint("pruned").exists()


@pytest.mark.parametrize("round_to,expect", [(1, {11, 22, 44, 89}), (8, {8, 24, 48, 88})])
def test_pruned_channels_are_block_aligned(round_to, expect):
    """ResNet-18 w0.5 (32/64/128/256 channels), 65 % pruned: kept channels are the nearest multiple of round_to
    (8 -> 11.2 ~ 8, 22.4 ~ 24, 44.8 ~ 48, 89.6 ~ 88); round_to=1 is Torch-Pruning's own count (floor)."""
    torch.manual_seed(0)
    model = build_model(model_config("resnet18", 10, 3, 0.5, True, 32)).eval()
    prune_structured(model, torch.randn(1, 3, 32, 32), Prune(ratio=0.65, round_to=round_to, protect=[]), 0.65,
                     [], seed=0)
    convs = {r["out"] for name, r in layer_rows(model).items() if name != "fc"}
    assert convs == expect
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
