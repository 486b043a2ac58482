#!/bin/bash
# Wait (up to $1 s) for the benchmark started by go.sh, then copy its results to $OUT.
end=$((SECONDS + ${1:-500}))
while [ ! -f /tmp/bench-rc ] && [ $SECONDS -lt $end ]; do sleep 5; done
echo "rc: $(cat /tmp/bench-rc 2>/dev/null || echo running)"
cp /tmp/bench-console.log $OUT/console.log 2>/dev/null
cd /tmp/bench 2>/dev/null && cp benchmark.json benchmark.md benchmark.log $OUT/ 2>/dev/null
cd /tmp/bench/work 2>/dev/null && tar czf $OUT/work-metrics-logs.tgz --exclude='*.pt' --exclude='*.onnx' --exclude='*.bin' --exclude='*.npy' --exclude='*.npz' --exclude='*.xml' $(ls -d */metrics */logs */*.yaml */*.json reference 2>/dev/null)
tail -40 /tmp/bench-console.log
