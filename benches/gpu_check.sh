#!/usr/bin/env bash
# One-shot GPU check of comfy_core.kernels: CUDA tests, then the attention and sampler-step benchmarks.
# Results (test log, bench log, result JSON) are copied to $OUT (default: benches/results/gpu_check).
# Budget: ~3-5 minutes on an H200 (most of it Triton compiling and autotuning the attention kernel).
#
# The project's own dependencies must import there. The device image has torch, triton, safetensors, numpy,
# pytest and pytest-benchmark, but not msgspec (comfy_core.config needs it); fetch its wheel on the dev machine:
#   python -m pip download msgspec --only-binary=:all: --no-deps --python-version 3.12 \
#       --platform manylinux2014_x86_64 -d .wheels
# and carry `.wheels` (plus nothing else) with the run: bash benches/gpu_check.sh
# comfy_core is imported through a shim folder (root kernels/ -> comfy_core.kernels), so nothing is installed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
OUT="${OUT:-$ROOT/benches/results/gpu_check}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"

# --- make `import comfy_core.kernels` work without pip-installing the project -----------------------------------
SHIM="$(mktemp -d)"
DEPS="$SHIM/deps"
mkdir -p "$SHIM/comfy_core" "$DEPS"
for f in "$ROOT"/comfy_core/*; do ln -s "$f" "$SHIM/comfy_core/$(basename "$f")"; done
ln -s "$ROOT/kernels" "$SHIM/comfy_core/kernels"
ln -s "$ROOT/asgi" "$SHIM/comfy_core/asgi"
if ! "$PY" -c "import msgspec" 2>/dev/null; then
  if [ -d "$ROOT/.wheels" ]; then
    "$PY" -m pip install --quiet --no-index --no-deps --find-links "$ROOT/.wheels" --target "$DEPS" msgspec
  else
    echo "msgspec is missing and no .wheels folder was carried (see the header of this script)" | tee "$OUT/gpu_check.txt"
    exit 2
  fi
fi
export PYTHONPATH="$SHIM:$DEPS${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv 2>&1
  "$PY" -c "import torch, triton, comfy_core.kernels.attention as a; print('torch', torch.__version__, 'triton',
triton.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), 'module', a.__file__)"
} 2>&1 | tee "$OUT/gpu_check.txt"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "no CUDA device visible to torch: nothing to check" | tee -a "$OUT/gpu_check.txt"
  exit 3
fi

# --- CUDA tests (compiled kernels against fp32 references, SD shapes at full size) ------------------------------
timeout 300 "$PY" -P -m pytest tests/test_kernels_attention.py tests/test_kernels_sampler_step.py -m cuda -q \
  -p no:cacheprovider -o addopts="-ra --strict-markers" --durations=10 2>&1 | tee "$OUT/kernels_cuda_tests.txt"
TESTS_RC=${PIPESTATUS[0]}

# --- benchmarks (same process order: the Triton disk cache makes the attention compiles cheap the second time) ---
timeout 240 "$PY" -P -m pytest benches/bench_attention.py benches/bench_sampler_step.py -q -p no:cacheprovider \
  -o addopts="" --benchmark-json="$OUT/kernels_pytest_benchmark.json" --benchmark-columns=median,rounds \
  2>&1 | tee "$OUT/kernels_bench.txt"
BENCH_RC=${PIPESTATUS[0]}

SLUG="$("$PY" -c "import sys; sys.path.insert(0, 'benches'); from kernel_timing import device_slug; print(device_slug())")"
cp "benches/results/attention_$SLUG.json" "benches/results/sampler_step_$SLUG.json" "$OUT"/ 2>/dev/null
rm -rf "$SHIM"
echo "tests rc=$TESTS_RC bench rc=$BENCH_RC; results in $OUT" | tee -a "$OUT/gpu_check.txt"
[ "$TESTS_RC" -eq 0 ] && [ "$BENCH_RC" -eq 0 ]
