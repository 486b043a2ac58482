"""Git lineage of a working tree: commit and whether tracked files differ from it (torch-free)."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state(root: Path, ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    """commit, short, branch, dirty (tracked changes outside `ignore`), modified and untracked file counts."""
    commit = _git(root, "rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None, "note": "not a git repository (or git missing)"}
    excludes = [f":(exclude){p}" for p in ignore]
    tracked = _git(root, "status", "--porcelain", "--untracked-files=no", "--", ".", *excludes) or ""
    untracked = _git(root, "status", "--porcelain", "--untracked-files=normal") or ""
    return {"commit": commit, "short": commit[:10], "branch": _git(root, "rev-parse", "--abbrev-ref", "HEAD"),
            "dirty": bool(tracked), "modified_files": len(tracked.splitlines()),
            "untracked_files": len([ln for ln in untracked.splitlines() if ln.startswith("??")])}
