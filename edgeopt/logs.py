"""Terminal output: edgeopt's own lines at INFO, third-party noise only when asked for (`-v`). Light, torch-free.

Two sources of noise mixed with edgeopt's lines:
- NNCF adds its own stdout handler at INFO to the `nncf` logger when it is imported
  (nncf/common/logging/logger.py, `propagate = False`), so its `INFO:nncf:...` lines print whatever the root
  logger's level is. The logger must keep INFO: the quantize stage reads the accuracy-control outcome from those
  records. So only NNCF's own handler is raised to WARNING, right after NNCF creates it (an import hook: NNCF is
  imported late, inside the quantize stage, and creating the `nncf` logger earlier would break its logger class).
- Python warnings from libraries (a CUDA notice on `import torch`, deprecations): shown only for edgeopt's own
  modules unless verbose.

    setup_logging(verbose=args.verbose)      # the CLI, once
    quiet_third_party()                      # any other entry point (a Prefect flow, a notebook)
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys
import warnings
from typing import Any, Callable

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# libraries whose INFO chatter is not for the user (NNCF is handled by its handler, see above)
THIRD_PARTY = ("great_expectations", "openvino", "onnxruntime", "matplotlib", "PIL", "urllib3", "filelock",
               "dvclive", "dvc", "torch", "distributed", "numexpr")
OWN_MODULES = r"(edgeopt|stages|flows|benchmarks)(\.|$)"
NNCF_LOGGER_MODULE = "nncf.common.logging.logger"


def setup_logging(verbose: bool = False) -> None:
    """edgeopt's loggers at INFO (DEBUG with verbose); everything else at WARNING unless verbose."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format=FORMAT)
    logging.getLogger("edgeopt").setLevel(logging.DEBUG if verbose else logging.INFO)
    if not verbose:
        quiet_third_party()


def quiet_third_party() -> None:
    """Third-party loggers, NNCF's stdout handler and library warnings down to WARNING / hidden. Idempotent."""
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(logging.WARNING)
    after_import(NNCF_LOGGER_MODULE, _quiet_nncf_handlers)
    warnings.filterwarnings("ignore")  # library warnings: hidden ...
    warnings.filterwarnings("default", module=OWN_MODULES)  # ... edgeopt's own still shown (checked first)


def _quiet_nncf_handlers(module: Any) -> None:
    for handler in getattr(module, "nncf_logger", logging.getLogger("nncf")).handlers:
        if getattr(handler, "stream", None) in (sys.stdout, sys.stderr):  # NNCF's console handler, not a capture
            handler.setLevel(logging.WARNING)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs callback(module) right after `name` is executed by the normal import machinery (once)."""

    def __init__(self, name: str, callback: Callable[[Any], None]):
        self.name, self.callback = name, callback

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # one-shot; and the real finders must find the module now
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader, callback = spec.loader, self.callback

        class Loader(importlib.abc.Loader):
            def create_module(self, spec):
                return loader.create_module(spec)

            def exec_module(self, module):
                loader.exec_module(module)
                callback(module)

        spec.loader = Loader()
        return spec


def after_import(name: str, callback: Callable[[Any], None]) -> None:
    """callback(module) once `name` is imported: now if it already is, else right after its import."""
    if name in sys.modules:
        callback(sys.modules[name])
    elif not any(isinstance(f, _AfterImport) and f.name == name for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(name, callback))
