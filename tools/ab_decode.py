"""A/B of decode-step variants in one process, on one set of weights (GPU machine).

    PYTHONPATH=. python tools/ab_decode.py llama-3-8b [--batch 1] [--context 256] [--rounds 2]

Each variant changes a launch or dispatch setting, drops the captured graphs (so the next
step captures again under the new setting) and times the decode step: the engine's wall time
per step (unpipelined: launch, then wait for the token) and the captured step graph replayed
back to back (GPU time). Variants run in turn, `--rounds` times, so drift shows up as
spread. Variants:
  pdl-off      plain graph launches
  pdl          programmatic dependent launch (the default where supported)
  fuse-all     pdl, and add+RMSNorm (+RoPE/KV write) and SiLU-mul fused into every
               GEMV-served decode product (by default only products <= gemm.FUSED_MAX_MNK)
  fuse-norm    as fuse-all, but SiLU-mul stays a separate kernel
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    from profile_decode import step_times

    from rawengine.backends.cuda import gemm, launch
    from rawengine.engine import Engine, Sequence
    from rawengine.presets import preset_config
    from rawengine.sampling import SamplingParams

    ap = argparse.ArgumentParser()
    ap.add_argument("preset")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--variants", default="pdl-off,pdl,fuse-all,fuse-norm")
    a = ap.parse_args()

    default_mnk, silu_linear = gemm.FUSED_MAX_MNK, gemm.silu_mul_linear

    def setting(name):
        launch.set_pdl(name != "pdl-off")
        gemm.FUSED_MAX_MNK = 1 << 40 if name.startswith("fuse") else default_mnk
        gemm.silu_mul_linear = (lambda *args, **kw: None) if name == "fuse-norm" else silu_linear

    e = Engine(preset_config(a.preset), device="cuda", max_model_len=a.context + 2048,
               max_num_seqs=a.batch)
    seqs = [Sequence(list(range(1, a.context)), SamplingParams(temperature=0)) for _ in range(a.batch)]
    for s in seqs:
        e.prefill(s)

    def measure():
        e.graphs.captured.clear()  # recapture under the current setting
        return step_times(e, seqs, steps=60, warmup=5)

    names = a.variants.split(",")
    res = {n: [] for n in names}
    for r in range(a.rounds):
        for n in names:
            setting(n)
            res[n].append(measure())
            print(f"round {r} {n:10s} wall {res[n][-1][0]:8.1f} us  graph {res[n][-1][1]:8.1f} us",
                  flush=True)
    setting("pdl")
    print(f"\n{a.preset} batch {a.batch} context ~{a.context}: decode step, median of rounds")
    print("| variant | wall us | graph us | tok/s/seq (wall) |")
    print("|---|---|---|---|")
    for n in names:
        w = float(np.median([x[0] for x in res[n]]))
        g = float(np.median([x[1] for x in res[n]]))
        print(f"| {n} | {w:.1f} | {g:.1f} | {1e6 / w:.1f} |")


if __name__ == "__main__":
    main()
