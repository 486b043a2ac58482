"""Model zoo and checkpoints.

A checkpoint holds a state dict plus the architecture config, including the shape of every conv, BatchNorm
and linear layer. A pruned, narrowed or BN-folded model is rebuilt from that config alone (build the zoo
architecture, then resize layers to the recorded shapes), so reloading needs no pruning code and no pickled
objects: `torch.load(weights_only=True)` only.
"""
from __future__ import annotations

import copy
import io
import math
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeopt.errors import CheckpointError
from edgeopt.io import atomic_write_bytes

FORMAT = "edgeopt-checkpoint/1"
ARCHS = ("small_cnn", "resnet18", "resnet34", "vgg16_bn", "mobilenet_v2")


class SmallCNN(nn.Module):
    """A compact VGG-style CNN for small inputs (the default for the digits data set)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths: tuple[int, ...] = (16, 32, 64)):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                       nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            c = w
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def _zoo(arch: str, num_classes: int, in_channels: int, small_input: bool, width: float) -> nn.Module:
    if arch == "small_cnn":
        return SmallCNN(in_channels, num_classes)
    import torchvision  # imported lazily: it costs seconds and the default model does not need it

    if arch in ("resnet18", "resnet34"):
        m = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
        if small_input:
            m.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
            m.maxpool = nn.Identity()
        elif in_channels != 3:
            m.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        return m
    if arch == "vgg16_bn":
        m = torchvision.models.vgg16_bn(weights=None, num_classes=num_classes)
        if in_channels != 3:
            m.features[0] = nn.Conv2d(in_channels, 64, 3, padding=1)
        if small_input:
            m.avgpool = nn.AdaptiveAvgPool2d(1)
            m.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(512, num_classes))
        return m
    if arch == "mobilenet_v2":
        m = torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes, width_mult=width)
        first = m.features[0][0]
        if in_channels != 3 or small_input:
            m.features[0][0] = nn.Conv2d(in_channels, first.out_channels, 3, 1 if small_input else 2, 1, bias=False)
        if small_input:  # CIFAR-style: keep resolution in the first inverted-residual stage too
            m.features[2].conv[1][0].stride = (1, 1)
        return m
    raise CheckpointError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")


def layer_shapes(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Shapes of every conv / BatchNorm / linear layer (and layers folded away), by module name."""
    shapes: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            shapes[name] = {"type": "conv", "in": m.in_channels, "out": m.out_channels, "groups": m.groups,
                            "bias": m.bias is not None}
        elif isinstance(m, nn.BatchNorm2d):
            shapes[name] = {"type": "bn", "features": m.num_features}
        elif isinstance(m, nn.Linear):
            shapes[name] = {"type": "linear", "in": m.in_features, "out": m.out_features, "bias": m.bias is not None}
        elif isinstance(m, nn.Identity) and name:
            shapes[name] = {"type": "identity"}
    return shapes


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if attr.isdigit() and isinstance(parent, nn.Sequential):
        parent[int(attr)] = new
    else:
        setattr(parent, attr, new)


def apply_shapes(model: nn.Module, shapes: dict[str, dict[str, Any]]) -> nn.Module:
    """Resize layers in place to the recorded shapes (new, uninitialised weights where a shape changes)."""
    current = dict(model.named_modules())
    for name, s in shapes.items():
        m = current.get(name)
        if m is None:
            raise CheckpointError(f"layer {name!r} of the checkpoint does not exist in the architecture")
        if s["type"] == "identity":
            if not isinstance(m, nn.Identity):
                _set_module(model, name, nn.Identity())
        elif s["type"] == "conv":
            if (m.in_channels, m.out_channels, m.groups, m.bias is not None) != (s["in"], s["out"], s["groups"], s["bias"]):
                _set_module(model, name, nn.Conv2d(s["in"], s["out"], m.kernel_size, m.stride, m.padding,
                                                   m.dilation, s["groups"], s["bias"]))
        elif s["type"] == "bn":
            if not isinstance(m, nn.BatchNorm2d) or m.num_features != s["features"]:
                _set_module(model, name, nn.BatchNorm2d(s["features"]))
        elif s["type"] == "linear":
            if (m.in_features, m.out_features, m.bias is not None) != (s["in"], s["out"], s["bias"]):
                _set_module(model, name, nn.Linear(s["in"], s["out"], s["bias"]))
    return model


def width_shapes(model: nn.Module, width: float, in_channels: int) -> dict[str, dict[str, Any]]:
    """Shapes of the same network with every internal channel count scaled by `width`.

    Scaling is a function of the original count only, so layers joined by residual adds stay consistent.
    """
    def scale(c: int) -> int:
        return c if c == in_channels else max(4, int(math.ceil(c * width / 4) * 4))

    shapes = layer_shapes(model)
    for s in shapes.values():
        if s["type"] == "conv":
            depthwise = s["groups"] == s["in"] == s["out"] and s["groups"] > 1
            s["in"], s["out"] = scale(s["in"]), scale(s["out"])
            s["groups"] = s["out"] if depthwise else s["groups"]
        elif s["type"] == "bn":
            s["features"] = scale(s["features"])
        elif s["type"] == "linear":
            s["in"] = scale(s["in"])
    return shapes


def model_config(arch: str, num_classes: int, in_channels: int, width: float = 1.0, small_input: bool = True,
                 image_size: int = 32) -> dict[str, Any]:
    if arch not in ARCHS:
        raise CheckpointError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    return {"arch": arch, "num_classes": int(num_classes), "in_channels": int(in_channels), "width": float(width),
            "small_input": bool(small_input), "image_size": int(image_size), "shapes": None}


def config_for(arch: str, width: float, small_input: bool, meta: dict) -> dict[str, Any]:
    """Architecture config for the prepared data (classes, channels, image size come from meta.json)."""
    return model_config(arch, meta["num_classes"], meta["channels"], width, small_input, meta["image_size"])


def build_model(config: dict[str, Any]) -> nn.Module:
    """A fresh model for a config (shapes applied when the config records them)."""
    m = _zoo(config["arch"], config["num_classes"], config["in_channels"], config["small_input"], config["width"])
    if config.get("shapes"):
        apply_shapes(m, config["shapes"])
    elif config["width"] != 1.0 and config["arch"] != "mobilenet_v2":
        apply_shapes(m, width_shapes(m, config["width"], config["in_channels"]))
    return m


def config_of(model: nn.Module, base: dict[str, Any]) -> dict[str, Any]:
    """The base config with the model's current layer shapes recorded (after pruning, folding, ...)."""
    cfg = copy.deepcopy(base)
    cfg["shapes"] = layer_shapes(model)
    return cfg


def save_checkpoint(path: str | Path, model: nn.Module, config: dict[str, Any],
                    info: dict[str, Any] | None = None) -> Path:
    """Atomically write state dict + config (+ JSON-able info)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "config": config_of(model, config),
               "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
               "info": info or {}}
    # Serialise in memory: torch.save names the zip records after the file it writes, so saving to a temp file
    # named per process made identical weights hash differently on every run (and DVC rerun every later stage).
    buf = io.BytesIO()
    torch.save(payload, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, expect_arch: str | None = None,
                    meta: dict[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Load (model in eval mode, config, info). Never unpickles arbitrary objects.

    With `meta` (data/prepared/meta.json), a model made for other data (channels, classes, image size) is refused.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found; run the stage that writes it first")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise next to the refusal below
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, foreign pickle, non-torch file
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a loadable edgeopt checkpoint (truncated, corrupt or contains "
                              f"objects other than tensors, which are refused): {first}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an edgeopt checkpoint (expected format {FORMAT!r}); "
                              "checkpoints come from `edgeopt train` and later stages")
    config, state = payload.get("config"), payload.get("state_dict")
    if not isinstance(config, dict) or not isinstance(state, dict):
        raise CheckpointError(f"{path}: edgeopt checkpoint without an architecture config or a state dict "
                              "(damaged or hand-made); rerun the stage that writes it")
    if expect_arch and config.get("arch") != expect_arch:
        raise CheckpointError(f"{path}: checkpoint is a {config.get('arch')!r} model, expected {expect_arch!r}")
    try:
        model = build_model(config)
    except (KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: architecture config is incomplete ({exc})") from None
    except CheckpointError as exc:  # unknown architecture, a recorded layer the architecture lacks
        raise CheckpointError(f"{path}: {exc}") from None
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    bad_shapes = [k for k, v in state.items()
                  if k in own and (not isinstance(v, torch.Tensor) or own[k].shape != v.shape)]
    if missing or unexpected or bad_shapes:
        raise CheckpointError(
            f"{path}: weights do not match architecture {config.get('arch')!r}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatch {bad_shapes[:5]}")
    if meta is not None:
        wrong = [f"{k} {config.get(k)} (data: {meta.get(m)})" for k, m in
                 (("in_channels", "channels"), ("num_classes", "num_classes"), ("image_size", "image_size"))
                 if meta.get(m) is not None and config.get(k) != meta.get(m)]
        if wrong:
            raise CheckpointError(f"{path}: made for other data than data/prepared: {', '.join(wrong)}; "
                                  "retrain it on the prepared data (`dvc repro`)")
    model.load_state_dict(state)
    model.eval()
    return model, config, payload.get("info", {})
