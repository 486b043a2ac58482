"""The search's pick as the benchmark's release: `python -m benchmarks --search-result sweeps/<name>/search.json`.

The winning trial's knobs (`best.overrides` of a `python -m flows.search` result: prune, fine-tune, cluster,
quantize, distill, ...) are applied to the realistic chain on top of the mode's settings, so the chain builds the
search's pick (its row is marked in benchmark.md), measured beside the baseline and the external peer under the
benchmark's one protocol (test split, deployed runtime, same latency rounds). The baseline stays the benchmark's
own: the knobs of a search never touch training (search.space refuses train/model/data sections).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeopt.errors import JSONFileError, NotRegularFileError, ParamsError
from edgeopt.io import read_json
from edgeopt.params import SEARCHABLE


class SearchResultError(ParamsError):
    """A --search-result file the benchmark cannot use: a bad argument, exit 2 like bad params."""


def load(path: str | Path) -> dict[str, Any]:
    """The search's winner as {file, name, trial, pick, val_accuracy, test_accuracy, overrides}; SearchResultError
    naming what is wrong and what to do."""
    path = Path(path)
    try:
        doc = read_json(path, "search result (sweeps/<name>/search.json of `python -m flows.search`)")
    except (OSError, JSONFileError, NotRegularFileError) as exc:
        raise SearchResultError(f"--search-result: {exc}") from None
    if not isinstance(doc, dict) or "trials" not in doc or "best" not in doc:
        raise SearchResultError(f"--search-result {path}: not a search result (no 'best' / 'trials'); pass the "
                                "search.json that `python -m flows.search` wrote under sweeps/<name>/")
    best = doc["best"]
    if not best:
        raise SearchResultError(f"--search-result {path}: search {doc.get('name')!r} found no feasible "
                                f"configuration ({doc.get('message') or doc.get('status')}); nothing to benchmark")
    overrides = best.get("overrides") if isinstance(best, dict) else None
    if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
        raise SearchResultError(f"--search-result {path}: best.overrides must be a list of KEY=VALUE strings")
    # a search only varies the stages its trials run; anything else (data, training, the gate, the registry)
    # in a result file was not searched and would silently change what the benchmark measures
    keys = [o.split("=", 1)[0].strip() for o in overrides]
    foreign = sorted({k for k in keys if k.split(".")[0] not in SEARCHABLE})
    if foreign:
        raise SearchResultError(f"--search-result {path}: best.overrides sets {', '.join(foreign)}, outside the "
                                f"sections a search varies ({', '.join(SEARCHABLE)}); pass --set for those")
    check = doc.get("winner_check") if isinstance(doc.get("winner_check"), dict) else {}
    trials = [t for t in doc["trials"] if isinstance(t, dict)] if isinstance(doc["trials"], list) else []
    walls = [t["wall_s"] for t in trials if isinstance(t.get("wall_s"), (int, float))]
    return {"file": str(path.resolve()), "name": doc.get("name"), "trial": best.get("trial"),
            "pick": best.get("pick"), "val_accuracy": _number(best.get("val_accuracy")),
            "test_accuracy": _number(check.get("search_pick_test_accuracy")), "overrides": list(overrides),
            # the search ran before this benchmark: its cost is reported beside it, not inside its wall time
            "trials": len(trials), "trials_wall_s": round(sum(walls), 1) if walls else None}


def _number(v: Any) -> float | None:
    """A figure from the file, or None: a crafted value must not break the report hours later."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def as_overrides(pick: dict[str, Any]) -> dict[str, str]:
    """{key: value text} for the realistic chain (values parsed as YAML like every --set)."""
    return {k.strip(): v for k, _, v in (o.partition("=") for o in pick["overrides"])}
