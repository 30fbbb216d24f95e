"""Where does the time of the fused decode MLP and the fused attention + o_proj go inside the
real step? (GPU machine)

    PYTHONPATH=. python3 tools/trace_mlp.py [preset] [--context 256]

Builds the engine with RAWENGINE_MLP_TRACE=1 and RAWENGINE_ATTN_O_TRACE=1 (kernels_cu/mlp.cu,
decode_attention.cu O_PROJ: thread 0 of every block stamps %globaltimer at each phase), replays
the captured batch-1 step graph as tools/profile_decode.py does, and prints each phase's min /
median / max over the blocks of the last layer's launches, in us from the moment the first
attention_o block got past RE_PDL_WAIT (the qkv GEMV's end; the MLP's own wait when attention_o
is not used).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

AO_PHASES = ("attn_o entry (Wo, old keys issued)", "attn_o past RE_PDL_WAIT",
             "attn_o attention done", "attn_o a = o / l staged", "attn_o end (atomics issued)",
             "attn_o q landed (warp 0)", "attn_o tile 0 landed (warp 0)",
             "attn_o last tile done (warp 0)")
PHASES = ("entry (weights issued next)", "past RE_PDL_WAIT", "x staged (thread 0)",
          "barrier: x, weights in smem", "h = rmsnorm(r) (warp 0)", "act = silu(g) * u",
          "end (atomics issued)")


def main() -> None:
    os.environ["RAWENGINE_MLP_TRACE"] = "1"
    os.environ["RAWENGINE_ATTN_O_TRACE"] = "1"
    import cupy as cp
    import numpy as np
    from profile_decode import step_times

    from rawengine.backends.cuda import attention_o, mlp
    from rawengine.backends.cuda.module import module
    from rawengine.engine import Engine, Sequence
    from rawengine.presets import preset_config
    from rawengine.sampling import SamplingParams

    ap = argparse.ArgumentParser()
    ap.add_argument("preset", nargs="?", default="smollm2-135m")
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--ao", default="",
                    help="attention_o shape: warps,unroll,stages,rows[,impl]")
    a = ap.parse_args()
    if a.ao:
        vals = a.ao.split(",")
        attention_o.OVERRIDE.update(zip(("warps", "unroll", "stages", "rows"),
                                        [int(v) for v in vals[:4]]))
        if len(vals) > 4:
            attention_o.OVERRIDE["impl"] = vals[4]
    cfg = preset_config(a.preset)
    e = Engine(cfg, device="cuda", max_model_len=a.context + 256, max_num_seqs=1)
    seq = Sequence(list(range(1, a.context)), SamplingParams(temperature=0))
    e.prefill(seq)
    wall, gpu = step_times(e, [seq])
    print(f"{a.preset}, batch 1, context {a.context}: step graph {gpu:.1f} us (traced build)")
    bf16 = int(e.backend.is_bf16)
    fused_ao = e.backend.short_context(cfg) is not None or attention_o.applies(
        cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size, 1)
    tables = []
    if fused_ao and attention_o._impl() != "bulk":
        print("(attention_o's stamps exist in its bulk build only: --ao 8,4,4,48,bulk)")
    elif fused_ao:
        defines = attention_o.kernel_defines(cfg.head_dim, cfg.num_attention_heads //
                                             cfg.num_key_value_heads, bf16)
        blocks = -(-cfg.hidden_size // defines["ROWS"]) * cfg.num_key_value_heads
        mod = module("decode_attention.cu", defines)
        tables.append((AO_PHASES, cp.ndarray((1024, 8), cp.uint64,
                                             memptr=mod.get_global("attn_o_trace"))[:blocks]))
    defines = mlp.kernel_defines(bf16, cfg.hidden_size, 1, mlp.COLS, True, fused_ao)
    blocks = -(-cfg.intermediate_size // mlp.COLS)
    tables.append((PHASES, cp.ndarray((1024, 8), cp.uint64,
                                      memptr=module("mlp.cu", defines).get_global("mlp_trace"))
                   [:blocks]))
    t0 = tables[0][1].get().astype(np.int64)[:, 1].min()
    print(f"{'phase':34s} {'min':>7s} {'median':>7s} {'max':>7s}  (us)")
    for phases, stamps in tables:
        rel = (stamps.get().astype(np.int64) - t0) / 1e3
        for i, name in enumerate(phases):
            col = rel[:, i]
            print(f"{name:34s} {col.min():7.2f} {np.median(col):7.2f} {col.max():7.2f}")


if __name__ == "__main__":
    main()
