"""Shrink the OpenVINO wheel to fit the GPU machine's 64 MiB upload: drop the GPU/NPU plugins and the TF, TFLite,
Paddle, JAX and GGUF frontend libraries (edgeopt converts ONNX and, for QAT, PyTorch), the C++ headers and the
GPU kernel cache. 59 -> 31 MB.

Fixed after the run it served: its first version matched `paddle_frontend` anywhere in a path, so it also
dropped openvino/tools/ovc/moc_frontend/paddle_frontend_utils.py, which the model converter imports
unconditionally; `openvino.convert_model` was then missing (OpenVINO's __init__ swallows that ImportError) and
the run's sensitivity stage failed. Only libs/ and the frontend/<name>/ Python packages are touched now, and
the result is checked for the converter's modules.

    python slim_openvino_wheel.py openvino-2026.4.1-...-cp312-...whl OUT_DIR
"""
import re
import sys
import zipfile
from pathlib import Path

DROP = re.compile(r"^openvino/(libs/(libopenvino_intel_(gpu|npu)_plugin\.so"
                  r"|libopenvino_(tensorflow|tensorflow_lite|paddle|jax|gguf)_frontend\.so[.\d]*|cache\.json)"
                  r"|include/.*|frontend/(tensorflow|tensorflow_lite|paddle|jax)/.*)$")
NEEDED = ("openvino/tools/ovc/convert_impl.py", "openvino/tools/ovc/moc_frontend/paddle_frontend_utils.py",
          "openvino/libs/libopenvino_onnx_frontend.so", "openvino/libs/libopenvino_intel_cpu_plugin.so")


def main(src: Path, out_dir: Path) -> Path:
    out = out_dir / src.name
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zout:
        for info in zin.infolist():
            if DROP.match(info.filename):
                continue
            data = zin.read(info.filename)
            if info.filename.endswith(".dist-info/RECORD"):  # pip reads every row: no blank ones
                data = b"".join(ln + b"\n" for ln in data.split(b"\n")
                                if ln.strip() and not DROP.match(ln.decode().split(",")[0]))
            zout.writestr(info, data)
    names = zipfile.ZipFile(out).namelist()
    missing = [n for n in NEEDED if not any(x.startswith(n) for x in names)]
    if missing:
        raise SystemExit(f"slimmed wheel lacks {missing}")
    return out


if __name__ == "__main__":
    print(main(Path(sys.argv[1]), Path(sys.argv[2])))
