#!/usr/bin/env bash
# One call on the GPU machine: GPU tests, decode profile, end-to-end grid, start-up time,
# torch comparison. Full logs under $OUT; short tables last.
#   bash tools/gpu_check.sh [quick]
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1
# logs go to $LOG; the device tool returns at most 8 files, so they travel as one tarball
FINAL=${OUT:-}; OUT=/tmp/gpu_check; rm -rf "$OUT"; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -m pytest tests/kernels -q -p no:cacheprovider 2>&1 | tail -3 | tee "$OUT/tests.txt"
python3 tools/bench_attention.py --out "$OUT" > "$OUT/bench_attention.txt" 2>&1; tail -4 "$OUT/bench_attention.txt"
python3 tools/profile_decode.py smollm2-135m 2>&1 | tee "$OUT/profile_smollm2.txt"
python3 tools/profile_decode.py llama-3-8b 2>&1 | tee "$OUT/profile_llama3.txt"
# start-up: process start to exit for one token, cold (empty kernel cache) then warm
if [ -d .gpu_carry/smollm2 ]; then
  python3 tools/random_checkpoint.py smollm2-135m /tmp/smol --tokenizer-from .gpu_carry/smollm2
  export CUPY_CACHE_DIR=/tmp/cupy_cold_cache; rm -rf "$CUPY_CACHE_DIR"
  for run in cold warm; do
    s=$(date +%s%N)
    python3 -m rawengine.cli generate --model /tmp/smol --device cuda -n 1 "Hello" > /dev/null 2> "$OUT/start_$run.txt"
    echo "start-up $run: $(( ($(date +%s%N) - s) / 1000000 )) ms  $(tail -1 "$OUT/start_$run.txt")" | tee -a "$OUT/startup.txt"
  done
  unset CUPY_CACHE_DIR
fi
if [ "${1:-}" = quick ]; then
  python3 tools/bench_e2e.py --out "$OUT" --quick 2>"$OUT/bench_e2e.err" | tee "$OUT/bench_e2e.md"
else
  timeout 400 python3 tools/bench_e2e.py --out "$OUT" --extra llama-3-8b:1:16384 2>"$OUT/bench_e2e.err" | tee "$OUT/bench_e2e.md"
  timeout 240 python3 -m rawengine.cli bench smollm2-135m --compare-torch 2>&1 | tee "$OUT/compare_torch.txt"
fi
echo "=== summary"; cat "$OUT/tests.txt" "$OUT/startup.txt" 2>/dev/null
grep -h "engine step\|graph replay\|host overhead" "$OUT"/profile_*.txt
tail -40 "$OUT/bench_e2e.md"
grep -h "geomean" "$OUT/bench_attention.txt"
[ -n "$FINAL" ] && tar czf "$FINAL/gpu_check.tgz" -C "$OUT" .
