"""Where the persistent batch-1 decode step's time goes (kernels_cu/decode_step.cu, built with
STEP_TIMING=1): every block stamps %globaltimer when it reaches each grid barrier, block 0 when
it leaves it. Per phase (A = norm + qkv, B = attention, C = merge + o, D = norm + gate_up,
E = down, F = final norm + lm_head): 'work' = last block's arrival - previous release (the
critical path of the phase), 'barrier' = release - last arrival. Random weights of a preset.

    PYTHONPATH=. python3 tools/profile_decode_step.py smollm2-135m --context 256
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cupy as cp  # noqa: E402
import numpy as np  # noqa: E402

from rawengine.backends.cuda.module import kernel, module  # noqa: E402
from rawengine.engine import Engine, Sequence  # noqa: E402
from rawengine.presets import preset_config  # noqa: E402
from rawengine.sampling import SamplingParams  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("preset", nargs="?", default="smollm2-135m")
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    e = Engine(preset_config(args.preset), device="cuda", dtype="float16", max_num_seqs=1,
               use_graphs=False)
    seq = Sequence(list(range(1, args.context)), SamplingParams(temperature=0.0))
    e.prefill(seq)
    seq.token_ids.append(1)
    e.forward([seq], [1])
    step = e.backend._decode_steps.get(e.model)
    if step is None:
        raise SystemExit("the persistent step does not apply to this model here")
    defines = {**step.defines, "STEP_TIMING": 1}
    step.fn = kernel("decode_step.cu", "decode_step_kernel", defines)
    step.fn.max_dynamic_shared_size_bytes = step.smem
    mod = module("decode_step.cu", defines)
    grid, layers = step.grid, len(e.model.layers)
    nb = 5 * layers + 2  # barriers + the final arrival
    arrive = cp.ndarray((1024 * 160,), np.uint64, memptr=mod.get_global("step_arrive"))
    leave = cp.ndarray((1024,), np.uint64, memptr=mod.get_global("step_leave"))
    work = {k: [] for k in "ABCDEF"}
    barrier = {k: [] for k in "ABCDE"}
    totals = []
    for _ in range(args.steps):
        seq.token_ids.append(1)
        e.forward([seq], [1])
        cp.cuda.Device().synchronize()
        arr = arrive.get()[: nb * grid].reshape(nb, grid).astype(np.int64)
        lv = leave.get()[:nb].astype(np.int64)
        last = arr.max(axis=1)
        for k in range(1, nb):
            phase = "F" if k == nb - 1 else "ABCDE"[(k - 1) % 5]
            work[phase].append((last[k] - lv[k - 1]) / 1e3)
            if phase != "F":
                barrier[phase].append((lv[k] - last[k]) / 1e3)
        totals.append((last[nb - 1] - lv[0]) / 1e3)
    print(f"{args.preset}, context {args.context}, grid {grid}, {layers} layers; us, medians")
    print("| phase | work | barrier |")
    print("|---|---|---|")
    for k in "ABCDEF":
        b = f"{np.median(barrier[k]):.2f}" if k in barrier else "-"
        print(f"| {k} | {np.median(work[k]):.2f} | {b} |")
    print(f"kernel (after the PDL wait to the last block's end): {np.median(totals):.1f} us")


if __name__ == "__main__":
    main()
