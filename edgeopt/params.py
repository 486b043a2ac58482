"""params.yaml loaded into typed, validated objects: the single source of truth for every knob."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgeopt.registry import CHANNEL_PATTERN, NAME_PATTERN

Arch = Literal["small_cnn", "resnet18", "resnet34", "vgg16_bn", "mobilenet_v2"]
Schedule = Literal["onecycle", "cosine", "step", "none"]
QuantMode = Literal["ov_int8", "ov_int8_ac", "ort_int8_static", "ort_int8_dynamic", "ov_fp16"]
OV_MODES = {"ov_int8", "ov_int8_ac", "ov_fp16"}
ORT_MODES = {"ort_int8_static", "ort_int8_dynamic"}


class ParamsError(ValueError):
    """A params file that cannot be used; the message names the key and what is allowed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Data(_Section):
    source: Literal["digits", "cifar10", "imagefolder"] = "digits"
    root: str = "data/raw/images"
    download: bool = True
    image_size: int = Field(16, ge=8, le=512)
    channels: Literal[1, 3] = 1
    resize: bool = True
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0, lt=0.5)
    max_images_per_class: int = Field(0, ge=0)


class Validate(_Section):
    min_images_per_class: int = Field(20, ge=1)
    max_class_imbalance: float = Field(3.0, ge=1.0)
    pixel_min: int = Field(0, ge=0, le=255)
    pixel_max: int = Field(255, ge=0, le=255)


class Model(_Section):
    arch: Arch = "small_cnn"
    width: float = Field(1.0, ge=0.125, le=2.0)
    small_input: bool = True


class Optim(_Section):
    """The SGD recipe shared by every stage that trains."""
    epochs: int = Field(25, ge=1, le=1000)
    batch_size: int = Field(64, ge=1, le=4096)
    lr: float = Field(0.05, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0, le=0.1)
    schedule: Schedule = "onecycle"
    warmup_epochs: float = Field(0.0, ge=0, le=1000)
    step_size: int = Field(10, ge=1)
    gamma: float = Field(0.1, gt=0, le=1)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"

    @model_validator(mode="after")
    def _warmup(self) -> "Optim":
        if self.warmup_epochs and self.schedule != "cosine":
            raise ValueError(f"warmup_epochs applies to schedule: cosine only (schedule is {self.schedule!r}; "
                             "onecycle has its own warm-up); set warmup_epochs: 0")
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be smaller than epochs ({self.epochs})")
        return self


class Train(Optim):
    augment: Literal["auto", "none", "crop", "crop_flip"] = "auto"
    early_stopping_patience: int = Field(10, ge=0)
    threads: int = Field(0, ge=0, le=256)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = Field(0, ge=0, le=64)
    pin_memory: bool = True
    channels_last: bool = True
    converged_max_gain: float = Field(0.5, ge=0, le=100)

    def fit_options(self) -> dict[str, Any]:
        """The train.* knobs every training stage (train, finetune, distill, cluster, QAT) hands to `fit`."""
        return {"augment": self.augment, "device": self.device, "num_workers": self.num_workers,
                "pin_memory": self.pin_memory, "channels_last": self.channels_last,
                "converged_max_gain": self.converged_max_gain}


class KD(_Section):
    temperature: float = Field(4.0, gt=0, le=100)
    alpha: float = Field(0.7, ge=0, le=1)


class Prune(_Section):
    mode: Literal["structured", "unstructured"] = "structured"
    importance: Literal["l1", "l2", "bn_scale", "random"] = "l1"
    target: Literal["ratio", "macs", "params"] = "ratio"
    ratio: float = Field(0.5, ge=0, lt=1)
    target_reduction: float = Field(0.5, ge=0, lt=1)
    global_pruning: bool = False
    iterative_steps: int = Field(1, ge=1, le=100)
    round_to: int = Field(8, ge=1, le=256)
    protect: list[str] = Field(default_factory=lambda: ["first_conv", "classifier"])


class Finetune(Optim, KD):
    kd: bool = True


class Cluster(_Section):
    enabled: bool = True
    n_clusters: int = Field(16, ge=2, le=256)
    fold_bn: bool = True
    min_weights: int = Field(64, ge=1)
    finetune_epochs: int = Field(3, ge=0, le=1000)
    lr: float = Field(0.002, gt=0, le=10)


class Sensitivity(_Section):
    enabled: bool = True
    max_samples: int = Field(500, ge=0)


class Quantize(_Section):
    source: Literal["clustered", "finetuned"] = "clustered"
    modes: list[QuantMode] = Field(default_factory=lambda: ["ov_int8", "ov_int8_ac", "ort_int8_static",
                                                            "ort_int8_dynamic", "ov_fp16"])
    calibration_size: int = Field(300, ge=1, le=100000)
    preset: Literal["performance", "mixed"] = "mixed"
    max_drop: float = Field(0.01, ge=0, le=1)
    keep_sensitive: int = Field(0, ge=0)
    qat: bool = False
    qat_epochs: int = Field(2, ge=1)
    qat_lr: float = Field(0.001, gt=0, le=10)


class Distill(Optim, KD):
    enabled: bool = True
    teacher: Literal["baseline", "finetuned"] = "finetuned"
    student_arch: Arch = "small_cnn"
    student_width: float = Field(0.5, ge=0.125, le=2.0)
    also_without_kd: bool = True
    quantize_modes: list[QuantMode] = Field(default_factory=lambda: ["ov_int8"])


class Target(_Section):
    name: str = Field("cpu", min_length=1)
    runtime: Literal["openvino", "onnxruntime", "any"] = "any"
    device: str = "CPU"


class Export(_Section):
    opset: int = Field(17, ge=11, le=23)
    parity_samples: int = Field(256, ge=1)
    max_abs_diff: float = Field(1e-3, gt=0)
    min_agreement: float = Field(0.99, ge=0, le=1)
    min_agreement_quantized: float = Field(0.9, ge=0, le=1)


class Evaluate(_Section):
    batch_size: int = Field(256, ge=1, le=65536)


class Bench(_Section):
    threads: int = Field(1, ge=1, le=256)
    streams: int = Field(1, ge=1, le=64)
    warmup: int = Field(20, ge=0)
    runs: int = Field(200, ge=1)
    time_budget_s: float = Field(0.0, ge=0)
    pytorch_reference: bool = True


class Gate(_Section):
    max_accuracy_drop: float = Field(1.0, ge=0, le=100)
    latency_percentile: Literal["p50", "p90", "p99"] = "p90"
    max_latency_ms: float = Field(5.0, gt=0)
    max_size_bytes: int = Field(2_000_000, gt=0)
    rank_by: Literal["latency", "size", "accuracy"] = "latency"


class Registry(_Section):
    root: str = "registry"
    model_name: str = Field("model", pattern=NAME_PATTERN)  # release names: no path traversal possible
    channel: str = Field("staging", pattern=CHANNEL_PATTERN)
    bump: Literal["major", "minor", "patch"] = "patch"
    tag: bool = True


class Params(_Section):
    seed: int = Field(0, ge=0)
    data: Data = Data()
    validate_: Validate = Field(Validate(), alias="validate")
    model: Model = Model()
    train: Train = Train()
    prune: Prune = Prune()
    finetune: Finetune = Finetune()
    cluster: Cluster = Cluster()
    sensitivity: Sensitivity = Sensitivity()
    quantize: Quantize = Quantize()
    distill: Distill = Distill()
    target: Target = Target()
    export: Export = Export()
    evaluate: Evaluate = Evaluate()
    bench: Bench = Bench()
    gate: Gate = Gate()
    registry: Registry = Registry()

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _consistent(self) -> "Params":
        modes = set(self.quantize.modes) | (set(self.distill.quantize_modes) if self.distill.enabled else set())
        rt = self.target.runtime
        wrong = sorted(modes & (ORT_MODES if rt == "openvino" else OV_MODES if rt == "onnxruntime" else set()))
        if wrong:
            raise ValueError(f"quantize.modes / distill.quantize_modes {wrong} need a runtime that "
                             f"target.runtime={rt!r} excludes; drop them or set target.runtime: any")
        if self.quantize.source == "clustered" and not self.cluster.enabled:
            raise ValueError("quantize.source is 'clustered' but cluster.enabled is false; "
                             "set quantize.source: finetuned or enable clustering")
        if self.validate_.pixel_min > self.validate_.pixel_max:
            raise ValueError("validate.pixel_min must be <= validate.pixel_max")
        return self

    def section(self, name: str) -> dict[str, Any]:
        """One section as plain data (for cache keys and manifests)."""
        return getattr(self, "validate_" if name == "validate" else name).model_dump()

    def dump(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True)


def _format_error(err: ValidationError, source: str) -> str:
    """One line for one problem (what a CLI prints on stderr); a header and one line per problem otherwise."""
    lines = [f"{source}: invalid parameters:"]
    for e in err.errors():
        key = ".".join(str(x) for x in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")  # a cross-field check (Params._consistent) explains itself
        if e["type"] == "extra_forbidden":
            parent = ".".join(str(x) for x in e["loc"][:-1])
            allowed = _allowed_keys(parent)
            msg = f"unknown key; allowed keys{' in ' + parent if parent else ''}: {', '.join(allowed)}"
        elif "input" in e and e["type"] != "missing" and not isinstance(e["input"], (dict, list)):
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"  - {key}: {msg}")
    if len(lines) == 2:
        one = lines[1][4:]
        return (f"{source}: contradictory parameters: {one.removeprefix('(top level): ')}"
                if one.startswith("(top level): ") else f"{source}: invalid parameter {one}")
    return "\n".join(lines)


def _allowed_keys(dotted: str) -> list[str]:
    model: type[BaseModel] = Params
    for part in [p for p in dotted.split(".") if p]:
        fields = {(f.alias or n): f for n, f in model.model_fields.items()}
        ann = fields[part].annotation if part in fields else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return sorted((f.alias or n) for n, f in model.model_fields.items())


def _coerce(text: str) -> Any:
    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(raw: dict[str, Any], overrides: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    """`train.epochs=3` style overrides (values parsed as YAML), the way `dvc exp run -S` does."""
    out = copy.deepcopy(raw)
    items = overrides.items() if isinstance(overrides, dict) else (
        (o.split("=", 1) if "=" in o else (o, None)) for o in (overrides or []))
    for key, value in items:
        if value is None:
            raise ParamsError(f"override {key!r} has no value; write it as key=value, e.g. train.epochs=3")
        value = _coerce(value) if isinstance(value, str) else value
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ParamsError(f"override {key!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return out


def load_params(path: str | Path = "params.yaml", overrides: list[str] | dict[str, Any] | None = None) -> Params:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: params file not found; run from the project root or pass --params PATH")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:  # one line: where and what (the full text quotes the file over several lines)
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ParamsError(f"{path}: not valid YAML{where}: "
                          f"{getattr(exc, 'problem', None) or str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    return params_from_dict(apply_overrides(raw, overrides), source=str(path))


def params_from_dict(raw: dict[str, Any], source: str = "params") -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(_format_error(exc, source)) from None
