#!/usr/bin/env bash
# Run on the GPU machine (one H200, 16 cores; its own torch, OpenCV 5 and onnxruntime): installs the carried wheels
# into a private folder, then the GPU and face rows of the benchmarks, all output into $OUT (or ./gpu-out).
# Under 9 minutes: the whole-image GPU rows (both recipes, parts, parity), the face rows on the GPU, the GPU tests
# (parity, mixed batches), then the CPU face scaling rows (1-16 cores).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
SITE=$(mktemp -d)
pip install -q --no-index --no-deps --target "$SITE" benchmarks/gpu/wheels/*.whl 2>&1 | tail -3
export PYTHONPATH="$SITE:src" TRANSFERLAB_CACHE_DIR=$(mktemp -d) HF_HUB_OFFLINE=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; python -c "import torch, cv2, onnxruntime; print(torch.__version__, cv2.__version__, onnxruntime.__version__)"; } > "$OUT/machine.txt" 2>&1
timeout 270 python -m benchmarks --only gpu > "$OUT/gpu.txt" 2>&1
timeout 90 python -m pytest -q -p no:logging -n 0 tests/test_recipe.py tests/test_gpu_path.py tests/test_face_pipeline.py \
  "tests/test_features.py::test_batched_device_decode_path_matches_the_loader_path" > "$OUT/gpu-tests.txt" 2>&1
timeout 150 python -m benchmarks --only faces > "$OUT/faces-cpu.txt" 2>&1
tail -n 40 "$OUT"/*.txt
