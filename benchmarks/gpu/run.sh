#!/usr/bin/env bash
# Run on the GPU machine (one H200, 16 cores; its own torch, OpenCV 5 and onnxruntime): installs the carried wheels
# into a private folder, then the GPU and face rows of the benchmarks, all output into $OUT (or ./gpu-out).
# Under 5 minutes: the whole-image GPU rows, then the face rows on the GPU and the CPU scaling rows (1-16 cores).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
SITE=$(mktemp -d)
pip install -q --no-index --no-deps --target "$SITE" benchmarks/gpu/wheels/*.whl 2>&1 | tail -3
export PYTHONPATH="$SITE:src" TRANSFERLAB_CACHE_DIR=$(mktemp -d) HF_HUB_OFFLINE=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; python -c "import torch, cv2, onnxruntime; print(torch.__version__, cv2.__version__, onnxruntime.__version__)"; } > "$OUT/machine.txt" 2>&1
timeout 200 python -m benchmarks --only gpu > "$OUT/gpu.txt" 2>&1
timeout 200 python -m benchmarks --only faces > "$OUT/faces-cpu.txt" 2>&1
timeout 60 python -m pytest -q -p no:logging tests/test_face_pipeline.py > "$OUT/face-tests.txt" 2>&1
tail -n 40 "$OUT"/*.txt
