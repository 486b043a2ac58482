"""Map the project's known error types to CLI exit codes (torch-free)."""
from __future__ import annotations


class GateNonePassError(RuntimeError):
    """No candidate passes the gates (exit 3)."""


class StaleInputsError(RuntimeError):
    """Gate / promote inputs are missing, stale or tampered with (exit 4)."""


class RegistryError(RuntimeError):
    """A registry operation refused (exit 1); the message says why."""


class PromotionRefused(RuntimeError):
    """Promotion policy: the release would regress the channel it moves (exit 5); the message gives both
    accuracies and how to override (registry.allow_regression)."""


def exit_code_for(exc: BaseException) -> int | None:
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
    if names & {"DataError", "CheckpointError", "StageError", "RegistryError", "ValidationFailed",
                "RuntimeModelError", "FileNotFoundError"}:
        return 1
    if isinstance(exc, ValueError) and type(exc).__module__.startswith(("edgeopt", "stages")):
        return 1
    return None
