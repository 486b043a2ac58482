"""Issue 13, class 6: parameters. Invalid YAML in a `--set` value is exit 2 with one line naming the key (it was a
YAML traceback, exit 1); seeds and every integer knob have the range their consumers accept (numpy seeds < 2**32,
bounded counts), infinities and NaN are refused everywhere, a boolean is not a number, paths and names hold no
control characters. Nothing is created by a refused command."""
from __future__ import annotations

import pytest
from pydantic import BaseModel

from edgeopt.params import MAX_SEED, Params, ParamsError, load_params
from tests.conftest import REPO
from tests.release_helpers import run_cli

PARAMS = REPO / "params.yaml"


@pytest.mark.parametrize("override, message", [
    ("train.epochs=[1", "override 'train.epochs': value '[1' is not valid YAML (expected ',' or ']', but got "
                        "'<stream end>')"),
    ("train.lr={a: 1", "override 'train.lr': value '{a: 1' is not valid YAML"),
    ("train.epochs=!!python/object/apply:os.system [id]", "override 'train.epochs': value '!!python/object/apply:"
                                                          "os.system [id]' is not valid YAML (could not determine a "
                                                          "constructor"),
    ("train.epochs=" + "[" * 3000 + "1" + "]" * 3000, "override 'train.epochs': value '[[[["),
    ("train.epochs='unterminated", "override 'train.epochs': value \"'unterminated\" is not valid YAML"),
    ("train.epochs=a: b: c", "override 'train.epochs': value 'a: b: c' is not valid YAML"),
    ("train..epochs=3", "override 'train..epochs': empty key part"),
    (".=3", "override '.': empty key part"),
])
def test_set_value_that_is_not_yaml_is_exit_2_naming_the_key(tmp_path, override, message):
    with pytest.raises(ParamsError) as err:
        load_params(PARAMS, [override])
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    (tmp_path / "params.yaml").write_text(PARAMS.read_text())
    res = run_cli(tmp_path, "train", "--set", override)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.splitlines() == [f"edgeopt train: error: {err.value}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing created


@pytest.mark.parametrize("override, key", [
    ("seed=4294967296", "seed"), ("seed=-1", "seed"), ("seed=1e30", "seed"), ("seed=true", "seed"),
    ("train.epochs=true", "train.epochs"), ("train.epochs=2.5", "train.epochs"),
    ("train.lr=.inf", "train.lr"), ("train.lr=.nan", "train.lr"), ("train.lr=1e999", "train.lr"),
    ("gate.max_latency_ms=.inf", "gate.max_latency_ms"), ("gate.max_accuracy_drop=.nan", "gate.max_accuracy_drop"),
    ("gate.max_size_bytes=1e400", "gate.max_size_bytes"), ("export.max_abs_diff=.inf", "export.max_abs_diff"),
    ("data.max_images_per_class=100000000000", "data.max_images_per_class"),
    ("quantize.qat_epochs=1000000", "quantize.qat_epochs"), (
        "train.early_stopping_patience=99999", "train.early_stopping_patience"),
    ("registry.root=", "registry.root"), ('registry.root="reg\\nistry"', "registry.root"),
    ('data.root="a\\0b"', "data.root"), ('target.name="cpu\\x1b[31m"', "target.name"),
])
def test_out_of_range_or_mistyped_knob_is_exit_2(override, key):
    with pytest.raises(ParamsError, match=rf"^{PARAMS}: invalid parameter {key}: "):
        load_params(PARAMS, [override])


def test_largest_numpy_seed_is_accepted_and_used():
    import numpy as np

    p = load_params(PARAMS, [f"seed={MAX_SEED}"])
    np.random.seed(p.seed)  # the consumer with the narrowest range accepts it
    with pytest.raises(ValueError):
        np.random.seed(MAX_SEED + 1)


def _int_fields(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _int_fields(ann, key + ".")
        elif ann is int:
            yield key, field


@pytest.mark.parametrize("key", [k for k, _ in _int_fields(Params)])
def test_every_integer_knob_has_a_lower_and_an_upper_bound(key):
    """A count without an upper bound lets one typo (1e9 epochs, runs, samples) hang a stage or exhaust memory."""
    field = dict(_int_fields(Params))[key]
    bounds = {type(m).__name__ for m in field.metadata}
    assert bounds & {"Ge", "Gt"} and bounds & {"Le", "Lt"}, f"{key}: bounds {bounds}"
    with pytest.raises(ParamsError, match=rf"invalid parameter {key}: Input should be less than"):
        load_params(PARAMS, [f"{key}={10**18}"])


def test_float_knobs_refuse_infinity_everywhere():
    floats = []

    def walk(model, prefix=""):
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, prefix + (field.alias or name) + ".")
            elif ann is float:
                floats.append(prefix + (field.alias or name))
    walk(Params)
    assert len(floats) > 10
    for key in floats:
        with pytest.raises(ParamsError, match=rf"{key}: Input should be a finite number"):
            load_params(PARAMS, [f"{key}=.inf"])
