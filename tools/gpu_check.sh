#!/usr/bin/env bash
# The one command for the GPU machine: kernel tests, end-to-end GPU-vs-NumPy test, benchmarks.
#   bash tools/gpu_check.sh          (from the repo root; full logs go to $OUT when it is set)
# Uses only what is installed there (python3 with CuPy, numpy, pytest); PYTHONPATH=. for rawengine.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
LOG=${OUT:-/tmp/gpu_check}
mkdir -p "$LOG"
declare -A RESULT

run() {  # run NAME CMD...: logs to $LOG/NAME.log, remembers pass/fail and the last line
    local name=$1; shift
    echo "=== $name: $*"
    "$@" 2>&1 | tee "$LOG/$name.log"
    local rc=${PIPESTATUS[0]}
    RESULT[$name]="$([ "$rc" = 0 ] && echo PASS || echo "FAIL($rc)")  $(grep -v '^\s*$' "$LOG/$name.log" | tail -1 | cut -c1-90)"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee "$LOG/gpu.txt"
python3 -c "import cupy; print('cupy', cupy.__version__, 'bf16 dtype:', hasattr(cupy, 'bfloat16'))" | tee -a "$LOG/gpu.txt"
run kernel_tests python3 -m pytest tests/kernels -q -p no:cacheprovider
if ls tests/test_*gpu*.py >/dev/null 2>&1; then  # end-to-end GPU-vs-NumPy (owned by the lead)
    run e2e_gpu python3 -m pytest tests/ -q -p no:cacheprovider -k "gpu or cuda" --ignore=tests/kernels
else
    RESULT[e2e_gpu]="SKIP  no tests/test_*gpu*.py yet"
fi
run bench_kernels python3 tools/bench_kernels.py --dtype float16
# --- BENCH PLACEHOLDER: add `rawengine bench` (end-to-end prefill/decode tok/s) here once the
# --- lead's CLI has it, e.g.:  run bench_e2e python3 -m rawengine.cli bench ...

echo; echo "=== summary (logs in $LOG)"
for k in "${!RESULT[@]}"; do printf '%-14s %s\n' "$k" "${RESULT[$k]}"; done
[ -f "$LOG/bench_kernels.log" ] && cat "$LOG/bench_kernels.log" | tail -20
