"""Quantization modes are plug-ins (edgeopt/quantizers/): adding a mode is adding one file. A toy mode dropped into
the package's folder is accepted by params validation and built by the quantize stage, with nothing else edited."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgeopt import quantizers
from edgeopt.candidates import FILES, RUNTIMES
from edgeopt.errors import ParamsError
from edgeopt.params import load_params
from edgeopt.paths import Paths

REPO = Path(__file__).resolve().parents[1]
TOY = "toy_fp32_copy"
TOY_MODULE = textwrap.dedent('''
    """toy_fp32_copy: the FP32 ONNX model as it is (a test's new quantizer)."""
    import shutil

    from edgeopt.quantizers import Job, Quantizer, register


    def build(job: Job) -> dict:
        shutil.copyfile(job.source.onnx_path, job.primary)
        return {"copied_from": job.source.onnx_path.name}


    register(Quantizer("toy_fp32_copy", "FP32 ONNX copy (toy)", precision="fp32", runtime="onnxruntime",
                       format="onnx", build=build))
''')


@pytest.fixture()
def toy_mode(tmp_path, monkeypatch):
    """A file toy_fp32_copy.py in a folder of the edgeopt.quantizers package (its __path__), as a user adds one;
    the registry and sys.modules are restored afterwards."""
    folder = tmp_path / "more_quantizers"
    folder.mkdir()
    (folder / f"{TOY}.py").write_text(TOY_MODULE)
    monkeypatch.setattr(quantizers, "__path__", [*quantizers.__path__, str(folder)])
    monkeypatch.setattr(quantizers, "_REGISTRY", dict(quantizers._REGISTRY))
    yield TOY
    sys.modules.pop(f"edgeopt.quantizers.{TOY}", None)


def test_each_mode_module_registers_the_mode_it_is_named_after():
    modes = quantizers.available()
    files = sorted(p.stem for p in Path(quantizers.__file__).parent.glob("*.py") if not p.stem.startswith("_"))
    assert sorted(modes) == files == ["ort_int8_dynamic", "ort_int8_static", "ov_fp16", "ov_int8", "ov_int8_ac",
                                      "qat_int8"]
    for name, q in modes.items():
        assert q.build.__module__ == f"edgeopt.quantizers.{name}" and q.runtime in RUNTIMES and q.format in FILES
    assert quantizers.listed() == [m for m in files if m != "qat_int8"]  # QAT runs by quantize.qat, not by name


def test_listing_modes_imports_no_quantization_library():
    """params.py validates mode names at every stage's start: that must not cost torch / NNCF / ORT imports."""
    code = ("import sys, edgeopt.params as p; p.quantizers().available(); "
            "heavy = [m for m in ('torch', 'nncf', 'onnxruntime', 'openvino', 'onnx') if m in sys.modules]; "
            "assert not heavy, heavy")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr


def test_a_mode_added_as_one_file_is_validated_and_built(toy_mode, tiny_project):
    assert toy_mode in quantizers.listed() and quantizers.get(toy_mode).runtime == "onnxruntime"
    params_file = tiny_project / "params.yaml"
    with pytest.raises(ParamsError, match=rf"Input should be .*'{TOY}'.* \(got 'toy_int3'\)"):
        load_params(params_file, ["quantize.modes=[toy_int3]"])
    with pytest.raises(ParamsError, match=rf"\['{TOY}'\] need a runtime that target.runtime='openvino' excludes"):
        load_params(params_file, [f"quantize.modes=[{TOY}]", "distill.quantize_modes=[]",
                                  "target.runtime=openvino"])

    import stages.quantize as quantize

    for name in ("clustered", "finetuned", "student"):
        shutil.copy(tiny_project / "models" / "baseline.pt", tiny_project / "models" / f"{name}.pt")
    params = load_params(params_file, [f"quantize.modes=[{TOY}]", "distill.enabled=false",
                                       "quantize.calibration_size=64"])
    metrics = quantize.run(params, Paths(tiny_project))
    index = json.loads((tiny_project / "models" / "quantized" / "index.json").read_text())
    (entry,) = index["candidates"]
    assert entry["name"] == f"clustered_{TOY}" and entry["status"] == "ok", entry
    assert (entry["runtime"], entry["format"], entry["precision"]) == ("onnxruntime", "onnx", "fp32")
    assert entry["files"] == [f"clustered_{TOY}/model.onnx"] and entry["details"]["copied_from"] == "model.onnx"
    assert entry["details"]["agreement_fp32"] == 1.0 and entry["details"]["val_drop"] == 0.0  # the FP32 model
    assert (tiny_project / "models" / "quantized" / entry["files"][0]).is_file()
    assert metrics["ok"] == 1 and metrics["candidates"][f"clustered_{TOY}"]["runtime"] == "onnxruntime"


def test_a_mode_must_name_a_known_runtime_and_format(monkeypatch):
    monkeypatch.setattr(quantizers, "_REGISTRY", dict(quantizers._REGISTRY))
    with pytest.raises(ValueError, match="runtime 'tflite'"):
        quantizers.register(quantizers.Quantizer("tfl_int8", "TFLite", "int8", "tflite", "tflite", build=print))
