#!/bin/bash
# Full-mode benchmark on the lent GPU machine: setsid so that it outlives this call (a second call collects it).
set -u
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site gpurun2/whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD/gpurun2/shim:$PWD EDGEOPT_NO_PROGRESS=1 PYTHONUNBUFFERED=1
python3 -c "import openvino, nncf, great_expectations, torch_pruning, pydantic, dvc_render, onnxruntime, onnxscript, torch; print('cuda', torch.cuda.is_available(), openvino.__version__, nncf.__version__)" || exit 4
# added after the run: openvino's __init__ hides a broken converter; import it directly to fail here, loudly
python3 -c "import openvino.tools.ovc; import openvino; assert openvino.convert_model" || exit 5
nvidia-smi -L; nproc; lscpu | grep -i "model name"; git log -1 --oneline 2>&1 | head -1
rm -rf /tmp/bench
setsid bash -c "python3 -m benchmarks --jobs 7 --skip-digits --skip-throughput --data gpurun2/data/train --out /tmp/bench > /tmp/bench-console.log 2>&1; echo \$? > /tmp/bench-rc" < /dev/null &
