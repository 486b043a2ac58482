"""Terminal output: NNCF's INFO lines and library warnings stay out of edgeopt's output unless -v, while the records
the quantize stage captures from NNCF still arrive."""
from __future__ import annotations

import subprocess
import sys

from tests.release_helpers import REPO

SCRIPT = """
import logging, sys, warnings
from edgeopt.logs import setup_logging
setup_logging(verbose=sys.argv[1] == "-v")
import nncf  # the real one: it installs its own stdout handler at INFO on import
from nncf.common.logging import nncf_logger
seen = []
class Capture(logging.Handler):  # what stages/quantize.py does to read the accuracy-control outcome
    def emit(self, record): seen.append(record.getMessage())
nncf_logger.addHandler(Capture(logging.INFO))
nncf_logger.info("nncf-info-line")
nncf_logger.warning("nncf-warning-line")
warnings.warn_explicit("library-warning", UserWarning, "lib.py", 1, module="torch.cuda")
warnings.warn_explicit("own-warning", UserWarning, "stages/train.py", 1, module="stages.train")
logging.getLogger("great_expectations").info("gx-info-line")
logging.getLogger("edgeopt.test").info("edgeopt-info-line")
print("captured:", ",".join(seen))
"""


def _run(flag: str) -> str:
    res = subprocess.run([sys.executable, "-c", SCRIPT, flag], capture_output=True, text=True, timeout=300,
                         cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout + res.stderr


def test_third_party_noise_only_with_verbose():
    quiet = _run("")
    assert "INFO:nncf:nncf-info-line" not in quiet and "library-warning" not in quiet and "gx-info-line" not in quiet
    assert "WARNING:nncf:nncf-warning-line" in quiet  # warnings still reach the user
    assert "own-warning" in quiet and "edgeopt-info-line" in quiet
    assert "captured: nncf-info-line,nncf-warning-line" in quiet  # the NNCF logger itself still at INFO
    loud = _run("-v")
    assert "INFO:nncf:nncf-info-line" in loud and "library-warning" in loud and "gx-info-line" in loud
