#!/bin/bash
# Assemble gpurun2/ (git-ignored) for a full benchmark on the lent H200: the wheels its Python 3.12 image lacks
# (OpenVINO shrunk to fit the 64 MiB upload), the CIFAR subset, a dvclive stand-in and go.sh / wait.sh.
# Run in the repo root here; then `run` with carry ["gpurun2"] in EVERY call (a call without it removes it there):
#   bash gpurun2/go.sh && bash gpurun2/wait.sh 480
set -eu
REC=benchmarks/recorded/2026-11-30-h200-jobs
grep -qx /gpurun2/ .git/info/exclude || echo /gpurun2/ >> .git/info/exclude
mkdir -p gpurun2/whl gpurun2/shim/dvclive /tmp/kit-ov
plat="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $plat \
  -d gpurun2/whl altair==6.3.0 annotated_types==0.8.0 distro==1.9.0 dvc-render==1.0.2 flatten-dict==0.5.0 \
  great_expectations==1.24.1 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 marshmallow==4.4.0 \
  mistune==3.4.0 nncf==3.4.0 openvino-telemetry==2025.2.0 pydantic==2.14.3 pydantic_core==2.50.4 pydot==4.0.1 \
  referencing==0.37.0 rpds-py==2026.9.1 ruamel.yaml==0.19.1 torch-pruning==1.6.1 typing_extensions==4.16.0 \
  typing-inspection==0.4.5 tzlocal==5.4.5
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $plat \
  -d /tmp/kit-ov openvino==2026.4.1
python3 $REC/slim_openvino_wheel.py /tmp/kit-ov/openvino-2026.4.1-*.whl gpurun2/whl
cp benchmarks/recorded/2026-11-30-h200-convergence/dvclive_stub.py gpurun2/shim/dvclive/__init__.py
rm -rf gpurun2/data && mkdir -p gpurun2/data && cp -r ../shared/data/cifar10-subset/train gpurun2/data/
cp $REC/go.sh $REC/wait.sh gpurun2/
du -sh gpurun2  # must stay under 64 MiB with the repo (about 58 MB)
