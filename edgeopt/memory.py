"""This process's memory, from the kernel's own counters (/proc/self/status on Linux), with a fallback elsewhere.
Torch-free, dependency-free."""
from __future__ import annotations

from pathlib import Path


def status_mb(field: str) -> float | None:
    """A /proc/self/status field (kB) in MB, e.g. VmHWM, RssAnon; None where there is no /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return None


def max_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def peak_rss_mb() -> float:
    """Peak resident memory of this process. On Linux VmHWM: ru_maxrss carries the parent's high-water mark across
    fork + exec, so a stage started by a big process (`dvc repro`, a test runner with torch loaded) reported the
    parent's size instead of its own."""
    hwm = status_mb("VmHWM")
    return max_rss_mb() if hwm is None else hwm


def anon_rss_mb() -> float:
    """Current anonymous resident memory (heap, arrays), excluding file-backed pages of memory-mapped data,
    which the kernel can drop at any time. Falls back to the peak RSS off Linux."""
    anon = status_mb("RssAnon")
    return max_rss_mb() if anon is None else anon
