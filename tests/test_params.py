"""params.yaml: every section typed, DVC-style overrides.
(Refusals of bad params: tests/reliability/test_bad_params_and_files.py.)"""
import shutil
from pathlib import Path

import pytest
import yaml

from edgeopt.params import ParamsError, apply_overrides, load_params

REPO = Path(__file__).resolve().parents[1]


def test_repo_params_load_and_every_section_is_typed():
    p = load_params(REPO / "params.yaml")
    assert p.data.source == "digits"
    assert p.train.lr > 0 and p.gate.max_accuracy_drop >= 0
    assert p.validate_.min_images_per_class >= 1  # 'validate' key via alias


def test_overrides_the_dvc_way():
    p = load_params(REPO / "params.yaml", ["train.epochs=3", "prune.protect=[first_conv]", "gate.max_latency_ms=2.5"])
    assert p.train.epochs == 3 and p.prune.protect == ["first_conv"] and p.gate.max_latency_ms == 2.5
    with pytest.raises(ParamsError, match="train.lr"):
        load_params(REPO / "params.yaml", ["train.lr=-1"])
    with pytest.raises(ParamsError, match="key=value"):
        apply_overrides({}, ["train.epochs"])


def test_dvc_exp_run_style_edit_is_what_we_load(tmp_path):
    # `dvc exp run -S train.epochs=3` rewrites params.yaml in place; we must read that file as is.
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    raw = yaml.safe_load((tmp_path / "params.yaml").read_text())
    raw["train"]["epochs"] = 3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    assert load_params(tmp_path / "params.yaml").train.epochs == 3
