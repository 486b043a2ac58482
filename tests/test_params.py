"""params.yaml validation: typos, wrong types, out-of-range values and contradictions fail fast, naming the key."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edgeopt.params import ParamsError, apply_overrides, load_params

REPO = Path(__file__).resolve().parents[1]


def write_params(tmp_path, mutate):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    mutate(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_repo_params_load_and_every_section_is_typed():
    p = load_params(REPO / "params.yaml")
    assert p.data.source == "digits"
    assert p.train.lr > 0 and p.gate.max_accuracy_drop >= 0
    assert p.validate_.min_images_per_class >= 1  # 'validate' key via alias


def test_typo_key_names_the_key_and_allowed_keys(tmp_path):
    path = write_params(tmp_path, lambda r: r["train"].__setitem__("epoch", 3))
    with pytest.raises(ParamsError) as err:
        load_params(path)
    msg = str(err.value)
    assert "train.epoch" in msg and "unknown key" in msg and "epochs" in msg


def test_typo_section_names_the_section(tmp_path):
    path = write_params(tmp_path, lambda r: r.__setitem__("trian", {"epochs": 3}))
    with pytest.raises(ParamsError, match=r"trian: unknown key; allowed keys: .*train"):
        load_params(path)


def test_negative_lr_names_the_key_and_bound(tmp_path):
    path = write_params(tmp_path, lambda r: r["train"].__setitem__("lr", -1))
    with pytest.raises(ParamsError, match=r"train\.lr: Input should be greater than 0 \(got -1\)"):
        load_params(path)


def test_wrong_type_and_enum_list_allowed_values(tmp_path):
    path = write_params(tmp_path, lambda r: r["data"].__setitem__("source", "mnist"))
    with pytest.raises(ParamsError, match=r"data\.source: .*'digits', 'cifar10' or 'imagefolder'"):
        load_params(path)
    path = write_params(tmp_path, lambda r: r["train"].__setitem__("epochs", "many"))
    with pytest.raises(ParamsError, match=r"train\.epochs: .*integer"):
        load_params(path)


def test_contradiction_int8_on_runtime_without_it(tmp_path):
    def mutate(r):
        r["target"]["runtime"] = "onnxruntime"
    with pytest.raises(ParamsError, match=r"ov_int8.*target.runtime='onnxruntime'"):
        load_params(write_params(tmp_path, mutate))


def test_overrides_the_dvc_way():
    p = load_params(REPO / "params.yaml", ["train.epochs=3", "prune.protect=[first_conv]", "gate.max_latency_ms=2.5"])
    assert p.train.epochs == 3 and p.prune.protect == ["first_conv"] and p.gate.max_latency_ms == 2.5
    with pytest.raises(ParamsError, match="train.lr"):
        load_params(REPO / "params.yaml", ["train.lr=-1"])
    with pytest.raises(ParamsError, match="key=value"):
        apply_overrides({}, ["train.epochs"])


def test_cli_exits_2_with_the_message_before_doing_anything(tmp_path):
    path = write_params(tmp_path, lambda r: r["train"].__setitem__("lr", -1))
    proc = subprocess.run([sys.executable, "-m", "edgeopt.cli", "train", "--params", str(path), "--root", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert "train.lr" in proc.stderr and "greater than 0" in proc.stderr
    assert not (tmp_path / "models").exists()


def test_dvc_exp_run_style_edit_is_what_we_load(tmp_path):
    # `dvc exp run -S train.epochs=3` rewrites params.yaml in place; we must read that file as is.
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    raw = yaml.safe_load((tmp_path / "params.yaml").read_text())
    raw["train"]["epochs"] = 3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    assert load_params(tmp_path / "params.yaml").train.epochs == 3
