"""params.yaml loaded into typed, validated objects: the single source of truth for every knob."""
from __future__ import annotations

import copy
import importlib
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr,
                      ValidationError, ValidationInfo, field_validator, model_validator)
from pydantic_core import PydanticCustomError

from edgeopt.candidates import ANY_RUNTIME, RUNTIMES, allowed_runtimes
from edgeopt.errors import ParamsError
from edgeopt.registry import CHANNEL_PATTERN, NAME_PATTERN
from edgeopt.runtime import BENCH_LIMITS

Arch = Literal["small_cnn", "resnet18", "resnet34", "vgg16_bn", "mobilenet_v2"]
Schedule = Literal["onecycle", "cosine", "step", "none"]
TargetRuntime = Literal[(*RUNTIMES, ANY_RUNTIME)]  # type: ignore[valid-type]
MAX_SEED = 2**32 - 1  # numpy (np.random.seed) and scikit-learn random_state accept 0..2**32-1
PATH_TEXT = r"^[^\x00-\x1f\x7f]+$"  # a path or name in params: non-empty, no NUL/newline/control characters


def quantizers():
    """The quantization modes (edgeopt.quantizers), imported by name on purpose: validating a mode name must not
    make every stage's DVC code deps include the quantizer builders (only the quantize stage runs them)."""
    return importlib.import_module("edgeopt.quantizers")


def _known_mode(name: str) -> str:
    listed = quantizers().listed()
    if name not in listed:
        expected = " or ".join([", ".join(repr(m) for m in listed[:-1]), repr(listed[-1])] if len(listed) > 1
                               else [repr(m) for m in listed])
        raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})
    return name


QuantMode = Annotated[str, AfterValidator(_known_mode)]  # a mode of edgeopt.quantizers that quantize.modes may name


class _Section(BaseModel):
    # allow_inf_nan=False: `.inf` / `.nan` (YAML) or 1e999 would pass a bound like gt=0 and hang or poison a stage
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """`epochs: true` is a typo, not 1 (pydantic would take a bool as an int)."""
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, bool) and field is not None and field.annotation in (int, float):
            raise ValueError("expected a number, not a boolean")
        return value


class Data(_Section):
    source: Literal["digits", "cifar10", "imagefolder"] = "digits"
    root: str = Field("data/raw/images", pattern=PATH_TEXT, max_length=4096)
    download: bool = True
    image_size: int = Field(16, ge=8, le=512)
    channels: Literal[1, 3] = 1
    resize: bool = True
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0, lt=0.5)
    max_images_per_class: int = Field(0, ge=0, le=10_000_000)
    test_root: str = Field("data/raw/test-images", min_length=1)  # a dvc.yaml dep (templated): always a path
    official_test: bool = True


class Validate(_Section):
    min_images_per_class: int = Field(20, ge=1, le=10_000_000)
    max_class_imbalance: float = Field(3.0, ge=1.0)
    pixel_min: int = Field(0, ge=0, le=255)
    pixel_max: int = Field(255, ge=0, le=255)


class Model(_Section):
    arch: Arch = "small_cnn"
    width: float = Field(1.0, ge=0.125, le=2.0)
    small_input: bool = True


EPOCHS, LR = {"ge": 1, "le": 1000}, {"gt": 0, "le": 10}  # bounds of every recipe's epochs / lr


class Optim(_Section):
    """The SGD recipe shared by every stage that trains (defaults: train's; finetune and distill set their own)."""
    epochs: int = Field(15, **EPOCHS)
    batch_size: int = Field(64, ge=1, le=4096)
    lr: float = Field(0.05, **LR)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0, le=0.1)
    schedule: Schedule = "onecycle"
    warmup_epochs: float = Field(0.0, ge=0, le=1000)
    step_size: int = Field(10, ge=1, le=100_000)
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
    early_stopping_patience: int = Field(10, ge=0, le=1000)
    threads: int = Field(0, ge=0, le=256)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = Field(0, ge=0, le=64)
    pin_memory: bool = True
    channels_last: bool = True
    converged_max_gain: float = Field(0.5, ge=0, le=100)


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
    protect: list[str] = Field(default_factory=lambda: ["first_conv", "classifier"], max_length=1000)


class Finetune(Optim, KD):
    epochs: int = Field(8, **EPOCHS)
    lr: float = Field(0.01, **LR)
    kd: bool = True


class Cluster(_Section):
    enabled: bool = True
    n_clusters: int = Field(16, ge=2, le=256)
    fold_bn: bool = True
    min_weights: int = Field(500, ge=1, le=1_000_000_000)
    finetune_epochs: int = Field(3, ge=0, le=1000)
    lr: float = Field(0.002, gt=0, le=10)


class Sensitivity(_Section):
    enabled: bool = True
    max_samples: int = Field(500, ge=0, le=10_000_000)


class Quantize(_Section):
    source: Literal["clustered", "finetuned"] = "clustered"
    modes: list[QuantMode] = Field(default_factory=lambda: ["ov_int8", "ov_int8_ac", "ort_int8_static",
                                                            "ort_int8_dynamic", "ov_fp16"])
    calibration_size: int = Field(300, ge=1, le=100000)
    preset: Literal["performance", "mixed"] = "mixed"
    max_drop: float = Field(0.01, ge=0, le=1)
    keep_sensitive: int = Field(0, ge=0, le=100_000)
    qat: bool = False
    qat_epochs: int = Field(2, ge=1, le=1000)
    qat_lr: float = Field(0.001, gt=0, le=10)


class Distill(Optim, KD):
    epochs: int = Field(10, **EPOCHS)
    enabled: bool = True
    teacher: Literal["baseline", "finetuned"] = "finetuned"
    student_arch: Arch = "small_cnn"
    student_width: float = Field(0.5, ge=0.125, le=2.0)
    also_without_kd: bool = True
    quantize_modes: list[QuantMode] = Field(default_factory=lambda: ["ov_int8"])


class Target(_Section):
    name: str = Field("cpu-x86-avx512", pattern=PATH_TEXT, max_length=128)
    runtime: TargetRuntime = ANY_RUNTIME
    device: str = Field("CPU", pattern=PATH_TEXT, max_length=128)


class Export(_Section):
    opset: int = Field(17, ge=11, le=23)
    parity_samples: int = Field(256, ge=1, le=1_000_000)
    max_abs_diff: float = Field(1e-3, gt=0, le=1e6)
    min_agreement: float = Field(0.99, ge=0, le=1)
    min_agreement_quantized: float = Field(0.9, ge=0, le=1)


class Evaluate(_Section):
    batch_size: int = Field(256, ge=1, le=65536)
    split: Literal["test", "val"] = "test"


def _limit(key: str, default: float):
    """A bench knob bounded by edgeopt.runtime.BENCH_LIMITS (the same limits the `edgeopt bench` flags get)."""
    lo, hi = BENCH_LIMITS[key]
    return Field(default, ge=lo, le=hi)


class Bench(_Section):
    threads: int = _limit("threads", 1)
    streams: int = _limit("streams", 1)
    warmup: int = _limit("warmup", 20)
    runs: int = _limit("runs", 200)
    time_budget_s: float = _limit("time_budget_s", 0.0)
    rounds: int = Field(3, ge=1, le=20)
    max_spread: float = Field(3.0, gt=1, le=1000)
    retries: int = Field(2, ge=0, le=20)
    pytorch_reference: bool = True


class Gate(_Section):
    max_accuracy_drop: float = Field(1.0, ge=0, le=100)
    latency_percentile: Literal["p50", "p90", "p99"] = "p90"
    max_latency_ms: float = Field(5.0, gt=0, le=3_600_000)
    max_size_bytes: int = Field(2_000_000, gt=0, le=2**50)
    rank_by: Literal["latency", "size", "accuracy"] = "latency"
    latency_tolerance: float = Field(0.05, ge=0, le=1)
    # 0: the measured drop must be <= max_accuracy_drop; 0.5 <= c <= 0.9999: its one-sided upper bound at confidence c
    # (paired over the evaluated images) must be, so a drop within the limit by chance alone does not pass
    accuracy_confidence: float = Field(0.0, ge=0, le=0.9999)

    @field_validator("accuracy_confidence")
    @classmethod
    def _confidence(cls, value: float) -> float:
        if 0 < value < 0.5:
            raise ValueError("use 0 (decide on the measured drop) or a confidence from 0.5 to 0.9999 (e.g. 0.95); "
                             "below 0.5 the bound would be below the measured drop")
        return value


class Registry(_Section):
    root: str = Field("registry", pattern=PATH_TEXT, max_length=4096)
    model_name: str = Field("digits-classifier", pattern=NAME_PATTERN)  # release names: no path traversal possible
    channel: str = Field("staging", pattern=CHANNEL_PATTERN)
    bump: Literal["major", "minor", "patch"] = "patch"
    tag: bool = True
    max_regression: float = Field(0.5, ge=0, le=100)
    allow_regression: bool = False


Choice = Union[StrictBool, StrictInt, StrictFloat, StrictStr]
QUANT_MODE_KNOB = "quantize.mode"  # search-space knob: one mode per trial (quantize.modes and distill.quantize_modes)


class Range(_Section):
    """A numeric search range low..high: `step` > 0 samples on that grid, `log` on a log scale (not both)."""
    low: float
    high: float
    step: float = Field(0.0, ge=0)
    log: bool = False

    @model_validator(mode="after")
    def _sane(self) -> "Range":
        if self.low > self.high:
            raise ValueError(f"low ({self.low:g}) must be <= high ({self.high:g})")
        if self.log and (self.step or self.low <= 0):
            raise ValueError("log: true needs low > 0 and step: 0")
        return self


Dimension = Union[Range, list[Choice]]


def _space(**sections: dict[str, Any]) -> dict[str, dict[str, Dimension]]:
    return {name: {k: Range(**v) if isinstance(v, dict) else v for k, v in knobs.items()}
            for name, knobs in sections.items()}


def _dimension(where: str, value: Any) -> Dimension:
    """A range ({low, high, ...}) or a non-empty list of plain values; the error names the knob."""
    try:
        if isinstance(value, (dict, Range)):
            return Range.model_validate(value.model_dump() if isinstance(value, Range) else value)
        if isinstance(value, list) and value:
            if not all(isinstance(v, (bool, int, float, str)) for v in value):
                raise ValueError(f"{where}: choices are plain values (text, numbers, true/false), got {value!r}")
            return value
    except ValidationError as exc:
        e = exc.errors()[0]
        raise ValueError(f"{where}{''.join('.' + str(x) for x in e['loc'])}: {e['msg'].removeprefix('Value error, ')}") \
            from None
    raise ValueError(f"{where}: expected {{low: .., high: ..}} (a range) or a non-empty [list] of choices, got {value!r}")


class Search(_Section):
    """The whole-chain search (flows/search.py): budget, constraints and the space of params it samples."""
    trials: int = Field(20, ge=1, le=100_000)
    timeout_s: float = Field(0.0, ge=0, le=10_000_000)
    workers: int = Field(2, ge=1, le=1024)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    max_macs: int = Field(0, ge=0, le=10**15)
    pruner: Literal["median", "none"] = "median"
    startup_trials: int = Field(4, ge=0, le=100_000)
    trial_overrides: list[str] = Field(default_factory=lambda: [
        "distill.also_without_kd=false", "export.parity_samples=128", "bench.runs=50", "bench.warmup=5",
        "bench.rounds=1", "bench.pytorch_reference=false", "train.threads=1"], max_length=1000)
    space: dict[str, dict[str, Any]] = Field(default_factory=lambda: _space(
        prune={"ratio": {"low": 0.2, "high": 0.8, "step": 0.05}, "importance": ["l1", "l2", "bn_scale"]},
        finetune={"epochs": {"low": 2, "high": 8}, "temperature": {"low": 2.0, "high": 8.0, "step": 0.5},
                  "alpha": {"low": 0.3, "high": 0.9, "step": 0.1}},
        distill={"student_arch": ["small_cnn"], "student_width": {"low": 0.25, "high": 1.0, "step": 0.125},
                 "temperature": {"low": 2.0, "high": 8.0, "step": 0.5}, "alpha": {"low": 0.3, "high": 0.9, "step": 0.1}},
        quantize={"mode": ["ov_int8", "ort_int8_static"], "keep_sensitive": {"low": 0, "high": 2}}))

    @field_validator("trial_overrides")
    @classmethod
    def _key_value(cls, items: list[str]) -> list[str]:
        bad = [o for o in items if "=" not in o or not o.split("=", 1)[0]]
        if bad:
            raise ValueError(f"write each as key=value, e.g. bench.runs=50 (got {bad[0]!r})")
        return items

    @field_validator("space", mode="before")
    @classmethod
    def _knobs(cls, space: Any) -> dict[str, dict[str, Dimension]]:
        if not isinstance(space, dict) or not all(isinstance(v, dict) for v in space.values()):
            raise ValueError("expected section: {knob: range or [choices]}, e.g. prune: {ratio: {low: 0.2, high: 0.8}}")
        space = {str(sec): {str(k): _dimension(f"{sec}.{k}", v) for k, v in knobs.items()} for sec, knobs in space.items()}
        _check_space(space)
        return space


class Params(_Section):
    seed: int = Field(0, ge=0, le=MAX_SEED)
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
    search: Search = Search()

    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)

    @model_validator(mode="after")
    def _consistent(self) -> "Params":
        modes = set(self.quantize.modes) | (set(self.distill.quantize_modes) if self.distill.enabled else set())
        rt, known = self.target.runtime, quantizers().available()
        wrong = sorted(m for m in modes if known[m].runtime not in allowed_runtimes(rt))
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


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{dotted key: value} of a nested params mapping, e.g. {"train.epochs": 15}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# the sections of the stages a trial runs (prune .. export); data, model, train (the shared stages), gate, bench,
# evaluate (the verdict and how it is measured) stay the project's
SEARCHABLE = ("prune", "finetune", "cluster", "distill", "sensitivity", "quantize", "export")


def _check_space(space: dict[str, dict[str, Dimension]]) -> None:
    """Every search.space knob names a params key (or quantize.mode); a range needs a number, whole for an int."""
    sections = {(f.alias or n): f.annotation for n, f in Params.model_fields.items()
                if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)}
    for section, knobs in space.items():
        if section not in SEARCHABLE:
            why = ("not a params section" if section not in sections else
                   "not searchable: the search's shared stages build it once, or it decides the verdict")
            raise ValueError(f"{section}: {why}; search the stages each trial runs: {', '.join(SEARCHABLE)}")
        fields = sections[section].model_fields
        for key, dim in knobs.items():
            where = f"{section}.{key}"
            if f"{section}.{key}" == QUANT_MODE_KNOB:
                if isinstance(dim, Range):
                    raise ValueError(f"{where}: a list of quantization modes, not a range")
                continue
            if key not in fields:
                raise ValueError(f"{where}: {section} has no key {key!r}; allowed: {', '.join(sorted(fields))}")
            if not isinstance(dim, Range):
                continue
            kind = fields[key].annotation
            if kind not in (int, float):
                raise ValueError(f"{where}: a range needs a numeric knob; give a list of choices instead")
            if kind is int and any(v != int(v) for v in (dim.low, dim.high, dim.step)):
                raise ValueError(f"{where}: {section}.{key} is a whole number: low, high and step must be too")


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
        elif e["type"] == "string_pattern_mismatch" and (e.get("ctx") or {}).get("pattern") == PATH_TEXT:
            msg = f"must be non-empty text without control characters (newline, tab, NUL) (got {e['input']!r})"
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


def _coerce(key: str, text: str) -> Any:
    """An override's value parsed as YAML (`3` -> 3, `[a, b]` -> a list); a parse error names the key."""
    if text == "":
        return ""
    try:
        return yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as exc:
        problem = ("nested too deeply" if isinstance(exc, RecursionError) else
                   getattr(exc, "problem", None) or (str(exc).splitlines() or ["?"])[0])
        raise ParamsError(f"override {key!r}: value {text[:80]!r} is not valid YAML ({problem}); "
                          "write a number, true/false, a [list], or a quoted string") from None


def apply_overrides(raw: dict[str, Any], overrides: list[str] | dict[str, Any] | None) -> dict[str, Any]:
    """`train.epochs=3` style overrides (values parsed as YAML), the way `dvc exp run -S` does."""
    out = copy.deepcopy(raw)
    items = overrides.items() if isinstance(overrides, dict) else (
        (o.split("=", 1) if "=" in o else (o, None)) for o in (overrides or []))
    for key, value in items:
        if value is None:
            raise ParamsError(f"override {key!r} has no value; write it as key=value, e.g. train.epochs=3")
        value = _coerce(key, value) if isinstance(value, str) else value
        node = out
        parts = key.split(".")
        if not all(parts):
            raise ParamsError(f"override {key!r}: empty key part; write section.key=value, e.g. train.epochs=3")
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


def render_params_file(text: str, overrides: list[str] | dict[str, Any] | None = None,
                       base: dict[str, Any] | None = None) -> str:
    """params.yaml text with `base` (a whole params mapping) and `key=value` overrides applied, comments and
    layout kept (ruamel round-trip), the way `dvc exp run -S` edits it. The result is validated first."""
    import io

    from ruamel.yaml import YAML

    rt = YAML(typ="rt")
    rt.preserve_quotes = True
    doc = rt.load(text) or {}
    wanted = apply_overrides(base if base is not None else yaml.safe_load(text) or {}, overrides)
    params_from_dict(wanted, source="params with overrides")  # never write an invalid params.yaml

    from ruamel.yaml.comments import CommentedSeq

    def merge(node: Any, value: Any) -> Any:
        if isinstance(node, dict) and isinstance(value, dict):
            for key in [k for k in node if k not in value]:
                del node[key]
            for key, v in value.items():
                node[key] = merge(node[key], v) if key in node else v
            return node
        if node == value:  # untouched: keep its formatting and comments
            return node
        if isinstance(value, list):
            seq = CommentedSeq(value)
            seq.fa.set_flow_style()
            return seq
        return value

    merge(doc, wanted)
    out = io.StringIO()
    rt.dump(doc, out)
    return out.getvalue()


def project_params(params_file: str | Path, overrides: list[str] | None, root: str | Path) -> Params:
    """A project's params file (a relative path is taken inside `root`) with `key=value` overrides, validated."""
    path = Path(params_file)
    return load_params(path if path.is_absolute() else Path(root) / path, list(overrides or []))
