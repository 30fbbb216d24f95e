"""Prefill attention: our tensor-core kernel vs the CUDA-core one vs torch SDPA flash (GPU machine).

    PYTHONPATH=. python tools/bench_prefill.py

Causal, head_dim 128, fp16, paged cache (page 16, shuffled pages) for ours; torch gets
contiguous [B, H, L, D] tensors (FLASH_ATTENTION backend). Times: CUDA events around 10
back-to-back calls, median of 7. TFLOP/s counts the causal half: 2 * 2 * B * Hq * L^2 * D / 2.
Also checks ours against torch on the same values (max abs error).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def timed(fn, reps: int = 10, rounds: int = 7) -> float:
    import cupy as cp

    fn()
    out = []
    for _ in range(rounds):
        s, e = cp.cuda.Event(), cp.cuda.Event()
        s.record()
        for _ in range(reps):
            fn()
        e.record()
        e.synchronize()
        out.append(cp.cuda.get_elapsed_time(s, e) * 1e3 / reps)
    return float(np.median(out))


def main() -> None:
    import cupy as cp

    from rawengine.backends.base import StepMeta
    from rawengine.backends.cuda.backend import CudaBackend

    try:
        import torch
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        torch = None
    be = CudaBackend("float16")
    d, bs = 128, 16
    rows = []
    print("| B x L | Hq/Hkv | torch flash us | ours mma us | ours CUDA-core us | TFLOP/s mma | x torch | max err |")
    print("|---|---|---|---|---|---|---|---|")
    for B, L in [(1, 1024), (1, 2048), (1, 4096), (8, 2048), (1, 16384)]:
        for hq, hkv in [(32, 32), (32, 8)]:
            rng = np.random.default_rng(B * L + hkv)
            nblk = L // bs
            pool = rng.permutation(B * nblk).astype(np.int32)
            tables = pool.reshape(B, nblk)
            qstart = np.arange(B + 1, dtype=np.int32) * L
            meta = StepMeta(positions=cp.asarray(np.tile(np.arange(L, dtype=np.int32), B)),
                            slot_mapping=cp.zeros(B * L, cp.int32), query_start=cp.asarray(qstart),
                            seq_lens=cp.full(B, L, cp.int32), block_tables=cp.asarray(tables),
                            logits_indices=cp.asarray(qstart[1:] - 1), max_query_len=L,
                            max_seq_len=L, is_decode=False)
            q = cp.random.standard_normal((B * L, hq, d), dtype=cp.float32).astype(cp.float16)
            kc = cp.random.standard_normal((B * nblk, hkv, bs, d), dtype=cp.float32).astype(cp.float16)
            vc = cp.random.standard_normal((B * nblk, hkv, bs, d), dtype=cp.float32).astype(cp.float16)
            scale = d ** -0.5
            t_mma = timed(lambda: be.attention_prefill(q, kc, vc, meta, scale, impl="mma"))
            t_cc = (timed(lambda: be.attention_prefill(q, kc, vc, meta, scale, impl="cuda_core"),
                          reps=2, rounds=3) if B * L <= 4096 else float("nan"))
            flops = 2 * 2 * B * hq * L * L * d / 2
            t_torch, err = float("nan"), float("nan")
            if torch is not None:
                # contiguous [B, H, L, D] views of the same values (pages gathered back in order)
                def contig(c):
                    g = c[cp.asarray(tables)]  # [B, nblk, Hkv, BS, D]
                    return torch.as_tensor(g.transpose(0, 2, 1, 3, 4).reshape(B, hkv, L, d), device="cuda")
                tk, tv = contig(kc), contig(vc)
                tq = torch.as_tensor(q.reshape(B, L, hq, d).transpose(0, 2, 1, 3), device="cuda")
                if hkv != hq:
                    tk = tk.repeat_interleave(hq // hkv, dim=1)
                    tv = tv.repeat_interleave(hq // hkv, dim=1)
                tq, tk, tv = tq.contiguous(), tk.contiguous(), tv.contiguous()
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    ref = F.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
                    t_torch = timed(lambda: F.scaled_dot_product_attention(tq, tk, tv, is_causal=True))
                ours = be.attention_prefill(q, kc, vc, meta, scale, impl="mma")
                ref_c = cp.asarray(ref.transpose(1, 2).reshape(B * L, hq * d))
                err = float(cp.abs(ours.astype(cp.float32) - ref_c.astype(cp.float32)).max())
            r = (f"{B} x {L}", f"{hq}/{hkv}", t_torch, t_mma, t_cc, flops / t_mma / 1e6,
                 t_torch / t_mma, err)
            rows.append(r)
            print(f"| {r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.1f} | {r[4]:.1f} | {r[5]:.0f} | "
                  f"{r[6]:.2f} | {r[7]:.2e} |", flush=True)
            q = kc = vc = None  # drop the buffers before the next size
            cp.get_default_memory_pool().free_all_blocks()


if __name__ == "__main__":
    main()
