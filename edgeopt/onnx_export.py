"""PyTorch -> ONNX -> OpenVINO IR, written atomically; and where each PyTorch layer lands in the graph.

Exporter: torch 2.15 defaults to the dynamo (torch.export) exporter. For these CNNs we prefer the TorchScript
exporter when it is present: it takes ~0.1 s instead of several seconds, honours the opset exactly (the dynamo
path emits opset 18 and its down-conversion fails e.g. on MobileNetV2's ReduceMean), and names nodes after the
module path (`/features/features.0/Conv`), which makes the ONNX / OpenVINO graphs readable for NNCF ignored
scopes and sensitivity reports. Dynamo is the fallback (and can be forced) if TorchScript export is removed
or fails. Both fold eval-mode BatchNorm into the preceding conv.

The model has one input `input` (N, C, H, W) float32 and one output `logits`, with a dynamic batch axis.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator, Literal

from edgeopt.errors import ExportError, first_line

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")
Exporter = Literal["auto", "torchscript", "dynamo"]


@contextlib.contextmanager
def _temp_dir_next_to(path: Path) -> Iterator[Path]:
    """A scratch directory on the same file system as `path`, so the final os.replace is atomic."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _example_input(input_shape: tuple[int, ...] | list[int], batch: int):
    import torch

    shape = tuple(int(d) for d in input_shape)
    if len(shape) == 4:
        shape = shape[1:]
    if len(shape) != 3:
        raise ExportError(f"input_shape must be (C, H, W) or (N, C, H, W), got {list(input_shape)}")
    return torch.zeros(batch, *shape)


def _export_torchscript(model, x, path: Path, opset: int, dynamic_batch: bool) -> None:
    import torch

    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "legacy exporter": chosen on purpose, see above
        torch.onnx.export(model, (x,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          opset_version=opset, dynamo=False, dynamic_axes=axes, do_constant_folding=True)


def _export_dynamo(model, x, path: Path, opset: int, dynamic_batch: bool) -> None:
    import torch

    shapes = ({0: torch.export.Dim("batch", min=1, max=65536)},) if dynamic_batch else None
    torch.onnx.export(model, (x,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      opset_version=opset, dynamo=True, dynamic_shapes=shapes, external_data=False,
                      verbose=False, report=False)


def export_onnx(model, input_shape: tuple[int, ...] | list[int], path: str | Path, opset: int = 17, *,
                dynamic_batch: bool = True, exporter: Exporter = "auto") -> Path:
    """Export a PyTorch model (in eval mode) to one self-contained, checked ONNX file, atomically.

    input_shape: (C, H, W) or (N, C, H, W) (N is ignored: the batch axis is dynamic unless dynamic_batch=False,
    then it is 1). The exporter used is recorded in the model's metadata (`edgeopt.exporter`).
    """
    import onnx

    path = Path(path)
    was_training = model.training
    model.eval()
    errors: list[str] = []
    order = ["torchscript", "dynamo"] if exporter == "auto" else [exporter]
    try:
        with _temp_dir_next_to(path) as tmp:
            for name in order:
                out = tmp / f"{name}.onnx"
                try:
                    # dynamo specialises a size-1 example dimension, so show it a batch of 2
                    x = _example_input(input_shape, 2 if name == "dynamo" and dynamic_batch else 1)
                    (_export_torchscript if name == "torchscript" else _export_dynamo)(
                        model, x, out, opset, dynamic_batch)
                    proto = onnx.load(str(out))
                    onnx.checker.check_model(proto, full_check=True)
                except ExportError:
                    raise
                except Exception as exc:  # try the next exporter, report all causes if none works
                    errors.append(f"{name}: {first_line(exc, with_type=True)}")
                    continue
                onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props},
                                                    "edgeopt.exporter": name})
                final = tmp / "final.onnx"
                onnx.save_model(proto, str(final))
                os.replace(final, path)
                return path
    finally:
        model.train(was_training)
    raise ExportError(f"{path}: ONNX export failed with every exporter ({'; '.join(errors)}); "
                      "check that the model runs on an input of shape (1, C, H, W) and uses standard layers")


def save_ir(ov_model, xml_path: str | Path, compress_fp16: bool = False) -> Path:
    """Save an openvino.Model as IR (.xml + .bin) atomically: both files appear, or neither changes."""
    import openvino as ov

    xml_path = Path(xml_path)
    if xml_path.suffix != ".xml":
        raise ExportError(f"{xml_path}: an OpenVINO IR path must end in .xml")
    bin_path = xml_path.with_suffix(".bin")
    with _temp_dir_next_to(xml_path) as tmp:
        # compress_to_fp16 defaults to True in openvino.save_model: always pass it explicitly.
        ov.save_model(ov_model, str(tmp / "model.xml"), compress_to_fp16=compress_fp16)
        os.replace(tmp / "model.bin", bin_path)  # weights first: a reader finding the new .xml finds its .bin
        os.replace(tmp / "model.xml", xml_path)
    return xml_path


def onnx_to_ir(onnx_path: str | Path, xml_path: str | Path, compress_fp16: bool = False) -> Path:
    """Convert an ONNX file to OpenVINO IR with `openvino.convert_model` + `save_model` (atomic)."""
    import openvino as ov

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ExportError(f"{onnx_path}: ONNX file not found; export it first")
    try:
        ov_model = ov.convert_model(str(onnx_path))
    except Exception as exc:
        raise ExportError(f"{onnx_path}: OpenVINO could not convert the ONNX model: "
                          f"{first_line(exc, with_type=True)}") from None
    return save_ir(ov_model, xml_path, compress_fp16)


# --- PyTorch layer <-> graph node ---------------------------------------------------------------------------

def weighted_layers_in_call_order(model, input_shape: tuple[int, ...] | list[int]) -> list[tuple[str, Any]]:
    """(name, module) of every Conv2d / Linear in the order a forward pass calls them."""
    import torch
    from torch import nn

    order: list[tuple[str, Any]] = []
    hooks = [m.register_forward_hook(lambda mod, _i, _o, n=n: order.append((n, mod)))
             for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(_example_input(input_shape, 1))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    seen: set[str] = set()
    return [(n, m) for n, m in order if not (n in seen or seen.add(n))]


def onnx_weighted_nodes(onnx_model) -> list[tuple[str, str, list[int]]]:
    """(node name, op type, weight shape) of every node with a constant weight, in graph (topological) order."""
    inits = {i.name: list(i.dims) for i in onnx_model.graph.initializer}
    consts = {o: list(n.attribute[0].t.dims) for n in onnx_model.graph.node
              if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value" for o in n.output}
    out = []
    for n in onnx_model.graph.node:
        if n.op_type in WEIGHTED_OPS and len(n.input) > 1:
            shape = inits.get(n.input[1], consts.get(n.input[1]))
            if shape is not None:
                out.append((n.name, n.op_type, shape))
    return out


def layer_node_map(model, onnx_model_or_path, input_shape: tuple[int, ...] | list[int]) -> dict[str, str]:
    """PyTorch Conv2d/Linear name -> ONNX node name.

    Matched by call order and checked by weight size, which works for both exporters (TorchScript names nodes
    after module paths, dynamo does not). Raises ExportError when the graphs do not line up.
    """
    import math

    import onnx

    proto = onnx_model_or_path if not isinstance(onnx_model_or_path, (str, Path)) else onnx.load(str(onnx_model_or_path))
    layers = weighted_layers_in_call_order(model, input_shape)
    nodes = onnx_weighted_nodes(proto)
    if len(layers) != len(nodes):
        raise ExportError(f"the ONNX graph has {len(nodes)} weighted nodes but the model {len(layers)} "
                          "Conv2d/Linear layers; cannot match layers to nodes")
    mapping = {}
    for (lname, mod), (nname, _op, shape) in zip(layers, nodes):
        if mod.weight.numel() != math.prod(shape):
            raise ExportError(f"layer {lname!r} (weight {list(mod.weight.shape)}) does not match ONNX node "
                              f"{nname!r} (weight {shape}); cannot match layers to nodes")
        mapping[lname] = nname
    return mapping


OV_WEIGHTED_OPS = {"Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData"}


def _ov_weight_source(op) -> str:
    """Friendly name of the Constant feeding an op's weight input (through Convert / Reshape / Transpose)."""
    node = op.input_value(1).get_node()
    while node.get_type_name() in ("Convert", "Reshape", "Transpose", "Unsqueeze", "Squeeze"):
        node = node.input_value(0).get_node()
    return node.get_friendly_name() if node.get_type_name() == "Constant" else ""


def ov_layer_map(ov_model, onnx_model, layer_nodes: dict[str, str]) -> dict[str, str | None]:
    """PyTorch layer -> OpenVINO op converted from its ONNX node (None when not found).

    OpenVINO keeps the ONNX node name, appends '/WithoutBiases' when it splits off the bias Add, or, for the
    last layer, renames the op after the output tensor; the weight Constant keeps the ONNX initializer name.
    """
    by_onnx = {n.name: n for n in onnx_model.graph.node}
    ops = [op for op in ov_model.get_ordered_ops() if op.get_type_name() in OV_WEIGHTED_OPS]
    out: dict[str, str | None] = {}
    for layer, onnx_name in layer_nodes.items():
        node = by_onnx.get(onnx_name)
        weight = node.input[1] if node is not None and len(node.input) > 1 else None
        outputs = set(node.output) if node is not None else set()
        found = next((op for op in ops if op.get_friendly_name() in (onnx_name, onnx_name + "/WithoutBiases")), None)
        found = found or next((op for op in ops if weight and _ov_weight_source(op) == weight), None)
        found = found or next((op for op in ops if outputs & set(op.output(0).get_names())), None)
        out[layer] = found.get_friendly_name() if found is not None else None
    return out
