"""Run on the GPU machine after the benchmark stopped (PYTHONPATH=/tmp/site:$PWD): the benchmark's own
`compression.peer_accuracy` (ONNX Runtime, test split) on the three peer seeds it trained, since the run never
reached its table. Writes $OUT/peer-accuracy.json (here: peer-accuracy-h200.json)."""
import json
import os
from pathlib import Path

from benchmarks.compression import peer_accuracy
from edgeopt.params import load_params
from edgeopt.paths import Paths

w = Path("/tmp/bench/work")
doc = json.load(open("/tmp/bench/benchmark.json"))
paths, params = Paths(w / "realistic"), load_params(w / "realistic" / "params.yaml")
runs = doc["reference"]
res = {k: peer_accuracy(runs, k, paths, params) for k in ("bare", "pruned_kd")}
res["macs"] = {k: [r[k]["macs"] for r in runs] for k in ("bare", "pruned_kd")}
res["train_s"] = {k: [r[k]["train_s"] for r in runs] for k in ("bare", "pruned_kd")}
res["device"] = [r.get("device") for r in runs]
json.dump(res, open(os.environ["OUT"] + "/peer-accuracy.json", "w"), indent=1)
