"""Decode attention over the paged KV cache: launchers for kernels_cu/decode_attention.cu.

    o[b, h] = softmax_j(scale * q[b, h] . k[j, h // G]) v[j, h // G],  j < seq_lens[b]

Two variants, one kernel file: 'sync' (Flash-Decoding: split-KV, running max, log-sum-exp merge)
and 'async' (FlashDecoding++: one unified max phi per model, plain sums, exact fallback to the
running max inside the kernel when a split's logits leave [phi + lo, phi + hi]).

Plan once per step (`plan_decode`: splits from the bucket's batch and max length), run per
layer (`decode_attention`). The workspace depends only on the plan, so it is allocated once per
bucket (`get_workspace`) and is safe to reuse in CUDA-graph replays: the kernel leaves its
counters at zero.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import cupy as cp
import numpy as np

from .module import kernel

LOG2E = 1.4426950408889634
# fp32 window for the async variant, natural-log units around phi. Every exponent is at most
# phi + hi: 2^(86.6) * 2^17 keys * 65504 |v| stays below float max; the largest term of a split
# is at least e^lo = 9e-27, far above the denormals, so smaller terms underflow harmlessly.
DEFAULT_WINDOW = (-60.0, 60.0)
MAX_GROUP = 8  # query heads per block; larger GQA groups take several head blocks

# Tuned per GPU, never online (plain data). 'bw' bytes/s streamed by the whole chip, 'lat_us' one
# block step when latency-bound, 'occ' resident blocks per SM, merge costs of the split reduce.
TUNING = {
    "default": dict(bw=2.9e12, lat_us=1.2, occ=4, merge_fixed_us=0.4, merge_bytes_per_us=1.0e5,
                    max_splits=128, num_warps=4, unroll=4, unroll_big_group=2),
}


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def head_group(num_q_heads: int, num_kv_heads: int) -> int:
    """Query heads per block: the largest divisor of Hq/Hkv that is at most MAX_GROUP."""
    g = num_q_heads // num_kv_heads
    return max(d for d in range(1, min(g, MAX_GROUP) + 1) if g % d == 0)


def kernel_config(head_dim: int, group: int, tune: dict | None = None) -> dict:
    t = tune or TUNING["default"]
    unroll = t["unroll"] if group <= 4 else t["unroll_big_group"]
    return dict(num_warps=t["num_warps"], unroll=unroll)


def tokens_per_step(head_dim: int, cfg: dict) -> int:
    """Tokens one block consumes per loop step (the chunk granularity)."""
    return (32 // (head_dim // 8)) * cfg["unroll"] * cfg["num_warps"]


@functools.lru_cache(maxsize=4096)
def plan_decode(batch: int, num_kv_heads: int, max_seq_len: int, num_sms: int, *,
                group: int = 1, head_dim: int = 128, step: int | None = None,
                tune_key: str = "default") -> int:
    """Number of KV splits for a decode step of this bucket (fixed per captured graph).

    Cost model, not a rule of thumb: blocks run in waves of num_sms * occ; a block step costs
    the larger of a latency floor and its share of chip bandwidth when `active` blocks stream
    at once; splits add a merge read of S partial rows per (sequence, head block). The split
    count with the least modelled time wins (ties go to fewer splits). FA2's heuristic only
    maximises wave efficiency and FlashInfer's fills the SMs; this also prices the merge and
    the latency-bound regime of short, small batches."""
    t = TUNING[tune_key]
    g_blk = max(d for d in range(1, min(group, MAX_GROUP) + 1) if group % d == 0)
    units = batch * num_kv_heads * (group // g_blk)
    step = step or tokens_per_step(head_dim, kernel_config(head_dim, g_blk, t))
    n_steps = cdiv(max(max_seq_len, 1), step)
    slots = num_sms * t["occ"]
    bytes_step = step * head_dim * 2 * 2  # K and V, 2-byte elements
    best_s, best_t = 1, math.inf
    for s in range(1, min(t["max_splits"], n_steps) + 1):
        steps = cdiv(n_steps, s)
        blocks = units * s
        full, rem = divmod(blocks, slots)
        t_full = steps * max(t["lat_us"], bytes_step * slots / t["bw"] * 1e6)
        t_rem = steps * max(t["lat_us"], bytes_step * rem / t["bw"] * 1e6) if rem else 0.0
        cost = full * t_full + t_rem
        if s > 1:
            cost += t["merge_fixed_us"] + s * g_blk * head_dim * 8 / t["merge_bytes_per_us"]
        if cost < best_t * 0.98:
            best_s, best_t = s, cost
    return best_s


@dataclasses.dataclass
class DecodeWorkspace:
    """Split partials and counters for one bucket; reusable across layers and graph replays."""

    part_o: cp.ndarray  # float32 [B * Hq * S * D]
    part_ml: cp.ndarray  # float32 [B * Hq * S * 2]
    counters: cp.ndarray  # int32 [B * head blocks], zero between launches
    fallback_count: cp.ndarray  # int32 [1], async blocks that fell back (monotonic)

    @classmethod
    def allocate(cls, batch: int, num_q_heads: int, head_dim: int, num_splits: int,
                 num_head_blocks: int) -> "DecodeWorkspace":
        n = batch * num_q_heads * num_splits
        return cls(cp.empty(n * head_dim, cp.float32), cp.empty(n * 2, cp.float32),
                   cp.zeros(batch * num_head_blocks, cp.int32), cp.zeros(1, cp.int32))

    def fits(self, batch, num_q_heads, head_dim, num_splits, num_head_blocks) -> bool:
        n = batch * num_q_heads * num_splits
        return (self.part_o.size >= n * head_dim and self.part_ml.size >= n * 2
                and self.counters.size >= batch * num_head_blocks)


_WORKSPACES: dict[tuple, DecodeWorkspace] = {}


def get_workspace(batch: int, num_q_heads: int, num_kv_heads: int, head_dim: int,
                  num_splits: int) -> DecodeWorkspace:
    """The cached workspace of this bucket (allocate before graph capture)."""
    y = num_q_heads // head_group(num_q_heads, num_kv_heads)
    key = (cp.cuda.Device().id, batch, num_q_heads, head_dim, num_splits, y)
    ws = _WORKSPACES.get(key)
    if ws is None:
        ws = _WORKSPACES[key] = DecodeWorkspace.allocate(batch, num_q_heads, head_dim,
                                                         num_splits, y)
    return ws


@functools.lru_cache(maxsize=None)
def num_sms(device_id: int = 0) -> int:
    return int(cp.cuda.Device(device_id).attributes["MultiProcessorCount"])


def _is_bf16(a) -> bool:
    return a.dtype == np.uint16 or a.dtype.name == "bfloat16"


def decode_attention(q, k_cache, v_cache, block_tables, seq_lens, scale: float, *,
                     max_seq_len: int, variant: str = "sync", phi: float | None = None,
                     window: tuple[float, float] | None = None,
                     workspace: DecodeWorkspace | None = None, out=None,
                     num_splits: int | None = None, config: dict | None = None):
    """o = softmax(scale * q k^T) v per sequence over its paged KV; returns out [B, Hq * D].

    q [B, Hq, D]; k_cache, v_cache [NB, Hkv, BS, D] (BS a power of two); block_tables
    [B, max_blocks] int32; seq_lens [B] int32 (read on the device: graph-safe);
    max_seq_len: the bucket's capacity (host int), sizes the split plan.
    variant 'async' needs phi (natural-log units of scale * q.k, tools/calibrate_softmax.py);
    window (lo, hi) around phi, default DEFAULT_WINDOW. Dtypes: float16, or bfloat16 as a
    'bfloat16' dtype or raw uint16 bits; out has q's dtype. num_splits / config override the
    plan and the tuned kernel shape (tests, tools/bench_attention.py)."""
    if variant not in ("sync", "async"):
        raise ValueError(f"variant must be 'sync' or 'async', not {variant!r}")
    if variant == "async" and phi is None:
        raise ValueError("variant='async' needs phi (see tools/calibrate_softmax.py)")
    batch, hq, d = q.shape
    nb, hkv, bs, d2 = k_cache.shape
    if d2 != d or d not in (64, 128):
        raise ValueError(f"head_dim must be 64 or 128 and match the cache (q {d}, cache {d2})")
    if v_cache.shape != k_cache.shape or hq % hkv:
        raise ValueError(f"bad shapes: q {q.shape}, k {k_cache.shape}, v {v_cache.shape}")
    if bs & (bs - 1):
        raise ValueError(f"block_size must be a power of two, got {bs}")
    if not (q.dtype == k_cache.dtype == v_cache.dtype) or not (
            q.dtype == np.float16 or _is_bf16(q)):
        raise ValueError(f"dtypes must match and be float16/bfloat16: {q.dtype}, {k_cache.dtype}")
    if block_tables.dtype != np.int32 or seq_lens.dtype != np.int32:
        raise ValueError("block_tables and seq_lens must be int32")
    if block_tables.ndim != 2 or block_tables.shape[0] < batch or seq_lens.shape[0] < batch:
        raise ValueError(f"block_tables {block_tables.shape} / seq_lens {seq_lens.shape} "
                         f"do not cover batch {batch}")
    for name, a in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache),
                    ("block_tables", block_tables), ("seq_lens", seq_lens)):
        if not a.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous")

    group = head_group(hq, hkv)
    y = hq // group
    cfg = config or kernel_config(d, group)
    if num_splits is None:
        num_splits = plan_decode(batch, hkv, int(max_seq_len), num_sms(cp.cuda.Device().id),
                                 group=hq // hkv, head_dim=d,
                                 step=tokens_per_step(d, cfg))
    ws = workspace or get_workspace(batch, hq, hkv, d, num_splits)
    if not ws.fits(batch, hq, d, num_splits, y):
        raise ValueError("workspace too small for this batch / split count")
    if out is None:
        out = cp.empty((batch, hq * d), q.dtype)
    elif out.shape != (batch, hq * d) or out.dtype != q.dtype or not out.flags.c_contiguous:
        raise ValueError(f"out must be a contiguous {(batch, hq * d)} array of {q.dtype}")

    is_async = variant == "async"
    lo, hi = window or DEFAULT_WINDOW
    defines = dict(HEAD_DIM=d, GROUP=group, NUM_WARPS=cfg["num_warps"], UNROLL=cfg["unroll"],
                   IS_ASYNC=int(is_async))
    if _is_bf16(q):
        defines["DTYPE_BF16"] = 1
    fn = kernel("decode_attention.cu", "decode_attention_kernel", defines)
    fn((num_splits, y, batch), (cfg["num_warps"] * 32,),
       (q, k_cache, v_cache, block_tables, seq_lens, out, ws.part_o, ws.part_ml, ws.counters,
        ws.fallback_count, np.int32(hq), np.int32(hkv), np.int32(block_tables.shape[1]),
        np.int32(bs.bit_length() - 1), np.float32(scale * LOG2E),
        np.float32((phi or 0.0) * LOG2E), np.float32(lo * LOG2E), np.float32(hi * LOG2E)))
    return out
