"""What the Prefect UI shows for a release: artifacts built from the files the stages wrote, attached to the flow
run itself (created in the flow, not in a task), and a progress artifact while the stages run.

The rows, the Pareto front and the plot come from the report stage's functions, so the UI and
reports/report.md always agree. Published once the stages stopped, whatever the gate's verdict (when nothing
passes is when the table matters most):

- progress `edge-release-progress`: stages done / to go while the run goes, with an ETA from the last run;
- table `edge-release-candidates`: the gate's verdict and reasons first, then the metrics;
- markdown `edge-release-summary`: outcome, stage states, the pick and the Pareto plot (a data URI: a browser
  refuses file:// images inside the http:// UI);
- markdown `edge-release-registry`: the release, its channel, manifest sha256, where it lies and the commands
  that pull and verify it (a file:// link would not open from the UI); link `edge-release-commit`: the
  commit on its forge when the git remote is one (GitHub, GitLab, ...);
- markdown `edge-release-model-card`.
Every name that comes from files (candidates, classes, params) is escaped (edgeopt.markup).
"""
from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import (create_link_artifact, create_markdown_artifact, create_progress_artifact,
                               create_table_artifact, update_progress_artifact)
from prefect.states import State

from edgeopt import markup as mk
from edgeopt.io import optional_json
from edgeopt.params import Params
from edgeopt.paths import Paths
from edgeopt.results import COLUMNS, candidate_rows, pareto_front, plot_pareto
from flows.tasks import completed_result

PASSES = "passes every gate"


def table_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Report rows: verdict and reasons first (what people look for), numbers rounded, text escaped (the UI
    renders cells as Markdown: a bare '-' would become a bullet)."""
    def value(v: Any) -> Any:
        return round(v, 3) if isinstance(v, float) else mk.md_cell(v) if isinstance(v, str) else v

    out = []
    for r in rows:
        cells = {header: value(r.get(key)) for key, header, _ in COLUMNS}
        verdict, name = cells.pop("gate"), cells.pop("candidate")
        out.append({"gate": verdict, "candidate": name,
                    "reasons": mk.md_cell("; ".join(r["reasons"])) if r["reasons"] else PASSES, **cells})
    return out


def release_rows(paths: Paths) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Candidate rows from metrics/evaluate.json, metrics/bench.json and reports/gate.json."""
    evaluate, bench = optional_json(paths.metrics("evaluate")), optional_json(paths.metrics("bench"))
    gate = optional_json(paths.report("gate.json"))
    return (candidate_rows(evaluate, bench, gate) if evaluate and bench else []), gate


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


class Progress:
    """The run's progress artifact and log line: stages done / to go, and an ETA from the stage times the last
    run recorded (metrics/<stage>.json cost.wall_s)."""

    def __init__(self, root: Path, stages: list[str]):
        self.stages, self.done = stages, 0
        paths = Paths(root)
        self.expected = {s: ((optional_json(paths.metrics(s)) or {}).get("cost") or {}).get("wall_s") for s in stages}
        self.artifact = create_progress_artifact(progress=0.0, key="edge-release-progress",
                                                 description=self.describe())

    def eta_s(self) -> float | None:
        left = [self.expected[s] for s in self.stages[self.done:]]
        return sum(left) if left and all(isinstance(x, (int, float)) for x in left) else None

    def describe(self) -> str:
        eta = self.eta_s()
        when = "" if eta is None else f", about {mk.human(eta / 60) if eta >= 60 else round(eta)} " \
                                      f"{'min' if eta >= 60 else 's'} to go (stage times of the last run)"
        return f"{self.done} of {len(self.stages)} stages done{when}"

    def stage_done(self, name: str, state: State) -> None:
        self.done += 1
        update_progress_artifact(self.artifact, progress=100.0 * self.done / len(self.stages),
                                 description=self.describe())
        get_run_logger().info("progress: %s (%s %s)", self.describe(), name, state.name)


def publish_release(params: Params, root: str, states: dict[str, State], reason: str | None) -> list[str]:
    """Create the release's UI artifacts on the flow run; returns their keys. A failure to publish is logged and
    does not change the outcome of the release."""
    logger = get_run_logger()
    try:
        return _publish(params, Path(root), {n: s.name for n, s in states.items()}, reason,
                        completed_result(states, "promote"))
    except Exception as exc:  # the artifacts are a view; the release's own files are already written
        logger.warning("could not publish the UI artifacts: %s: %s", type(exc).__name__, exc)
        return []


def _publish(params: Params, root: Path, stage_states: dict[str, str], reason: str | None,
             promoted: dict[str, Any] | None) -> list[str]:
    logger = get_run_logger()
    paths = Paths(root)
    rows, gate = release_rows(paths)
    keys = []
    if rows:
        t = (gate or {}).get("thresholds", {})
        conf = t.get("accuracy_confidence")
        bound = f" (its {100 * conf:g} % upper bound)" if isinstance(conf, (int, float)) and conf else ""
        create_table_artifact(
            table=table_rows(rows), key="edge-release-candidates",
            description=f"Candidates: the gate's verdict, then the metrics. Gates: drop{bound} <= "
                        f"{mk.num(t.get('max_accuracy_drop'))} pt, {t.get('latency_percentile')} <= "
                        f"{mk.num(t.get('max_latency_ms'), 3)} ms, size <= {mk.size(t.get('max_size_bytes'))}. "
                        f"Selected: {mk.md_code((gate or {}).get('selected') or 'none')}.")
        keys.append("edge-release-candidates")
    else:
        logger.warning("no candidates measured yet (metrics/evaluate.json, metrics/bench.json): no table")
    create_markdown_artifact(markdown=summary_markdown(params, stage_states, reason, (gate or {}).get("selected"),
                                                       promoted, rows),
                             key="edge-release-summary", description="Release outcome and Pareto front")
    keys.append("edge-release-summary")
    if promoted and promoted.get("path"):
        create_markdown_artifact(markdown=registry_markdown(params, root, promoted), key="edge-release-registry",
                                 description=f"Registry entry {promoted.get('release')}")
        keys.append("edge-release-registry")
        url = _commit_url(root, promoted)
        if url:
            create_link_artifact(link=url, link_text=f"commit of {promoted.get('release')}",
                                 key="edge-release-commit", description="The commit this release was built from")
            keys.append("edge-release-commit")
        card = paths.report("model_card.md")
        if stage_states.get("report") in ("Completed", "Cached") and card.exists():
            create_markdown_artifact(markdown=card.read_text(), key="edge-release-model-card",
                                     description="Model card of the release")
            keys.append("edge-release-model-card")
    logger.info("published artifacts: %s", ", ".join(keys))
    return keys


def _commit_url(root: Path, promoted: dict[str, Any]) -> str | None:
    from edgeopt.gitinfo import commit_url

    manifest = optional_json(root / promoted["path"] / "manifest.json") or {}
    return commit_url(root, ((manifest.get("lineage") or {}).get("git") or {}).get("commit"))


def registry_markdown(params: Params, root: Path, promoted: dict[str, Any]) -> str:
    release, where = promoted.get("release"), (root / promoted["path"]).resolve()
    ref = json.dumps(f"{params.registry.model_name}@{promoted.get('channel')}")  # quoted for a shell
    rows = [("release", mk.md_code(release, True)), ("channel", mk.md_code(promoted.get("channel"), True)),
            ("previous on the channel", mk.md_code(promoted.get("previous") or "-", True)),
            ("candidate", mk.md_code(promoted.get("candidate"), True)),
            ("manifest sha256", mk.md_code(promoted.get("manifest_sha256"), True)),
            ("git tag", mk.md_code(promoted.get("tag") or "-", True)),
            ("path", mk.md_code(str(where), True))]
    policy = promoted.get("policy") or {}
    if policy.get("channel_accuracy") is not None:
        rows.append(("vs the channel's previous release", f"{mk.pct(policy['candidate_accuracy'])} vs "
                                                          f"{mk.pct(policy['channel_accuracy'])} on the same test split"))
    return "\n".join([f"# {mk.md_text(release)}", "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), "",
                      "On a device or in CI:", "", "```bash",
                      f"edgeopt registry pull {ref} --to release/",
                      "edgeopt registry verify --dir release/",
                      "edgeopt predict release/ image.png", "```"])


def summary_markdown(params: Params, stage_states: dict[str, str], reason: str | None, selected: str | None,
                     promoted: dict[str, Any] | None, rows: list[dict[str, Any]]) -> str:
    head = (f"**Stopped**: {mk.md_text(reason)}" if reason else
            f"**Released** {mk.md_code(promoted.get('release'))} (channel {mk.md_code(promoted.get('channel'))}), "
            f"candidate {mk.md_code(selected)}" if promoted else
            f"**Completed** (promote did not run), gate pick {mk.md_code(selected or '-')}")
    lines = [f"# Edge release: {mk.md_text(params.registry.model_name)}", "", head, "",
             f"Model {mk.md_code(params.model.arch)} on {mk.md_code(params.data.source)} ({params.data.image_size} px), "
             f"target {mk.md_code(params.target.name)} (runtime {mk.md_text(params.target.runtime)}).", ""]
    lines += ["| stage | state |", "|---|---|", *(f"| {n} | {s} |" for n, s in stage_states.items())]
    front = pareto_front(rows, "p50_ms")
    if front:
        png = plot_pareto(rows, "p50_ms", "p50 latency (ms)", "Accuracy vs latency")
        lines += ["", "## Pareto front (accuracy vs p50 latency)", "", ", ".join(mk.md_code(n) for n in front), "",
                  f"![accuracy vs latency]({png_data_uri(png)})"]
    return "\n".join(lines)
