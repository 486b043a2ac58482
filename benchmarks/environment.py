"""What a benchmark ran on: hardware, library versions, git commit (+ dirty flag). Read-only git commands only."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

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


def git_state(repo: Path) -> dict[str, Any]:
    """Commit of HEAD and whether tracked files differ from it (untracked files listed separately)."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None, "note": "not a git repository (or git missing)"}
    tracked = git("status", "--porcelain", "--untracked-files=no") or ""
    untracked = git("status", "--porcelain", "--untracked-files=normal") or ""
    return {"commit": commit, "short": commit[:10], "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
            "dirty": bool(tracked), "modified_files": len(tracked.splitlines()),
            "untracked_files": len([ln for ln in untracked.splitlines() if ln.startswith("??")])}


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
    return info


def environment(repo: Path) -> dict[str, Any]:
    return {"hardware": hardware(), "libraries": library_versions(), "python": platform.python_version(),
            "git": git_state(repo)}
