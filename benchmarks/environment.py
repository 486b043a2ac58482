"""What a benchmark ran on: hardware, library versions, git commit (+ dirty flag). Read-only git commands only."""
from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

from edgeopt.gitinfo import git_state  # shared with the promote stage's lineage

LIBRARIES = ("torch", "torchvision", "torch-pruning", "nncf", "openvino", "onnxruntime", "onnx", "numpy",
             "scikit-learn", "dvc", "prefect", "great-expectations")


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def hardware() -> dict[str, Any]:
    from edgeopt.runtime import hardware_info

    info = hardware_info()
    info["logical_cpus"] = os.cpu_count()
    try:
        mem_kb = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                      if ln.startswith("MemTotal:"))
        info["memory_gb"] = round(mem_kb / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        info["memory_gb"] = None
    try:
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        info["load_average_at_start"] = None
    flags = ""
    try:
        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    except OSError:
        pass
    info["isa"] = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
                   if f" {f}" in flags]
    info["gpu"] = gpu_name()
    return info


def gpu_name() -> str | None:
    """The first NVIDIA GPU's name (nvidia-smi; no torch in the runner), None without one: training goes there
    under train.device auto, so it sets a run's stage times and numerics as much as the CPU model."""
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        proc = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    names = proc.stdout.strip().splitlines() if proc.returncode == 0 else []
    return names[0].strip() or None if names else None


def environment(repo: Path) -> dict[str, Any]:
    return {"hardware": hardware(), "libraries": library_versions(), "python": platform.python_version(),
            "git": git_state(repo)}
