"""What does each op cost inside the real decode step? (GPU machine)

    PYTHONPATH=. python3 tools/ablate_decode.py smollm2-135m [--context 256] [--rounds 2]

Builds the engine once per variant, prefills one sequence, and times the captured batch-1 step
graph replayed back to back (as tools/profile_decode.py). Each variant replaces one op of every
layer by a no-op that returns a buffer of the right shape (the numbers are garbage; only the
timing matters): the step-time difference is that op's marginal cost in the real chain, with
its kernel boundary, its DRAM weight stream and its overlap with its neighbours (timing an op
alone, back to back on L2-hot weights, misses all three).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

VARIANTS = ("none", "attn_o", "attention", "o", "mlp", "down", "qkv", "gate_up", "lm_head")
# "down" and "gate_up" run the MLP unfused (two launches) and remove one of them; "mlp" removes
# the whole MLP (one fused launch for small models). "attention" and "o" run attention and
# o_proj unfused and remove one of them; "attn_o" removes both (one fused launch for small
# models at short contexts).
# also (not removals): "unfused_mlp" (the MLP as norm_linear_silu + linear, the A/B of the fused
# MLP kernel); "unfused_attn_o" (attention + linear, the A/B of the fused attention + o_proj
# kernel); "min_chunk=N" (decode attention's least tokens per split, every
# head_dim); "cfg=N,K,{json}" (the M = 1 GEMV params of the N x K product, also as its paired
# entry: rows must be even for the qkv and gate_up products)


def patch(b, variant: str, cfg) -> None:
    """Replace one backend op with a no-op of the same output shapes (decode only)."""
    import cupy as cp

    b.decode_step = lambda *args: None  # the op list, not the persistent step, is ablated here
    bufs = {}

    def buf(shape, dtype):
        key = (tuple(shape), str(dtype))
        if key not in bufs:
            bufs[key] = cp.zeros(shape, dtype)
        return bufs[key]

    linear = b.linear
    from rawengine.backends.base import Backend

    if variant in ("unfused_mlp", "down", "gate_up"):
        b.norm_mlp = lambda *args: Backend.norm_mlp(b, *args)
    if variant in ("unfused_attn_o", "attention", "o"):
        b.attention_o = lambda *args: Backend.attention_o(b, *args)
    if variant.startswith("cfg="):
        import json

        from rawengine.backends.cuda import gemm

        n, k, params = variant[4:].split(",", 2)
        key = (gemm.gpu_name(), int(n), int(k))
        rules = gemm._tables()[key]
        p = json.loads(params)
        gemm._tables()[key] = [(1, "gemv", p, None, p)] + [r for r in rules if r[0] > 1]
    elif variant.startswith("min_chunk="):
        from rawengine.backends.cuda import attention

        mc = attention.TUNING["default"]["min_chunk"]
        for d in mc:
            mc[d] = int(variant.split("=")[1])
    elif variant == "attention":
        b.attention = lambda q, kc, vc, meta, scale: q.reshape(q.shape[0], -1)
    elif variant in ("o", "down", "lm_head"):
        k_in = {"o": cfg.q_size, "down": cfg.intermediate_size, "lm_head": cfg.hidden_size}
        n_out = {"o": cfg.hidden_size, "down": cfg.hidden_size, "lm_head": cfg.vocab_size}
        # o, down and lm_head are told apart by their [M, K] input and output width
        def fake(x, w, bias=None):
            if x.shape[1] == k_in[variant] and w.shape[0] == n_out[variant]:
                return buf((x.shape[0], w.shape[0]), x.dtype)
            return linear(x, w, bias)
        b.linear = fake
    elif variant.startswith("ao="):  # the fused kernel's shape: ao=warps,unroll,stages,rows[,impl]
        from rawengine.backends.cuda import attention_o

        vals = variant[3:].split(",")
        attention_o.OVERRIDE.update(zip(("warps", "unroll", "stages", "rows"),
                                        [int(v) for v in vals[:4]]))
        if len(vals) > 4:
            attention_o.OVERRIDE["impl"] = vals[4]
    elif variant == "attn_o":
        b.attention_o = lambda q, kc, vc, meta, scale, w_o: buf((q.shape[0], w_o.shape[0]),
                                                                 q.dtype)
    elif variant == "mlp":
        def fake_mlp(x, residual, norm_w, eps, w_gu, w_d):
            return buf(x.shape, x.dtype), residual
        b.norm_mlp = fake_mlp
    elif variant == "qkv":
        def fake_qkv(x, residual, norm_w, eps, w_qkv, bias, meta, cos, sin, kc, vc, hq, hkv, d):
            return buf((x.shape[0], hq, d), x.dtype), (x if residual is None else residual)
        b.norm_linear_rope = fake_qkv
    elif variant == "gate_up":
        def fake_gu(x, residual, norm_w, eps, w):
            return buf((x.shape[0], w.shape[0] // 2), x.dtype), residual
        b.norm_linear_silu = fake_gu


def main() -> None:
    from rawengine.engine import Engine, Sequence
    from rawengine.presets import preset_config
    from rawengine.sampling import SamplingParams

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from profile_decode import step_times

    ap = argparse.ArgumentParser()
    ap.add_argument("preset")
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help="comma-separated, or ';'-separated when a variant has commas")
    a = ap.parse_args()
    variants = a.variants.split(";") if ";" in a.variants else a.variants.split(",")
    res = {v: [] for v in variants}
    from rawengine.backends.cuda import attention

    from rawengine.backends.cuda import attention_o, gemm

    tuned = dict(attention.TUNING["default"]["min_chunk"])
    for _ in range(a.rounds):
        for v in variants:
            attention.TUNING["default"]["min_chunk"].update(tuned)  # undo a min_chunk variant
            gemm.reload_tables()  # undo a cfg variant
            attention_o.OVERRIDE.clear()  # undo an ao variant
            e = Engine(preset_config(a.preset), device="cuda", max_model_len=a.context + 256,
                       max_num_seqs=1)
            seq = Sequence(list(range(1, a.context)), SamplingParams(temperature=0))
            e.prefill(seq)
            patch(e.backend, v, e.cfg)
            _, gpu = step_times(e, [seq])
            res[v].append(gpu)
            print(f"  {v:10s} {gpu:8.1f} us", flush=True)
            del e
    layers = preset_config(a.preset).num_hidden_layers
    base = min(res["none"]) if "none" in res else None
    print(f"\n{a.preset}, batch 1, context {a.context}: step graph replay, min of {a.rounds}")
    print("| removed | step us | saved us | per layer us |")
    print("|---|---|---|---|")
    for v in variants:
        t = min(res[v])
        saved = base - t if base is not None else float("nan")
        per = saved / (1 if v == "lm_head" or "=" in v else layers)  # once-per-step items
        print(f"| {v} | {t:.1f} | {saved:.1f} | {per:.2f} |")


if __name__ == "__main__":
    main()
