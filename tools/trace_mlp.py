"""Where does the fused decode MLP's time go inside the real step? (GPU machine)

    PYTHONPATH=. python3 tools/trace_mlp.py [preset] [--context 256]

Builds the engine with RAWENGINE_MLP_TRACE=1 (kernels_cu/mlp.cu: thread 0 of every block stamps
%globaltimer at each phase), replays the captured batch-1 step graph as tools/profile_decode.py
does, and prints each phase's min / median / max over the blocks of the last layer's launch,
in us from the moment the first block got past RE_PDL_WAIT (the previous kernel's end).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

PHASES = ("entry (weights issued next)", "past RE_PDL_WAIT", "x staged", "weights landed",
          "h = rmsnorm(r) staged", "act = silu(g) * u", "end (atomics issued)")


def main() -> None:
    os.environ["RAWENGINE_MLP_TRACE"] = "1"
    import cupy as cp
    import numpy as np
    from profile_decode import step_times

    from rawengine.backends.cuda import mlp
    from rawengine.backends.cuda.module import module
    from rawengine.engine import Engine, Sequence
    from rawengine.presets import preset_config
    from rawengine.sampling import SamplingParams

    ap = argparse.ArgumentParser()
    ap.add_argument("preset", nargs="?", default="smollm2-135m")
    ap.add_argument("--context", type=int, default=256)
    a = ap.parse_args()
    cfg = preset_config(a.preset)
    e = Engine(cfg, device="cuda", max_model_len=a.context + 256, max_num_seqs=1)
    seq = Sequence(list(range(1, a.context)), SamplingParams(temperature=0))
    e.prefill(seq)
    wall, gpu = step_times(e, [seq])
    print(f"{a.preset}, batch 1, context {a.context}: step graph {gpu:.1f} us (traced build)")
    defines = mlp.kernel_defines(int(e.backend.is_bf16), cfg.hidden_size, 1, mlp.COLS, True)
    blocks = -(-cfg.intermediate_size // mlp.COLS)
    stamps = cp.ndarray((1024, 8), cp.uint64,
                        memptr=module("mlp.cu", defines).get_global("mlp_trace"))
    t = stamps[:blocks].get().astype(np.int64)
    rel = (t - t[:, 1].min()) / 1e3
    print(f"{'phase':30s} {'min':>7s} {'median':>7s} {'max':>7s}  (us)")
    for i, name in enumerate(PHASES):
        col = rel[:, i]
        print(f"{name:30s} {col.min():7.2f} {np.median(col):7.2f} {col.max():7.2f}")


if __name__ == "__main__":
    main()
