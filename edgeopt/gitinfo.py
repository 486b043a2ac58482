"""Git lineage of a working tree: commit and whether tracked files differ from it (torch-free)."""
from __future__ import annotations

import os
import re
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


def tag_versions(root: Path, model: str) -> dict[str, str]:
    """{version: commit} of the registration tags `model@vX.Y.Z` in the repository at `root`."""
    out = _git(root, "for-each-ref", "--format=%(refname:strip=2) %(*objectname) %(objectname)", f"refs/tags/{model}@v*")
    versions = {}
    for line in (out or "").splitlines():
        name, *shas = line.split()
        version = name.rsplit("@v", 1)[-1]
        versions[version] = next((s for s in shas if s), "")  # annotated: the tagged commit; light: the ref
    return versions


def create_tag(root: Path, tag: str, message: str) -> str | None:
    """Annotated tag on HEAD; None on success, else git's first error line. Never moves an existing tag."""
    env = {**os.environ}
    for var, default in (("GIT_COMMITTER_NAME", "edgeopt"), ("GIT_COMMITTER_EMAIL", "edgeopt@localhost")):
        env.setdefault(var, default)  # an annotated tag needs an identity; CI runners often have none
    env.setdefault("GIT_AUTHOR_NAME", env["GIT_COMMITTER_NAME"])
    env.setdefault("GIT_AUTHOR_EMAIL", env["GIT_COMMITTER_EMAIL"])
    try:
        out = subprocess.run(["git", "-C", str(root), "tag", "-a", tag, "-m", message], capture_output=True,
                             text=True, env=env, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return None if out.returncode == 0 else (out.stderr.strip().splitlines() or ["git tag failed"])[0]


def show_file(root: Path, path: str, rev: str = "HEAD") -> str | None:
    """A file's content at `rev` (None outside git, or when the file is not in that commit)."""
    return _git(root, "show", f"{rev}:./{path}")


def commit_url(root: Path, commit: str | None) -> str | None:
    """A web link to `commit` when the `origin` remote is on a known forge (GitHub, GitLab, Bitbucket, Codeberg),
    else None. Credentials in the remote URL are never part of the link."""
    remote = _git(root, "remote", "get-url", "origin") if commit else None
    if not remote:
        return None
    m = re.match(r"^(?:https?://(?:[^@/]+@)?|ssh://(?:[^@/]+@)?|[^@/]+@)([^/:]+)[:/](.+?)(?:\.git)?/?$", remote)
    if not m or not re.fullmatch(r"[\w.-]+(?:/[\w.-]+)+", m.group(2)):
        return None
    host, repo = m.group(1).split(":")[0], m.group(2)
    if host in ("github.com", "codeberg.org") or host.startswith("gitlab."):
        return f"https://{host}/{repo}" + ("/-/commit/" if host.startswith("gitlab.") else "/commit/") + commit
    if host == "bitbucket.org":
        return f"https://{host}/{repo}/commits/{commit}"
    return None
