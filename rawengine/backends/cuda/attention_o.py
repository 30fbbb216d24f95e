"""Decode attention + o_proj in one launch for small models (the O_PROJ builds of
decode_attention_mma.cu, tensor cores, the default, and of decode_attention.cu's cp.async.bulk
kernel; the o_proj half is attn_o.cuh), o_proj's output as fixed-point sums (fixed_sum.py) that
the fused MLP (mlp.py) reads directly.

    y[b] = o_proj(attention(q[b], K/V of sequence b))     one launch, no split merge

It pays where the step is a chain of latency-bound kernels, not bytes: small models at batch
sizes whose blocks fit one wave, at short contexts. Every block of a KV head recomputes that
head's attention for its slice of o_proj's rows (docs/launch_notes.md, "Session 10"), so the
cost grows with the context: MAX_LEN bounds where it is used (graphs.py captures a short-context
graph per batch bucket whose capacity is MAX_LEN, so the choice is known when capturing).
"""

from __future__ import annotations

import os

import cupy as cp

from .attention import LOG2E, compute_capability, num_sms
from .attention_plan import bulk_smem_bytes, mma_smem_bytes
from .fixed_sum import FixedSumPool
from .gemm import SMEM_MAX, _dtype_flag, _is_lowp, _kernel, _set_smem, cdiv

# the largest capacity (StepMeta.max_seq_len) it serves (Backend.short_context): the keys its
# rings hold before the PDL wait at D 64. SmolLM2 step graph, fused vs unfused (H100): context
# 256 344.8 vs 393.9 us, 512 393.5 vs 406.9, 900 481.2 vs 383.0 (past the rings the keys stream
# after the wait, once per row block)
MAX_LEN = 512
# rows of o_proj per block (ROWS) and the attention shape: 8 warps, 16-token tiles, up to 4 ring
# slots a warp (512 keys on chip before the PDL wait at D 64; 3 slots fit at D 128).
# The attention half: "mma" (decode_attention_mma.cu, tensor cores, cp.async rings; UNROLL
# unused) or "bulk" (decode_attention.cu, CUDA cores, cp.async.bulk rings). SmolLM2 step graph,
# context 256, same process (docs/launch_notes.md, "Session 10"): unfused 393.9 us, bulk 8 warps
# 391.5, bulk 16 warps 382.1, mma 4 warps 387.2, mma 8 warps 344.8; rows 24 (mma) 361.1.
ROWS = 48
NUM_WARPS, UNROLL, STAGES = 8, 4, 4
IMPL = "mma"
FILES = {"bulk": "decode_attention.cu", "mma": "decode_attention_mma.cu"}


def enabled() -> bool:
    return os.environ.get("RAWENGINE_FUSED_ATTN_O", "1") != "0"


TRACE = os.environ.get("RAWENGINE_ATTN_O_TRACE", "0") == "1"  # tools/trace_mlp.py sets it first
# tools/ablate_decode.py's "ao=" variants set these (warps, unroll, stages, rows) for A/Bs
OVERRIDE: dict = {}


def _shape(rows=None, stages=None) -> tuple[int, int, int, int]:
    o = OVERRIDE
    return (o.get("warps", NUM_WARPS), o.get("unroll", UNROLL),
            stages or o.get("stages", STAGES), rows or o.get("rows", ROWS))


def _impl() -> str:
    return OVERRIDE.get("impl", IMPL)


def smem_bytes(head_dim: int, group: int, rows: int | None = None,
               stages: int | None = None) -> int:
    """Dynamic shared memory: the K/V rings (or the BlockSmem overlaying them, if larger),
    then the Wo slice [rows][group * head_dim]."""
    warps, unroll, stages, rows = _shape(rows, stages)
    if _impl() == "mma":  # 16-token tiles
        attn = mma_smem_bytes(head_dim, group, dict(num_warps=warps, tile=16, stages=stages))
    else:
        attn = bulk_smem_bytes(head_dim, group,
                               dict(num_warps=warps, unroll=unroll, stages=stages))
    return attn + rows * group * head_dim * 2


def _fit_stages(head_dim: int, group: int, rows: int | None, stages: int | None) -> int:
    """stages as asked (argument or OVERRIDE), else the deepest ring up to STAGES whose shared
    memory fits (mma at D 128: 8.5 KB a slot, so 3 of the 4 slots of D 64)."""
    if stages or "stages" in OVERRIDE:
        return stages or OVERRIDE["stages"]
    return next((s for s in range(STAGES, 2, -1)
                 if smem_bytes(head_dim, group, rows, s) <= SMEM_MAX), 2)


def applies(hq: int, hkv: int, head_dim: int, hidden: int, batch: int, *,
            rows: int | None = None, stages: int | None = None, size_rule: bool = True) -> bool:
    """Whether the fused kernel runs this shape on this device: sm_90 (where it was measured;
    the bulk build needs cp.async.bulk), one block per KV head (GQA groups of at most 8 heads), head_dim 64 or 128, shared memory, and
    (size_rule) all blocks in one wave."""
    group = hq // hkv if hkv and hq % hkv == 0 else 0
    if not group:
        return False
    stages = _fit_stages(head_dim, group, rows, stages)
    _, _, stages, rows = _shape(rows, stages)
    if (not enabled() or head_dim not in (64, 128) or not 1 <= group <= 8 or rows < 1
            or compute_capability(cp.cuda.Device().id) < 90
            or smem_bytes(head_dim, group, rows, stages) > SMEM_MAX):
        return False
    return not size_rule or cdiv(hidden, rows) * hkv * batch <= num_sms(cp.cuda.Device().id)


def attention_o(q, k_cache, v_cache, block_tables, seq_lens, scale: float, w_o,
                pool: FixedSumPool, *, max_seq_len: int, force: bool = False,
                rows: int | None = None, stages: int | None = None):
    """y = attention(q) @ w_o.T as a FixedSum [B, H], or None where the fused kernel does not
    apply (applies(), a capacity over MAX_LEN, dtypes, alignment, RAWENGINE_FUSED_ATTN_O=0).
    q [B, Hq, D]; k/v_cache [NB, Hkv, BS, D]; w_o [H, Hq * D]; block_tables, seq_lens as
    decode_attention. force skips the size rules (tests); rows and stages override ROWS and
    STAGES (tests, tools). The kernel adds into replica 0 of y (the others stay zero, so
    readers summing REPLICAS copies read the same values)."""
    if q.ndim != 3 or k_cache.ndim != 4 or w_o.ndim != 2:
        return None
    batch, hq, d = q.shape
    _, hkv, bs, d2 = k_cache.shape
    if not hkv or hq % hkv:
        return None
    stages = _fit_stages(d, hq // hkv, rows, stages)
    warps, unroll, stages, rows = _shape(rows, stages)
    hidden = w_o.shape[0]
    if (d != d2 or bs & (bs - 1) or v_cache.shape != k_cache.shape or w_o.shape[1] != hq * d
            or not _is_lowp(q, k_cache, v_cache, w_o)
            or any(not a.flags.c_contiguous or a.data.ptr % 16 for a in (q, k_cache, v_cache, w_o))
            or block_tables.dtype != cp.int32 or seq_lens.dtype != cp.int32
            or block_tables.ndim != 2 or block_tables.shape[0] < batch
            or seq_lens.shape[0] < batch
            or not applies(hq, hkv, d, hidden, batch, rows=rows, stages=stages,
                           size_rule=not force)
            or (not force and max_seq_len > MAX_LEN)
            # the tensor-core kernel's cache row index is 32-bit
            or (_impl() == "mma" and k_cache.shape[0] * hkv * bs >= 1 << 32)):
        return None
    group, grid = hq // hkv, (cdiv(hidden, rows), hkv, batch)
    y, clear = pool.take((batch, hidden), q.dtype)
    kern = _kernel(FILES[_impl()], "decode_attention_o_kernel",
                   kernel_defines(d, group, _dtype_flag(q), rows, stages))
    smem = smem_bytes(d, group, rows, stages)
    _set_smem(kern, smem)
    kern(grid, (warps * 32,),
         (q, k_cache, v_cache, block_tables, seq_lens, w_o, y.sums,
          clear if clear is not None else y.sums, cp.int32(0 if clear is None else clear.size),
          cp.int32(hq), cp.int32(hkv), cp.int32(block_tables.shape[1]),
          cp.int32(bs.bit_length() - 1), cp.int32(hidden), cp.float32(scale * LOG2E)),
         shared_mem=smem)
    return y


def kernel_defines(head_dim: int, group: int, dtype_flag: int, rows: int | None = None,
                   stages: int | None = None) -> dict:
    """decode_attention_o_kernel's defines; RAWENGINE_ATTN_O_TRACE=1 builds the phase-stamping
    variant (tools/trace_mlp.py)."""
    warps, unroll, stages, rows = _shape(rows, _fit_stages(head_dim, group, rows, stages))
    if _impl() == "mma":
        return dict(HEAD_DIM=head_dim, GROUP=group, NUM_WARPS=warps, TILE=16, STAGES=stages,
                    MIN_BLOCKS=1, O_PROJ=1, ROWS=rows, DTYPE_BF16=dtype_flag)
    return dict(HEAD_DIM=head_dim, GROUP=group, NUM_WARPS=warps, UNROLL=unroll, BULK=stages,
                PREFETCH=0, MIN_BLOCKS=1, O_PROJ=1, ROWS=rows, DTYPE_BF16=dtype_flag,
                ATTN_O_TRACE=int(TRACE))
