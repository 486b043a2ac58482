"""What the Prefect UI shows for a release: artifacts built from the files the stages wrote.

The rows, the Pareto front and the plot come from the report stage's functions, so the UI and
reports/report.md always agree. Published once the gate ran, whatever its verdict (when nothing passes is when
the table matters most):

- table `edge-release-candidates`: candidate x metrics x gate verdict (and the reasons a candidate fails);
- markdown `edge-release-summary`: outcome, stage states, the pick, the registry entry and the Pareto plot as
  a data URI (a browser refuses a file:// image inside the http:// UI; a data URI renders);
- link `edge-release-registry`: the registry entry as a file:// URL; markdown `edge-release-model-card`.
"""
from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.states import State

from edgeopt.params import Params
from edgeopt.paths import Paths
from flows.tasks import completed_result
from stages.report import COLUMNS, candidate_rows, optional_json, pareto_front, plot_pareto


def table_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Report rows with the report's column headers, numbers rounded, and why a candidate fails."""
    def value(v: Any) -> Any:
        return round(v, 3) if isinstance(v, float) else v

    return [{**{header: value(r.get(key)) for key, header, _ in COLUMNS}, "reasons": "; ".join(r["reasons"]) or "-"}
            for r in rows]


def release_rows(paths: Paths) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Candidate rows from metrics/evaluate.json, metrics/bench.json and reports/gate.json."""
    evaluate, bench = optional_json(paths.metrics("evaluate")), optional_json(paths.metrics("bench"))
    gate = optional_json(paths.report("gate.json"))
    return (candidate_rows(evaluate, bench, gate) if evaluate and bench else []), gate


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


@task(name="publish-release")
def publish(params: Params, root: str, stage_states: dict[str, str], reason: str | None,
            promoted: dict[str, Any] | None) -> list[str]:
    """Create the release's UI artifacts; returns their keys."""
    logger = get_run_logger()
    paths = Paths(Path(root))
    rows, gate = release_rows(paths)
    keys = []
    if rows:
        t = (gate or {}).get("thresholds", {})
        create_table_artifact(
            table=table_rows(rows), key="edge-release-candidates",
            description=f"Candidates x metrics x gate verdict. Gates: drop <= {t.get('max_accuracy_drop')} pt, "
                        f"{t.get('latency_percentile')} <= {t.get('max_latency_ms')} ms, size <= "
                        f"{t.get('max_size_bytes')} B. Selected: {(gate or {}).get('selected') or 'none'}.")
        keys.append("edge-release-candidates")
    else:
        logger.warning("no candidates measured yet (metrics/evaluate.json, metrics/bench.json): no table")
    entry = paths.root / promoted["path"] if promoted and promoted.get("path") else None
    md = summary_markdown(params, stage_states, reason, (gate or {}).get("selected"), promoted, entry, rows)
    create_markdown_artifact(markdown=md, key="edge-release-summary",
                             description="Release outcome, registry entry and Pareto front")
    keys.append("edge-release-summary")
    if entry is not None:
        create_link_artifact(link=entry.resolve().as_uri(), link_text=promoted.get("release") or entry.name,
                             key="edge-release-registry", description="Registry entry of this release")
        card = paths.report("model_card.md")
        keys.append("edge-release-registry")
        if stage_states.get("report") in ("Completed", "Cached") and card.exists():
            create_markdown_artifact(markdown=card.read_text(), key="edge-release-model-card",
                                     description="Model card of the release")
            keys.append("edge-release-model-card")
    logger.info("published artifacts: %s", ", ".join(keys))
    return keys


def summary_markdown(params: Params, stage_states: dict[str, str], reason: str | None, selected: str | None,
                     promoted: dict[str, Any] | None, entry: Path | None, rows: list[dict[str, Any]]) -> str:
    head = (f"**Stopped**: {reason}" if reason else
            f"**Released** `{promoted.get('release')}` (channel `{promoted.get('channel')}`), candidate `{selected}`"
            if promoted else f"**Completed** (promote did not run), gate pick `{selected or '-'}`")
    lines = [f"# Edge release: {params.registry.model_name}", "", head, "",
             f"Model `{params.model.arch}` on `{params.data.source}` ({params.data.image_size}px), target "
             f"`{params.target.name}` (runtime {params.target.runtime}).", ""]
    if entry is not None:
        lines += [f"Registry entry: [{entry.resolve()}]({entry.resolve().as_uri()}) "
                  f"(manifest sha256 `{promoted.get('manifest_sha256')}`)", ""]
    lines += ["| stage | state |", "|---|---|", *(f"| {n} | {s} |" for n, s in stage_states.items())]
    front = pareto_front(rows, "p50_ms")
    if front:
        png = plot_pareto(rows, "p50_ms", "p50 latency (ms)", "Accuracy vs latency")
        lines += ["", "## Pareto front (accuracy vs p50 latency)", "", ", ".join(f"`{n}`" for n in front), "",
                  f"![accuracy vs latency]({png_data_uri(png)})"]
    return "\n".join(lines)


def publish_release(params: Params, root: str, states: dict[str, State], reason: str | None) -> None:
    """Publish what the run produced (called by the flow after the stages finished). A failure to publish is
    logged by its task and does not change the outcome of the release."""
    publish(params, root, {n: s.name for n, s in states.items()}, reason, completed_result(states, "promote"),
            return_state=True)
