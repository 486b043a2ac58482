"""When a stage task may be skipped: Prefect cache keys that also check the stage's files on disk.

A stage's real outputs are files, not the Prefect result (its metrics dict), so a cached result alone proves
nothing. After a stage succeeds we write a stamp: the cache key, the input fingerprint (deps + params + code,
see flows.pipeline) and the hashes of its outs. The next run reuses that key, which is a cache hit, only when
the inputs are the same and the outs still hash as stamped; anything else (changed inputs, outs deleted or
edited, no stamp) gets a fresh key, which is a miss, and the stage runs.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy

from edgeopt.io import write_json
from flows.pipeline import input_fingerprint, load_pipeline, outs_state

STATE_DIR = ".prefect"  # per project, git-ignored


def results_dir(root: str | Path) -> Path:
    """Where Prefect persists stage results and cache records (needed for hits across runs)."""
    return Path(root) / STATE_DIR / "results"


def stamp_path(root: str | Path, stage: str) -> Path:
    return Path(root) / STATE_DIR / "stamps" / f"{stage}.json"


def _read_stamp(root: str | Path, stage: str) -> dict[str, Any] | None:
    try:
        stamp = json.loads(stamp_path(root, stage).read_text())
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def _fingerprint_of(key: str) -> str:
    return key.rsplit("-", 2)[1]


@dataclass
class StageInputsAndOutputs(CachePolicy):
    """Cache policy of stage tasks, whose parameters are (stage, params, root)."""

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> str | None:
        stage, params, root = inputs["stage"], inputs["params"], inputs["root"]
        spec = load_pipeline(root)[stage]
        fingerprint = input_fingerprint(spec, params, root)
        stamp = _read_stamp(root, stage)
        if (stamp and isinstance(stamp.get("key"), str) and stamp.get("inputs") == fingerprint
                and stamp.get("outs") == outs_state(spec, root)):
            return stamp["key"]
        return f"{stage}-{fingerprint}-{uuid.uuid4().hex[:12]}"


def write_stamp(root: str | Path, stage: str, key: str) -> Path:
    """Record, after the stage succeeded, which inputs produced which outs under which cache key."""
    spec = load_pipeline(root)[stage]
    return write_json(stamp_path(root, stage), {"stage": stage, "key": key, "inputs": _fingerprint_of(key),
                                                "outs": outs_state(spec, root)})
