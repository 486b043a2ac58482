#!/bin/bash
# usage: run.sh NAME key=value ...  (finetune overrides); 40-epoch KD finetune from seed 0's pruned model
set -e
name=$1; shift
src=/work/runs/cpu-ft60-s0/work/realistic
d=/work/runs/ftexp/$name
rm -rf $d; mkdir -p $d/models $d/metrics $d/logs
ln -s $src/data $d/data
cp $src/models/baseline.pt $src/models/pruned.pt $d/models/
cp $src/metrics/*.json $d/metrics/; rm -f $d/metrics/finetune.json
cp $src/params.yaml $d/params.yaml
cd /work/benchclone
sets=(); for kv in "finetune.epochs=40" "$@"; do sets+=(--set "$kv"); done
.venv/bin/python - "$d/params.yaml" "finetune.epochs=40" "$@" <<'PY'
import sys
from edgeopt.params import render_params_file
p=sys.argv[1]; t=open(p).read(); open(p,'w').write(render_params_file(t, sys.argv[2:]))
PY
start=$(date +%s)
EDGEOPT_NO_PROGRESS=1 .venv/bin/python -m edgeopt.cli finetune --root $d --params $d/params.yaml > $d/logs/finetune.log 2>&1
echo "$name $* wall $(( $(date +%s)-start ))s $(python3 -c "import json;m=json.load(open('$d/metrics/finetune.json'));print('val',round(m['val_accuracy'],2),'test',round(m['test_accuracy'],2),'best_epoch',m['best_epoch'])")" >> /work/runs/ftexp/results.txt
