"""The stable file names every stage reads and writes. Stages talk only through these files."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from edgeopt.errors import PathEscapeError


def confined(base: str | Path, rel: object, what: str = "path") -> Path:
    """`base / rel`, refused unless `rel` is a relative path without '..' that resolves (symlinks followed)
    inside `base`. Every path a record names goes through here before it is read, copied or run."""
    if (not isinstance(rel, str) or not rel or "\x00" in rel or "\\" in rel
            or PurePosixPath(rel).is_absolute() or ".." in PurePosixPath(rel).parts):
        raise PathEscapeError(f"{what} {rel!r} refused: must be a relative path inside {base} "
                              f"(no '..', no absolute path)")
    root = os.path.realpath(base)
    real = os.path.realpath(os.path.join(base, rel))
    if real == root:
        raise PathEscapeError(f"{what} {rel!r} refused: names {base} itself, not a file inside it")
    if os.path.commonpath([root, real]) != root:
        raise PathEscapeError(f"{what} {rel!r} refused: resolves to {real}, outside {base} (a symlink?)")
    return Path(base) / rel


def _inside(*parts: str) -> property:
    """A fixed path inside the project root, as a read-only attribute of Paths."""
    return property(lambda self: self.root.joinpath(*parts))


@dataclass(frozen=True)
class Paths:
    root: Path = Path(".")

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # data
    prepared = _inside("data", "prepared")
    meta = _inside("data", "prepared", "meta.json")

    def split(self, name: str) -> Path:
        return self.prepared / name

    # models (PyTorch checkpoints: state dict + architecture config)
    def checkpoint(self, name: str) -> Path:
        """baseline | pruned | finetuned | clustered | student | student_nokd | qat"""
        return self.root / "models" / f"{name}.pt"

    quantized = _inside("models", "quantized")
    exported = _inside("models", "exported")
    candidates = _inside("models", "exported", "candidates.json")

    # metrics and reports
    def metrics(self, stage: str) -> Path:
        return self.root / "metrics" / f"{stage}.json"

    reports = _inside("reports")

    def report(self, name: str) -> Path:
        return self.reports / name

    def live(self, stage: str) -> Path:
        return self.root / "dvclive" / stage

    def registry(self, root: str) -> Path:
        """The registry root: `registry.root` as given when absolute, else inside the project. Inside a DVC
        experiment (`dvc exp run`, also --temp / --queue, which run in a scratch copy) that is the project the
        experiment belongs to (DVC_ROOT), never the scratch copy: releases must outlive the experiment."""
        p = Path(root).expanduser()
        if p.is_absolute():
            return p
        if os.environ.get("DVC_EXP_NAME") and os.environ.get("DVC_ROOT"):
            return Path(os.environ["DVC_ROOT"]) / p
        return self.root / p
