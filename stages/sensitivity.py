"""Per-layer quantization sensitivity: quantize one layer at a time, rank layers by validation accuracy drop.

Each Conv2d / Linear of the `quantize.source` checkpoint is simulated in INT8 on its own, the way the
OpenVINO / ONNX Runtime INT8 models run it: weights per output channel, symmetric, 8 bit (narrow range, as
NNCF does), and the layer's input activations with 256 levels over the range seen on a seeded calibration
subset of *train* (asymmetric for `quantize.preset: mixed`, symmetric for `performance`). Per-channel
symmetric weight quantization commutes with BatchNorm folding, so quantizing the unfolded PyTorch conv is
exact w.r.t. the folded conv the runtimes quantize. Ties in accuracy drop (common on small validation sets)
are broken by the normalised MSE of the logits against FP32.

Writes reports/sensitivity.json (ranking with the PyTorch layer name and the matching ONNX and OpenVINO node
names, so the quantize stage can keep the top layers in FP32), reports/sensitivity.png and metrics.
"""
from __future__ import annotations

import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from edgeopt.arrays import calibration_set
from edgeopt.errors import StageError
from edgeopt.io import atomic_write_bytes, write_json
from edgeopt.models import load_checkpoint
from edgeopt.params import Params
from edgeopt.paths import Paths
from edgeopt.stage import stage, stage_main
from edgeopt.training import set_seed

REPORT = "sensitivity.json"
PLOT = "sensitivity.png"
BATCH = 256


def fake_quant_weight(w: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Per-output-channel symmetric quantize-dequantize, narrow range [-(2^(b-1)-1), 2^(b-1)-1]."""
    qmax = 2 ** (bits - 1) - 1
    amax = w.detach().abs().flatten(1).amax(1).clamp_min(1e-12).view(-1, *[1] * (w.dim() - 1))
    scale = amax / qmax
    return (w / scale).round().clamp(-qmax, qmax) * scale


def fake_quant_activation(x: torch.Tensor, lo: float, hi: float, symmetric: bool, bits: int = 8) -> torch.Tensor:
    """Per-tensor quantize-dequantize over a calibrated range, with zero exactly representable."""
    levels = 2 ** bits - 1
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if symmetric and lo < 0:
        a = max(-lo, hi)
        lo, hi = -a, a
    elif symmetric:
        lo = 0.0
    scale = max(hi - lo, 1e-12) / levels
    zero = round(-lo / scale)
    return ((x / scale).round() + zero).clamp(0, levels).sub(zero).mul(scale)


def weighted_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


@torch.no_grad()
def activation_ranges(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[float, float]]:
    """(min, max) of every weighted layer's input over the calibration batch."""
    ranges: dict[str, list[float]] = {}

    def hook(name):
        def pre(_m, inputs):
            t = inputs[0]
            lo, hi = ranges.setdefault(name, [float("inf"), float("-inf")])
            ranges[name] = [min(lo, float(t.min())), max(hi, float(t.max()))]
        return pre

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in weighted_layers(model).items()]
    try:
        for s in range(0, len(x), BATCH):
            model(x[s:s + BATCH])
    finally:
        for h in handles:
            h.remove()
    return {n: (lo, hi) for n, (lo, hi) in ranges.items()}


@contextmanager
def quantized(model: nn.Module, names: list[str], ranges: dict[str, tuple[float, float]],
              symmetric_act: bool) -> Iterator[nn.Module]:
    """The model with the named layers simulated in INT8 (weights and input activations); restored on exit."""
    layers = weighted_layers(model)
    saved = {n: layers[n].weight.data.clone() for n in names}
    handles = []
    try:
        for n in names:
            m = layers[n]
            m.weight.data = fake_quant_weight(m.weight.data)
            lo, hi = ranges[n]
            handles.append(m.register_forward_pre_hook(
                lambda _m, inp, lo=lo, hi=hi: (fake_quant_activation(inp[0], lo, hi, symmetric_act),)))
        yield model
    finally:
        for h in handles:
            h.remove()
        for n, w in saved.items():
            layers[n].weight.data = w


@torch.no_grad()
def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(x[s:s + BATCH]) for s in range(0, len(x), BATCH)])


def _score(logits: torch.Tensor, ref: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(accuracy %, logits MSE normalised by the FP32 logits' variance)."""
    acc = 100.0 * float((logits.argmax(1) == labels).float().mean())
    nmse = float(((logits - ref) ** 2).mean() / ref.var().clamp_min(1e-12))
    return acc, nmse


def graph_node_names(model: nn.Module, input_shape: tuple[int, int, int], opset: int) -> tuple[dict, dict]:
    """PyTorch layer -> ONNX node and -> OpenVINO op, on the same export the quantize stage makes."""
    import onnx
    import openvino as ov

    from edgeopt.onnx_export import export_onnx, layer_node_map, ov_layer_map

    with tempfile.TemporaryDirectory(prefix="edgeopt-sensitivity-") as tmp:
        path = export_onnx(model, input_shape, Path(tmp) / "model.onnx", opset)
        proto = onnx.load(str(path))
        onnx_names = layer_node_map(model, proto, input_shape)
        ov_names = ov_layer_map(ov.convert_model(str(path)), proto, onnx_names)
    return onnx_names, ov_names


def rank_layers(model: nn.Module, x_cal: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
                symmetric_act: bool) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Ranking (most sensitive first) and summary accuracies (FP32, every layer INT8 at once)."""
    model.eval()
    ranges = activation_ranges(model, x_cal)
    ref = logits_of(model, x_val)
    fp32_acc, _ = _score(ref, ref, y_val)
    rows = []
    for name, layer in weighted_layers(model).items():
        if name not in ranges:  # defined but never called in forward: nothing to quantize
            continue
        with quantized(model, [name], ranges, symmetric_act):
            acc, nmse = _score(logits_of(model, x_val), ref, y_val)
        rows.append({"layer": name, "type": "conv" if isinstance(layer, nn.Conv2d) else "linear",
                     "weights": int(layer.weight.numel()), "accuracy": round(acc, 4),
                     "drop": round(fp32_acc - acc, 4), "output_nmse": float(f"{nmse:.6g}"),
                     "activation_range": [round(v, 6) for v in ranges[name]]})
    with quantized(model, [r["layer"] for r in rows], ranges, symmetric_act):
        all_acc, all_nmse = _score(logits_of(model, x_val), ref, y_val)
    rows.sort(key=lambda r: (-r["drop"], -r["output_nmse"], r["layer"]))
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    return rows, {"fp32_accuracy": round(fp32_acc, 4), "all_int8_accuracy": round(all_acc, 4),
                  "all_int8_output_nmse": float(f"{all_nmse:.6g}")}


def _plot(path: Path, rows: list[dict[str, Any]], title: str, keep: int = 0) -> None:
    """Two bar charts, most sensitive layer on top: the accuracy drop (points) and the output error (log scale:
    it spans decades). The legend says what each colour is; bars of the `keep` layers quantize leaves in FP32
    are hatched."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.ticker import LogLocator, NullFormatter

    fig, axes = plt.subplots(1, 2, figsize=(10, max(3.0, 0.38 * len(rows) + 1.9)), sharey=True)
    drop_ax, err_ax = axes
    if rows:
        shown = rows[::-1]  # most sensitive on top
        names = [r["layer"] for r in shown]
        hatch = ["//" if r["rank"] <= keep else "" for r in shown] if keep else [""] * len(shown)
        drops = [r["drop"] for r in shown]
        bars = drop_ax.barh(names, drops, color="tab:red", hatch=hatch, edgecolor="white")
        drop_ax.axvline(0, color="black", lw=0.8)
        drop_ax.bar_label(bars, labels=[f"{d:+.2f}" if d else "0" for d in drops], padding=3, fontsize=7)
        drop_ax.margins(x=0.25)
        errs = [r["output_nmse"] for r in shown]
        floor = min([e for e in errs if e > 0], default=1e-6) / 3  # log scale: an exact 0 is drawn at the floor
        bars = err_ax.barh(names, [max(e, floor) for e in errs], color="tab:blue", hatch=hatch, edgecolor="white")
        err_ax.bar_label(bars, labels=[f"{e:.1e}" if e > 0 else "0" for e in errs], padding=3, fontsize=7)
        err_ax.set_xscale("log")
        err_ax.set_xlim(floor, max(max(errs), floor * 10) * 8)
        # one tick per decade, labelled 1e-05 ... : the default linear ticks ran together
        err_ax.xaxis.set_major_locator(LogLocator(base=10, numticks=6))
        err_ax.xaxis.set_minor_formatter(NullFormatter())
        handles = [Patch(color="tab:red", label="accuracy drop with only this layer in INT8"),
                   Patch(color="tab:blue", label="output error with only this layer in INT8")]
        if keep:
            handles.append(Patch(facecolor="white", hatch="//", edgecolor="dimgray",
                                 label=f"kept in FP32 by quantize (keep_sensitive: {keep})"))
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    else:
        drop_ax.text(0.5, 0.5, "sensitivity analysis disabled\n(sensitivity.enabled: false)",
                     ha="center", va="center", transform=drop_ax.transAxes)
    drop_ax.set_xlabel("validation accuracy drop (points; below 0: INT8 scored higher)")
    err_ax.set_xlabel("logits MSE / FP32 logits variance (log scale)")
    for ax in axes:
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07 if rows else 0, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


@stage("sensitivity")
def run(params: Params, paths: Paths) -> dict[str, Any]:
    source = params.quantize.source
    ckpt = paths.checkpoint(source)
    report: dict[str, Any] = {"enabled": params.sensitivity.enabled, "source": source,
                              "source_checkpoint": _rel(ckpt, paths.root), "ranking": []}
    if not params.sensitivity.enabled:  # DVC outs must exist: empty ranking + placeholder plot
        write_json(paths.report(REPORT), report)
        _plot(paths.report(PLOT), [], f"{source}: per-layer INT8 sensitivity (disabled)")
        return {"enabled": False, "source": source, "layers": 0}

    set_seed(params.seed, params.train.threads)
    model, _cfg, _info = load_checkpoint(ckpt)
    data = calibration_set(paths.prepared, params.quantize.calibration_size, params.seed, params.sensitivity.max_samples)
    x_cal, x_val, y_val = (torch.from_numpy(a) for a in (data.calib, data.val_x, data.val_y))

    rows, summary = rank_layers(model, x_cal, x_val, y_val, symmetric_act=params.quantize.preset == "performance")
    if not rows:
        raise StageError(f"{ckpt}: the model has no Conv2d / Linear layer that runs in forward; "
                         "nothing to quantize")
    onnx_names, ov_names = graph_node_names(model, data.input_shape, params.export.opset)
    for r in rows:
        r["onnx_node"] = onnx_names.get(r["layer"])
        r["openvino_node"] = ov_names.get(r["layer"])

    report.update({
        "method": "one layer at a time: INT8 per-channel symmetric weights + 8-bit input activations "
                  f"({'symmetric' if params.quantize.preset == 'performance' else 'asymmetric'}, min/max "
                  "calibrated on train); drop = FP32 accuracy - accuracy (points), ties by logits NMSE",
        "split": "val", "samples": int(len(y_val)), "calibration_split": "train",
        "calibration_samples": int(len(x_cal)),
        "preset": params.quantize.preset, **summary, "ranking": rows})
    write_json(paths.report(REPORT), report)
    _plot(paths.report(PLOT), rows, f"{source}: per-layer INT8 sensitivity ({len(y_val)} val images, "
                                    f"FP32 {summary['fp32_accuracy']:.2f} %)", keep=params.quantize.keep_sensitive)
    top = rows[0]
    return {"enabled": True, "source": source, "layers": len(rows), "samples": int(len(y_val)),
            **summary, "max_drop": top["drop"], "most_sensitive": top["layer"],
            "layers_with_drop": sum(r["drop"] > 0 for r in rows)}


if __name__ == "__main__":  # what dvc.yaml runs: python -m stages.<name>
    sys.exit(stage_main(run))
