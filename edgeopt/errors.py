"""Every error edgeopt raises on purpose, with its exit code; the one-line message a CLI prints. Torch-free,
dependency-free: the bottom of the import graph (docs/ARCHITECTURE.md).

Each class carries `exit_code`; the CLI (`edgeopt`), `python -m stages.<name>` (edgeopt.stage.stage_main), the
Prefect tasks and the benchmark runner all map an exception with `exit_code_for`, so a new error class is mapped
everywhere by being defined here. tests/test_architecture.py fails on an exception class elsewhere in the
project that does not derive from EdgeoptError.
"""
from __future__ import annotations

import errno

EXIT_OK = 0
EXIT_FAILED = 1          # a stage failed (the message says why)
EXIT_USAGE = 2           # bad params, bad arguments
EXIT_NONE_PASS = 3       # gate: no candidate passes; evaluate-release: accuracy drifted
EXIT_STALE = 4           # gate / promote: inputs missing, stale or tampered with; evaluate-release: no accuracy
                         # recorded to check drift against
EXIT_REGRESSION = 5      # promote: the release would regress its channel
EXIT_INTERRUPTED = 130   # Ctrl-C (128 + SIGINT), as a shell reports it

# OS errors a flaky or full disk, a read-only mount or wrong permissions raise: one line and what to do.
DISK_HINTS = {
    errno.ENOSPC: "disk full: free space and rerun (atomic writes: outputs already in place were not touched)",
    errno.EDQUOT: "disk quota exceeded: free space and rerun (outputs already in place were not touched)",
    errno.EROFS: "read-only file system: write to a writable location (e.g. --root, registry.root)",
    errno.EACCES: "permission denied: check the ownership and permissions of that path",
    errno.EPERM: "operation not permitted: check the ownership and permissions of that path",
    errno.EFBIG: "file too large for this file system or the process's file size limit",
    errno.EIO: "I/O error: the disk or network file system failed; check it and rerun",
    errno.ENAMETOOLONG: "path too long: use a shorter directory",
    errno.ELOOP: "too many symbolic links (a symlink loop)",
    errno.ENOTDIR: "a path component is a file where a directory is expected",
    errno.EISDIR: "a directory where a file is expected",
    errno.EMFILE: "too many open files: raise `ulimit -n`",
}


class EdgeoptError(Exception):
    """An error whose message says what is wrong and what to do: printed as one line, no traceback, and the
    process exits with `exit_code`."""
    exit_code = EXIT_FAILED


# --- exit 2: bad params or arguments --------------------------------------------------------------------------

class ParamsError(EdgeoptError, ValueError):
    """A params file that cannot be used; the message names the key and what is allowed."""
    exit_code = EXIT_USAGE


class BenchSettingsError(EdgeoptError, ValueError):
    """Bench settings no run can finish with (no runs, an infinite budget, ...)."""
    exit_code = EXIT_USAGE


class FolderMismatch(EdgeoptError, ValueError):
    """evaluate-release: DATA_DIR does not fit the release (not a folder, no class folders, a class the release
    does not know). An argument problem."""
    exit_code = EXIT_USAGE


# --- exit 1: a stage or command failed ------------------------------------------------------------------------

class DataError(EdgeoptError, ValueError):
    """Data that cannot be used; the message names the file, class or count at fault."""


class ValidationFailed(DataError):
    """Prepared data failed one or more expectations (the validate stage). `metrics`: the expectations' report,
    what metrics/validate.json records."""

    def __init__(self, message: str, metrics: dict | None = None):
        super().__init__(message)
        self.metrics = metrics


class NothingEvaluated(DataError):
    """evaluate-release: not one image of DATA_DIR could be decoded, nothing to measure."""


class ImageError(DataError):
    """An image file that cannot become model input; `kind` is the problem class, the message names the file."""

    def __init__(self, path: object, kind: str, detail: str = ""):
        self.path, self.kind, self.detail = str(path), kind, detail
        super().__init__(f"{path}: {kind}" + (f" ({detail})" if detail else ""))


class CheckpointError(EdgeoptError, ValueError):
    """A checkpoint that cannot be used; the message names the file."""


class PipelineError(EdgeoptError, ValueError):
    """dvc.yaml cannot be used as the pipeline definition; the message names the file and the entry."""


class JSONFileError(EdgeoptError, ValueError):
    """A JSON record that cannot be used: not valid JSON, ambiguous, too large, or not a regular file."""


class NotRegularFileError(EdgeoptError, ValueError):
    """A FIFO, device, socket or directory where a file is expected (opening a FIFO would block forever)."""


class PathEscapeError(EdgeoptError, ValueError):
    """A path named inside a record (manifest, candidates.json, gate report, ...) that is not a plain relative
    path resolving inside the record's directory. Gate and promote report it as StaleInputsError (exit 4)."""


class StageError(EdgeoptError, RuntimeError):
    """A stage could not do its job; the message says why and what to do."""


class UndeclaredParam(StageError):
    """A stage read a param that its dvc.yaml entry does not declare (DVC would not rerun it on a change)."""


class ExportError(EdgeoptError, RuntimeError):
    """A model that could not be exported or converted; the message names the file and the cause."""


class RuntimeModelError(EdgeoptError, RuntimeError):
    """A model file that cannot be loaded or run; the message names the file and what to do."""


class RegistryError(EdgeoptError, RuntimeError):
    """A registry operation refused; the message says why."""


# --- exits 3-5: the release decisions -------------------------------------------------------------------------

class GateNonePassError(EdgeoptError, RuntimeError):
    """No candidate passes the gates. `metrics`: the gate's summary, what metrics/gate.json records."""
    exit_code = EXIT_NONE_PASS

    def __init__(self, message: str, metrics: dict | None = None):
        super().__init__(message)
        self.metrics = metrics


class StaleInputsError(EdgeoptError, RuntimeError):
    """Gate / promote inputs are missing, stale or tampered with. `metrics`: what the stage records instead."""
    exit_code = EXIT_STALE

    def __init__(self, message: str, metrics: dict | None = None):
        super().__init__(message)
        self.metrics = metrics


class PromotionRefused(EdgeoptError, RuntimeError):
    """Promotion policy: the release would regress the channel it moves; the message gives both accuracies and
    how to override (registry.allow_regression)."""
    exit_code = EXIT_REGRESSION


# --- mapping and messages -------------------------------------------------------------------------------------

def safe_text(text: object) -> str:
    """Text from files and records made safe for a terminal line: control and format characters (newline, ESC,
    carriage return, bidi overrides) are shown escaped instead of acting on the terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))


def first_line(exc: BaseException, limit: int = 300, with_type: bool = False) -> str:
    """The first useful line of an exception's message (OpenVINO puts its source location lines first), cut at
    `limit` characters; `with_type` prefixes the exception's class name."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Exception from", "Check '"))] or lines
    if with_type:
        return f"{type(exc).__name__}: {useful[0][:limit] if useful else ''}"
    return (useful[0] if useful else type(exc).__name__)[:limit]


def os_error_of(exc: BaseException) -> OSError | None:
    """The OSError with an errno behind `exc` (itself, or its cause/context: libraries wrap them), else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return None


def describe(exc: BaseException) -> str:
    """The one-line message a CLI prints for `exc` (an OS error as 'path: reason; what to do')."""
    err = os_error_of(exc)
    if err is None or (exc is not err and exit_code_for(exc, wrapped=False) is not None):
        return str(exc)
    where = ": ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
    hint = DISK_HINTS.get(err.errno)
    return (f"{where}: " if where else "") + (err.strerror or str(err)) + (f"; {hint}" if hint else "")


def error_line(command: str, exc: BaseException, one_line: bool = False) -> str:
    """`edgeopt <command>: error: <message>`, escaped for a terminal; `one_line` escapes newlines too (the line
    a parent process picks up: dvc_runner, the Prefect tasks)."""
    text = describe(exc)
    text = safe_text(text) if one_line else "\n".join(safe_text(line) for line in text.split("\n"))
    return f"edgeopt {command}: error: {text}"


def exit_code_for(exc: BaseException, wrapped: bool = True) -> int | None:
    """The exit code of an expected error (its class's, or the one it carries), else None: an unexpected error
    keeps its traceback. A missing file, and with `wrapped` any OS error behind `exc` (disk full, read-only,
    permissions), is exit 1."""
    if isinstance(exc, EdgeoptError):
        return int(exc.exit_code)
    if isinstance(exc, FileNotFoundError):
        return EXIT_FAILED
    if wrapped and os_error_of(exc) is not None:
        return EXIT_FAILED
    return None


def is_expected(exc: BaseException) -> bool:
    """True for errors whose message already says what happened and what to do (shown as they are)."""
    return isinstance(exc, EdgeoptError)
