"""What the NNCF modes share: preset and target device from params, the calibration dataset, the FP32 scope."""
from __future__ import annotations

from typing import Any


def common(params: Any) -> dict[str, Any]:
    """nncf.quantize's preset (quantize.preset) and target device (target.device: CPU / GPU / NPU, else ANY)."""
    import nncf

    preset = nncf.QuantizationPreset.PERFORMANCE if params.quantize.preset == "performance" \
        else nncf.QuantizationPreset.MIXED
    device = params.target.device.upper().split(".")[0]
    return {"preset": preset, "target_device": getattr(nncf.TargetDevice, device, nncf.TargetDevice.ANY)}


def calibration(data: Any):
    import nncf

    # batch 1: NNCF's fast bias correction assumes per-sample statistics
    return nncf.Dataset([data.calib[i:i + 1] for i in range(len(data.calib))])


def ignored(source: Any, keep: list[str]):
    """The OpenVINO ops of the PyTorch layers `keep` as an nncf.IgnoredScope (None when there are none)."""
    import nncf

    names = [source.ov_nodes[layer] for layer in keep if source.ov_nodes.get(layer)]
    return nncf.IgnoredScope(names=names) if names else None


def ptq_details(job: Any) -> dict[str, Any]:
    """What every NNCF post-training mode records."""
    return {"calibration_samples": len(job.data.calib), "preset": job.params.quantize.preset,
            "kept_fp32": job.keep_fp32}
