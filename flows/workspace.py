"""One flow run at a time per project, with its params applied to params.yaml for the run's duration.

DVC reads params.yaml, so a run's overrides (and another params file) are written into it exactly as
`dvc exp run -S key=value` writes them (comments kept), and dvc.lock records the values each stage ran with.
When the run ends the user's params.yaml is put back byte for byte; `dvc status` then truthfully reports the
stages whose recorded params differ from the file. A run killed in between leaves a backup that the next run
restores first.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Iterator

import yaml

from edgeopt.errors import EdgeoptError, ParamsError
from edgeopt.io import atomic_write_bytes
from edgeopt.params import render_params_file

log = logging.getLogger("edgeopt.flows")
STATE = Path(".dvc") / "tmp"
LOCK = STATE / "edgeopt-run.lock"
BACKUP = STATE / "edgeopt-params.yaml.orig"


class ProjectBusy(EdgeoptError, RuntimeError):
    """Another flow run holds the project (exit 1; the message says which lock)."""


def restore_interrupted(root: Path) -> bool:
    """Put back the params.yaml a killed run left modified; True when there was one."""
    backup = root / BACKUP
    if not backup.is_file():
        return False
    atomic_write_bytes(root / "params.yaml", backup.read_bytes())
    backup.unlink()
    log.warning("restored params.yaml from %s (an earlier run was interrupted)", backup)
    return True


@contextlib.contextmanager
def project_run(root: Path, params_file: str = "params.yaml", overrides: list[str] | None = None,
                timeout: float = 0.0) -> Iterator[None]:
    """Hold the project's run lock; params.yaml carries `params_file` + `overrides` until the block ends."""
    from filelock import FileLock, Timeout

    (root / STATE).mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / LOCK), timeout=timeout)
    try:
        lock.acquire()
    except Timeout:
        raise ProjectBusy(f"{root}: another edgeopt flow run holds {LOCK}; runs of one project share its files, "
                          "so they take turns (the deployments' concurrency limit is 1)") from None
    try:
        restore_interrupted(root)
        target = root / "params.yaml"
        original = target.read_bytes()
        base = None
        other = Path(params_file) if Path(params_file).is_absolute() else root / params_file
        if other.resolve() != target.resolve():
            try:
                base = yaml.safe_load(other.read_text()) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise ParamsError(f"{other}: cannot read params file ({exc})") from None
        wanted = render_params_file(original.decode(), overrides, base).encode()
        changed = wanted != original
        if changed:
            atomic_write_bytes(root / BACKUP, original)
            atomic_write_bytes(target, wanted)
        try:
            yield
        finally:
            if changed:
                atomic_write_bytes(target, original)
                (root / BACKUP).unlink(missing_ok=True)
    finally:
        lock.release()
