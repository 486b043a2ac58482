"""Run one dvc.yaml stage through DVC, so dvc.lock is the one record of what ran, whoever orchestrates.

    python -m flows.dvc_runner ROOT STAGE      # what the Prefect task runs, in a child process

`dvc repro --single-item STAGE` semantics (the flow orders the stages): DVC skips a stage whose deps, params and
outs match dvc.lock, restores one from its run cache, or runs its `cmd` and records it in dvc.lock. The child
prints the stage's own output, then one line `EDGEOPT-DVC-RESULT {json}` saying whether the stage ran, came
from a cache or failed (with the command's exit code), which the parent turns into the task's state.
"""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

MARK = "EDGEOPT-DVC-RESULT "
_EXIT = re.compile(r"exited with (-?\d+)")


@dataclass
class Outcome:
    stage: str
    status: str                  # ran | skipped | run_cache | failed
    exit_code: int | None = None  # the stage command's exit code when it failed
    message: str = ""            # why it failed: the stage's own error line, else DVC's
    lock_busy: bool = False      # another DVC process held the repository lock (worth a retry)
    output: list[str] = field(default_factory=list)

    @property
    def cached(self) -> bool:
        return self.status in ("skipped", "run_cache")


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The stage commands (`edgeopt <stage>`) must resolve to this environment's edgeopt, activated or not."""
    env = {**os.environ, **(extra or {})}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_stage(root: str | Path, stage: str, on_line: Callable[[str], None] = print,
              env: dict[str, str] | None = None) -> Outcome:
    """Reproduce `stage` of the DVC project at `root` in a child process, streaming its output to `on_line`."""
    proc = subprocess.Popen([sys.executable, "-m", "flows.dvc_runner", str(root), stage], cwd=str(root),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env(env),
                            errors="replace")
    result: dict = {}
    lines: list[str] = []
    assert proc.stdout is not None
    with proc.stdout:
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            if line.startswith(MARK):
                result = json.loads(line[len(MARK):])
                continue
            if lines and line == lines[-1] and line.startswith(("Running stage", "> ")):
                continue  # DVC's logger and its CLI set-up both print these
            lines.append(line)
            on_line(line)
    code = proc.wait()
    if not result:  # the child died before reporting (killed, out of memory)
        result = {"status": "failed", "error": f"DVC process for {stage!r} ended with exit code {code} and no "
                                               "result", "exit_code": None}
    message = ""
    if result["status"] == "failed":
        own = [ln.split(": error: ", 1)[1] for ln in lines if ln.startswith("edgeopt ") and ": error: " in ln]
        message = own[-1] if own else result.get("error", "failed")
    return Outcome(stage, result["status"], result.get("exit_code"), message, bool(result.get("lock_busy")), lines)


def _exit_code(exc: BaseException | None) -> int | None:
    while exc is not None:
        m = _EXIT.search(str(exc))
        if m:
            return int(m.group(1))
        exc = exc.__cause__ or exc.__context__
    return None


class _RunCacheNote(logging.Handler):
    """DVC says on its logger when it restores a stage from its run cache instead of running the command."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.hit = False

    def emit(self, record: logging.LogRecord) -> None:
        self.hit = self.hit or "skipping run" in record.getMessage()


def _main(root: str, stage: str) -> int:
    from dvc.exceptions import DvcException
    from dvc.lock import LockError
    from dvc.logger import setup
    from dvc.repo import Repo

    setup(log_colors=False)  # DVC's own lines ("Running stage", "didn't change, skipping") as on its CLI
    note = _RunCacheNote()
    logging.getLogger("dvc").addHandler(note)
    try:
        with Repo(root) as repo:
            done = repo.reproduce(stage, single_item=True)
    except LockError as exc:
        print(MARK + json.dumps({"status": "failed", "error": str(exc), "lock_busy": True}), flush=True)
        return 1
    except DvcException as exc:
        cause = exc.__cause__
        error = f"{exc}: {cause}" if cause else str(exc)
        print(MARK + json.dumps({"status": "failed", "error": error, "exit_code": _exit_code(exc)}), flush=True)
        return 1
    status = ("run_cache" if note.hit else "ran") if done else "skipped"
    print(MARK + json.dumps({"status": status}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1], sys.argv[2]))
