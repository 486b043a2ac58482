"""`python -m edgeopt.summary`: the few numbers a user wants after `make run` (read from the stage outputs)."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def summary(root: Path = Path(".")) -> str:
    train = _load(root / "metrics/train.json")
    gate = _load(root / "reports/gate.json")
    promote = _load(root / "metrics/promote.json")
    evaluate = _load(root / "metrics/evaluate.json").get("candidates", {})
    bench = _load(root / "metrics/bench.json").get("candidates", {})
    lines = ["", "== edgeopt run summary =="]
    if isinstance(train.get("test_accuracy"), (int, float)):  # (a failed train stage records none)
        lines.append(f"baseline ({train.get('arch')}): test accuracy {train['test_accuracy']:.2f}% "
                     f"(PyTorch), {train.get('params', 0):,} params, {train.get('macs', 0):,} MACs")
    pick = gate.get("selected")
    if pick:
        ev, be = evaluate.get(pick, {}), bench.get(pick, {})
        base = evaluate.get(ev.get("baseline", ""), {})
        rank_by = gate.get("thresholds", {}).get("rank_by", "latency")
        lines.append(f"gate: {pick} picked: passes every gate, best by {rank_by} "
                     f"({len(gate.get('passed', []))} of {len(gate.get('rows', []))} candidates pass)")
        if ev:
            paired = isinstance(ev.get("drop_se"), (int, float))  # evaluate.json of this version
            se = f" +- {ev['drop_se']:.2f}" if paired else ""
            changed = f", {ev.get('lost')} images lost, {ev.get('gained')} gained" if paired else ""
            lines.append(f"  test accuracy {ev['accuracy']:.2f}% in {ev['runtime']} (drop {ev['drop']:+.2f}{se} pt vs "
                         f"{ev['baseline']}{changed}), size {ev['file_bytes']:,} B"
                         + (f" ({base['file_bytes'] / ev['file_bytes']:.1f}x smaller)" if base.get("file_bytes") else ""))
        if be:
            lines.append(f"  latency p50 {be['p50_ms']:.3f} ms, p90 {be['p90_ms']:.3f} ms (batch 1, "
                         f"{_load(root / 'metrics/bench.json').get('profile', {}).get('threads', '?')} thread)")
    elif gate:
        lines.append("gate: no candidate passes (see reports/gate.json)")
    if promote:
        lines.append(f"release: {promote.get('release')} -> channel {promote.get('channel', '')} "
                     f"({promote.get('path', promote.get('release_dir', ''))})")
    lines.append("details: reports/report.md, reports/gate.json; `edgeopt registry list`")
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".")))
