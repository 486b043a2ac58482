"""Fixtures shared by the reliability tests."""
from __future__ import annotations

import pytest

from edgeopt.registry import Registry


@pytest.fixture()
def reg(tmp_path) -> Registry:
    """A small registry in tmp_path/registry: m@0.0.1 (model.onnx) with `production` pointing at it, and m@0.0.2
    (model.onnx + extra/w.bin, a file in a subdirectory); sources in tmp_path/src."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.onnx").write_bytes(b"model one")
    r = Registry(tmp_path / "registry")
    r.publish("m", {"model.onnx": src / "model.onnx"}, {"candidate": "one", "primary": "model.onnx"})
    r.point("m", "production", "0.0.1")
    (src / "model.onnx").write_bytes(b"model two")
    (src / "w.bin").write_bytes(b"weights two")
    r.publish("m", {"model.onnx": src / "model.onnx", "extra/w.bin": src / "w.bin"},
              {"candidate": "two", "primary": "model.onnx"})
    return r
