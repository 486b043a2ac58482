"""Issue 7, item 2: bad params and bad files. Each is refused with a clear error naming the key or the file; through
the CLI that is one line on stderr, no traceback, exit 2 (params) or 1 (files), and nothing is written.
Checkpoints never unpickle arbitrary objects: a malicious pickle is refused and its payload never runs."""
from __future__ import annotations

import ast
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from edgeopt.cli import main as cli_main
from edgeopt.io import write_json
from edgeopt.models import FORMAT, CheckpointError, build_model, load_checkpoint, model_config, save_checkpoint
from edgeopt.runtime import RuntimeModelError, load_model
from tests.conftest import REPO


def one_error_line(capsys, prefix: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    return lines[0]


# --- params --------------------------------------------------------------------------------------------------
def _set(section: str, key: str, value):
    return lambda raw: raw[section].__setitem__(key, value)


# case -> (edit of the repo's params.yaml | raw file text, extra CLI args, exact message after "<file>: ")
PARAMS_CASES = {
    "unknown_key": (_set("train", "epoch", 3), [], "invalid parameter train.epoch: unknown key; allowed keys in "
                    "train: augment, batch_size, channels_last, converged_max_gain, device, early_stopping_patience, "
                    "epochs, gamma, label_smoothing, lr, momentum, num_workers, pin_memory, precision, schedule, "
                    "step_size, threads, warmup_epochs, weight_decay"),
    "unknown_section": (lambda r: r.__setitem__("trian", {"epochs": 3}), [], "invalid parameter trian: unknown key; "
                        "allowed keys: bench, cluster, data, distill, evaluate, export, finetune, gate, model, "
                        "prune, quantize, registry, search, seed, sensitivity, target, train, validate"),
    "wrong_type": (_set("train", "epochs", "many"), [], "invalid parameter train.epochs: Input should be a valid "
                   "integer, unable to parse string as an integer (got 'many')"),
    "wrong_bool": (_set("cluster", "enabled", "maybe"), [], "invalid parameter cluster.enabled: Input should be a "
                   "valid boolean, unable to interpret input (got 'maybe')"),
    "enum": (_set("data", "source", "mnist"), [], "invalid parameter data.source: Input should be 'digits', "
             "'cifar10' or 'imagefolder' (got 'mnist')"),
    "list_item": (_set("quantize", "modes", ["ov_int4"]), [], "invalid parameter quantize.modes.0: Input should be "
                  "'ort_int8_dynamic', 'ort_int8_static', 'ov_fp16', 'ov_int8' or 'ov_int8_ac' (got 'ov_int4')"),
    "negative_lr": (_set("train", "lr", -1), [], "invalid parameter train.lr: Input should be greater than 0 "
                    "(got -1)"),
    "fraction_range": (_set("data", "val_fraction", 0.7), [], "invalid parameter data.val_fraction: Input should "
                       "be less than 0.5 (got 0.7)"),
    "zero_threads": (_set("bench", "threads", 0), [], "invalid parameter bench.threads: Input should be greater "
                     "than or equal to 1 (got 0)"),
    "width_range_override": (None, ["--set", "model.width=5"], "invalid parameter model.width: Input should be "
                             "less than or equal to 2 (got 5)"),
    "int8_without_runtime": (_set("target", "runtime", "onnxruntime"), [], "contradictory parameters: "
                             "quantize.modes / distill.quantize_modes ['ov_fp16', 'ov_int8', 'ov_int8_ac'] need a "
                             "runtime that target.runtime='onnxruntime' excludes; drop them or set "
                             "target.runtime: any"),
    "ort_int8_on_openvino": (None, ["--set", "target.runtime=openvino"], "contradictory parameters: quantize.modes / "
                             "distill.quantize_modes ['ort_int8_dynamic', 'ort_int8_static'] need a runtime that "
                             "target.runtime='openvino' excludes; drop them or set target.runtime: any"),
    "clustered_source_without_clustering": (_set("cluster", "enabled", False), [], "contradictory parameters: "
                                            "quantize.source is 'clustered' but cluster.enabled is false; set "
                                            "quantize.source: finetuned or enable clustering"),
    "pixel_range_inverted": (lambda r: r["validate"].update(pixel_min=200, pixel_max=100), [],
                             "contradictory parameters: validate.pixel_min must be <= validate.pixel_max"),
    "traversal_model_name": (_set("registry", "model_name", "../evil"), [], "invalid parameter registry.model_name: "
                             "String should match pattern '^[a-z0-9][a-z0-9._-]{0,63}$' (got '../evil')"),
    "yaml_syntax": ("train: {epochs: [3\n", [], "not valid YAML at line 2, column 1: expected ',' or ']', but "
                    "got '<stream end>'"),
    "not_a_mapping": ("- train\n- prune\n", [], "expected a mapping of sections at the top level"),
    "missing_file": ("<missing>", [], "params file not found; run from the project root or pass --params PATH"),
    "override_without_value": (None, ["--set", "train.epochs"], "override 'train.epochs' has no value; write it as "
                               "key=value, e.g. train.epochs=3"),
    "override_into_scalar": (None, ["--set", "seed.x=1"], "override 'seed.x': 'seed' is not a section"),
}


@pytest.mark.parametrize("case", list(PARAMS_CASES))
def test_bad_params_exit_2_with_one_line_naming_the_key(tmp_path, capsys, case):
    edit, args, expected = PARAMS_CASES[case]
    path = tmp_path / "params.yaml"
    if isinstance(edit, str):
        if edit != "<missing>":
            path.write_text(edit)
    else:
        raw = yaml.safe_load((REPO / "params.yaml").read_text())
        if edit:
            edit(raw)
        path.write_text(yaml.safe_dump(raw))
    root = tmp_path / "proj"
    code = cli_main(["train", "--params", str(path), "--root", str(root), *args])
    line = one_error_line(capsys, "edgeopt train: error: ")
    assert code == 2
    if case.startswith("override"):
        assert line == f"edgeopt train: error: {expected}"
    else:
        assert line.startswith(f"edgeopt train: error: {path}: {expected}"), line
    assert not root.exists()  # refused before anything ran


def test_several_bad_params_are_listed_together(tmp_path, capsys):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["train"].update(lr=-1, epoch=3)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert cli_main(["train", "--params", str(path), "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"edgeopt train: error: {path}: invalid parameters:",
                                "  - train.lr: Input should be greater than 0 (got -1)",
                                "  - train.epoch: unknown key; allowed keys in train: augment, batch_size, "
                                "channels_last, converged_max_gain, device, early_stopping_patience, epochs, gamma, "
                                "label_smoothing, lr, momentum, num_workers, pin_memory, precision, schedule, step_size, "
                                "threads, warmup_epochs, weight_decay"]


# --- checkpoints ---------------------------------------------------------------------------------------------
class Payload:
    """Unpickling this creates a directory: the side effect proves whether the payload ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _good(path: Path, **cfg) -> Path:
    c = model_config(**{"arch": "small_cnn", "num_classes": 10, "in_channels": 1, "width": 1.0,
                        "small_input": True, "image_size": 16, **cfg})
    return save_checkpoint(path, build_model(c), c)


def _with(path: Path, **changes) -> Path:
    payload = torch.load(_good(path), weights_only=True)
    payload.update(changes)
    torch.save(payload, path)
    return path


def _make_checkpoint(path: Path, kind: str, marker: Path) -> None:
    good = lambda: _good(path.with_name("good.pt")).read_bytes()  # noqa: E731
    if kind == "truncated":
        path.write_bytes(good()[:1000])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "random_bytes":
        path.write_bytes(np.random.default_rng(0).bytes(3000))
    elif kind == "json_text":
        path.write_text('{"format": "edgeopt-checkpoint/1"}')
    elif kind == "directory":
        path.mkdir()
    elif kind == "foreign_state_dict":
        torch.save({"weight": torch.zeros(3)}, path)
    elif kind == "bare_tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "no_state_dict":
        _with(path, state_dict=None)
    elif kind == "config_not_a_dict":
        _with(path, config=[1, 2])
    elif kind == "config_incomplete":
        cfg = torch.load(_good(path), weights_only=True)["config"]
        del cfg["num_classes"]
        _with(path, config=cfg)
    elif kind == "unknown_arch":
        cfg = torch.load(_good(path), weights_only=True)["config"]
        _with(path, config={**cfg, "arch": "alexnet"})
    elif kind == "other_arch_weights":
        other = build_model(model_config("resnet18", 10, 1, 0.25, True, 16)).state_dict()
        _with(path, state_dict=other)
    elif kind == "narrower_weights":
        _with(path, state_dict=build_model(model_config("small_cnn", 10, 1, 0.5, True, 16)).state_dict())
    elif kind == "non_tensor_weight":
        sd = build_model(model_config("small_cnn", 10, 1, 1.0, True, 16)).state_dict()
        _with(path, state_dict={**sd, "classifier.bias": 3})
    elif kind == "rgb_model_for_grey_data":
        _good(path, in_channels=3)
    elif kind == "other_class_count":
        _good(path, num_classes=5)
    elif kind == "other_image_size":
        _good(path, image_size=32)
    elif kind == "malicious_pickle":
        path.write_bytes(pickle.dumps({"format": FORMAT, "config": Payload(marker)}))
    elif kind == "malicious_torch_zip":
        torch.save({"format": FORMAT, "config": {}, "state_dict": {}, "info": Payload(marker)}, path)


NOT_LOADABLE = "not a loadable edgeopt checkpoint (truncated, corrupt or contains objects other than tensors, which "
CKPT_CASES = {
    "truncated": NOT_LOADABLE,
    "empty": NOT_LOADABLE + "are refused): EOFError",
    "random_bytes": NOT_LOADABLE,
    "json_text": NOT_LOADABLE,
    "directory": NOT_LOADABLE,
    "foreign_state_dict": "not an edgeopt checkpoint (expected format 'edgeopt-checkpoint/1'); checkpoints come from",
    "bare_tensor": "not an edgeopt checkpoint (expected format 'edgeopt-checkpoint/1')",
    "no_state_dict": "edgeopt checkpoint without an architecture config or a state dict",
    "config_not_a_dict": "edgeopt checkpoint without an architecture config or a state dict",
    "config_incomplete": "architecture config is incomplete ('num_classes')",
    "unknown_arch": "unknown architecture 'alexnet'; choose one of small_cnn, resnet18",
    "other_arch_weights": "weights do not match architecture 'small_cnn': missing ['features.0.weight', ",
    "narrower_weights": "weights do not match architecture 'small_cnn': missing [], unexpected [], shape mismatch "
                        "['features.0.weight', ",
    "non_tensor_weight": "weights do not match architecture 'small_cnn': missing [], unexpected [], shape mismatch "
                         "['classifier.bias']",
    "rgb_model_for_grey_data": "made for other data than data/prepared: in_channels 3 (data: 1); retrain it",
    "other_class_count": "made for other data than data/prepared: num_classes 5 (data: 10); retrain it",
    "other_image_size": "made for other data than data/prepared: image_size 32 (data: 16); retrain it",
    "malicious_pickle": NOT_LOADABLE + "are refused): ",
    "malicious_torch_zip": NOT_LOADABLE + "are refused): Weights only load failed",
    "missing": "checkpoint not found; run the stage that writes it first",
}


@pytest.mark.parametrize("kind", list(CKPT_CASES))
def test_bad_checkpoint_is_refused_naming_the_file(tiny_project, tmp_path, capsys, kind):
    """Loaded directly, and as models/baseline.pt through `edgeopt export` (exit 1, one line, nothing exported)."""
    marker = tmp_path / "payload-ran"
    ckpt = tiny_project / "models" / "baseline.pt"
    ckpt.unlink()
    if kind != "missing":
        _make_checkpoint(ckpt, kind, marker)
    meta = {"channels": 1, "num_classes": 10, "image_size": 16}
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(ckpt, meta=meta)
    message = str(err.value)
    assert message.startswith(f"{ckpt}: {CKPT_CASES[kind]}"), message
    assert "\n" not in message

    write_json(tiny_project / "models" / "quantized" / "index.json", {"candidates": []})  # no "FP32 only" warning
    code = cli_main(["export", "--root", str(tiny_project), "--params", str(tiny_project / "params.yaml")])
    assert (code, one_error_line(capsys, "edgeopt export: error: ")) == (1, f"edgeopt export: error: {message}")
    assert not (tiny_project / "models" / "exported").exists()
    assert not marker.exists()  # the malicious payloads never ran


def test_malicious_checkpoint_payload_never_runs_through_the_cli(tiny_project, tmp_path):
    marker = tmp_path / "payload-ran"
    evil = pickle.dumps({"format": FORMAT, "config": Payload(marker)})
    pickle.loads(evil)  # the control: unpickled the ordinary way, the payload does run
    assert marker.is_dir()
    marker.rmdir()
    good = (tiny_project / "models" / "baseline.pt").read_bytes()
    for name in ("baseline", "finetuned"):  # the required source, and an optional one export only peeks at first
        (tiny_project / "models" / "baseline.pt").write_bytes(evil if name == "baseline" else good)
        (tiny_project / "models" / f"{name}.pt").write_bytes(evil)
        proc = subprocess.run([sys.executable, "-m", "edgeopt.cli", "export", "--params", "params.yaml"],
                              cwd=tiny_project, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        errors = [ln for ln in proc.stderr.splitlines() if " WARNING edgeopt." not in ln]  # log lines aside
        assert proc.returncode == 1 and len(errors) == 1, proc.stderr
        assert errors[0].startswith(f"edgeopt export: error: models/{name}.pt: {NOT_LOADABLE}"), proc.stderr
        assert "Traceback" not in proc.stderr and not marker.exists()
        assert not (tiny_project / "models" / "exported").exists()


def test_project_code_never_unpickles():
    """Every torch.load in the project passes weights_only=True; no pickle/joblib/dill loads, no allow_pickle."""
    offenders = []
    for f in sorted(p for d in ("edgeopt", "stages", "flows", "benchmarks") for p in (REPO / d).rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
            kw = {k.arg: k.value for k in node.keywords}
            where = f"{f.relative_to(REPO)}:{node.lineno}"
            if owner == "torch" and node.func.attr == "load":
                safe = kw.get("weights_only")
                if not (isinstance(safe, ast.Constant) and safe.value is True):
                    offenders.append(f"{where} torch.load without weights_only=True")
            elif owner in ("pickle", "joblib", "dill", "cloudpickle") and node.func.attr in ("load", "loads"):
                offenders.append(f"{where} {owner}.{node.func.attr}")
            elif owner in ("np", "numpy") and node.func.attr == "load":
                v = kw.get("allow_pickle")
                if v is not None and not (isinstance(v, ast.Constant) and v.value is False):
                    offenders.append(f"{where} np.load(allow_pickle=...)")
    assert offenders == []


# --- exported model files ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def _model_files(tmp_path_factory) -> Path:
    from edgeopt.onnx_export import export_onnx, onnx_to_ir

    d = tmp_path_factory.mktemp("model_files")
    model = build_model(model_config("small_cnn", 10, 1, 0.5, True, 16)).eval()
    onnx_to_ir(export_onnx(model, (1, 16, 16), d / "m.onnx", 17), d / "m.xml")
    return d


@pytest.mark.parametrize("damage", ["truncate_onnx", "garbage_onnx", "empty_onnx", "truncate_bin", "truncate_xml",
                                    "garbage_xml", "missing_bin", "missing", "wrong_suffix"])
def test_corrupt_model_file_is_refused_naming_the_file(_model_files, tmp_path, capsys, damage):
    """load_model (evaluate, bench, predict and export parity all use it), and `edgeopt bench --model` (exit 1)."""
    for f in _model_files.iterdir():
        shutil.copy(f, tmp_path / f.name)
    onnx_path, xml = tmp_path / "m.onnx", tmp_path / "m.xml"
    bin_path = xml.with_suffix(".bin")
    load_model(onnx_path), load_model(xml)  # the intact copies load
    target = {"truncate_onnx": onnx_path, "garbage_onnx": onnx_path, "empty_onnx": onnx_path,
              "missing": tmp_path / "nope.onnx", "wrong_suffix": tmp_path / "m.pt"}.get(damage, xml)
    if damage == "truncate_onnx":
        onnx_path.write_bytes(onnx_path.read_bytes()[:4000])
    elif damage == "garbage_onnx":
        onnx_path.write_bytes(b"\x00garbage" * 100)
    elif damage == "empty_onnx":
        onnx_path.write_bytes(b"")
    elif damage == "truncate_bin":
        bin_path.write_bytes(bin_path.read_bytes()[:1000])
    elif damage == "truncate_xml":
        xml.write_text(xml.read_text()[:1500])
    elif damage == "garbage_xml":
        xml.write_text("<net><layers><layer id='0' type='Nope'/></layers></net>")
    elif damage == "missing_bin":
        bin_path.unlink()
    elif damage == "wrong_suffix":
        target.write_bytes(b"x")
    expected = {"missing": "model file not found", "missing_bin": "its weights file", "wrong_suffix":
                "unknown model format '.pt'"}.get(damage, "not a loadable")
    with pytest.raises(RuntimeModelError) as err:
        load_model(target)
    assert str(err.value).startswith(f"{target}: {expected}"), str(err.value)

    code = cli_main(["bench", "--model", str(target), "--runs", "3", "--warmup", "0"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert f"{target}: {expected}" in err
