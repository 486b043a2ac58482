"""gate: apply the release gates (accuracy drop, latency, size) to every candidate -> reports/gate.json,
metrics/gate.json. Torch-free. The decision itself is edgeopt.gating.

The report is written in every outcome. When no candidate passes the stage raises GateNonePassError (exit 3),
when its inputs are missing, stale or tampered with StaleInputsError (exit 4): `dvc repro` stops before
`promote`, and metrics/gate.json (written by the stage decorator from the error) still holds the verdict for
`dvc metrics show`.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from edgeopt.errors import GateNonePassError, StaleInputsError
from edgeopt.gating import build_report, format_table, rel, stale_report, summary
from edgeopt.io import write_json
from edgeopt.params import Params
from edgeopt.paths import Paths
from edgeopt.stage import stage, stage_main

log = logging.getLogger("edgeopt.gate")


@stage("gate")
def run(params: Params, paths: Paths, latency_report: str | Path | None = None) -> dict[str, Any]:
    try:
        report = build_report(params, paths, latency_report)
    except StaleInputsError as exc:
        report = stale_report(params, exc)
        write_json(paths.report("gate.json"), report)
        exc.metrics = summary(report)
        raise
    write_json(paths.report("gate.json"), report)
    print(format_table(report), flush=True)
    metrics = summary(report)
    if report["selected"] is None:
        reasons = "; ".join(f"{r['name']}: {', '.join(r['reasons'])}" for r in report["rows"])
        raise GateNonePassError(f"no candidate passes the gates ({reasons}); see "
                                f"{rel(paths.report('gate.json'), paths)}", metrics=metrics)
    log.info("gate: %s selected (%d of %d pass)", report["selected"], len(report["passed"]), len(report["rows"]))
    return metrics


if __name__ == "__main__":  # what dvc.yaml runs: python -m stages.<name>
    sys.exit(stage_main(run))
