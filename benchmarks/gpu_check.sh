#!/usr/bin/env bash
# The one GPU run: GPU tests, then every benchmark, then a short table.
# Installs nothing that the H200 image already has (torch, triton, transformers, pytest, pytest-benchmark);
# Liger Kernel / Cut Cross-Entropy wheels are used when carried in .whl/ (see the device README).
#   usage (device tool): bash benchmarks/gpu_check.sh        results also land in $OUT when set
set -uo pipefail
cd "$(dirname "$0")/.."
LOG=${OUT:-/tmp/spiral_fast_gpu}
mkdir -p "$LOG"
export PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# Editable install without dependency resolution or build isolation (everything needed is on the image;
# nothing can be fetched there): maps kernels/ to spiral_fast.kernels and builds the C++ extension.
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$LOG/build.log" 2>&1 \
  || { echo "editable install failed: see $LOG/build.log"; tail -n 20 "$LOG/build.log"; exit 1; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)"

timeout "${GPU_TEST_TIMEOUT:-240}" python3 -m pytest -m gpu tests/ -q -p no:cacheprovider 2>&1 | tee "$LOG/gpu_tests.log" | tail -n 25
tests_rc=${PIPESTATUS[0]}
timeout "${GPU_BENCH_TIMEOUT:-300}" python3 -m pytest benchmarks/ -q -p no:cacheprovider --benchmark-columns=min,mean \
  2>&1 | tee "$LOG/bench.log" | tail -n 5
bench_rc=${PIPESTATUS[0]}

echo
echo "== spiral_fast GPU check: tests rc=$tests_rc, benchmarks rc=$bench_rc =="
grep -E "passed|failed|error" "$LOG/gpu_tests.log" | tail -n 1
python3 benchmarks/summarize.py
