"""Map the project's known error types to CLI exit codes and one-line messages (torch-free)."""
from __future__ import annotations

import errno

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


class GateNonePassError(RuntimeError):
    """No candidate passes the gates (exit 3)."""


class StaleInputsError(RuntimeError):
    """Gate / promote inputs are missing, stale or tampered with (exit 4)."""


class RegistryError(RuntimeError):
    """A registry operation refused (exit 1); the message says why."""


class PromotionRefused(RuntimeError):
    """Promotion policy: the release would regress the channel it moves (exit 5); the message gives both
    accuracies and how to override (registry.allow_regression)."""


def safe_text(text: object) -> str:
    """Text from files and records made safe for a terminal line: control and format characters (newline, ESC,
    carriage return, bidi overrides) are shown escaped instead of acting on the terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))


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


def exit_code_for(exc: BaseException, wrapped: bool = True) -> int | None:
    try:
        from edgeopt.params import ParamsError
    except ImportError:  # device install (no pydantic): no params were loaded, so none can be wrong
        ParamsError = ()  # type: ignore[assignment]  # isinstance(x, ()) is False

    if isinstance(exc, GateNonePassError):
        return 3
    if isinstance(exc, StaleInputsError):
        return 4
    if isinstance(exc, PromotionRefused):
        return 5
    if isinstance(exc, ParamsError):
        return 2
    names = {t.__name__ for t in type(exc).__mro__}
    if "BenchSettingsError" in names:
        return 2
    if names & {"DataError", "CheckpointError", "StageError", "RegistryError", "ValidationFailed",
                "RuntimeModelError", "FileNotFoundError"}:
        return 1
    if isinstance(exc, ValueError) and type(exc).__module__.startswith(("edgeopt", "stages")):
        return 1
    if wrapped and os_error_of(exc) is not None:  # disk full, read-only, permissions: anywhere, even wrapped
        return 1
    return None
