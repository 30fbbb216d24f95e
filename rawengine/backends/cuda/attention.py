"""Decode attention over the paged KV cache: launchers for kernels_cu/decode_attention.cu.

    o[b, h] = softmax_j(scale * q[b, h] . k[j, h // G]) v[j, h // G],  j < seq_lens[b]

Two variants, one kernel file: 'sync' (Flash-Decoding: split-KV, running max, log-sum-exp merge)
and 'async' (FlashDecoding++: one unified max phi per model, plain sums, exact fallback to the
running max inside the kernel when a split's logits leave [phi + lo, phi + hi]).

Three implementations of 'sync' (config["impl"]): 'cuda_core' (decode_attention.cu), 'mma'
(decode_attention_mma.cu: Q K^T and P V on tensor cores) and 'bulk' (decode_attention.cu built
with BULK: K/V reach shared memory through per-warp cp.async.bulk rings instead of register
loads; sm_90), all with the same grid, chunk rule, workspace and counters. With no config,
'sync' runs 'mma' for GQA groups of >= 3 heads when the step's K/V is small (TUNING
mma_min_group / mma_max_kv_mb: latency-bound steps, where it measured 10-15% faster on the
H100), 'bulk' for GQA groups of 2-4 heads when the step's K/V is >= 1 GB (bulk_groups /
bulk_min_kv_mb: 1-2% faster there) and 'cuda_core' elsewhere.

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

# Tuned per GPU, never online (plain data), fitted to the H100 sweep of 2026-11-21 (see
# docs/decode_attention_notes.md). A block step (STEP tokens of K and V) takes
# (lat_us^p + (bytes in flight over the chip / bw)^p)^(1/p): a latency floor that blends into
# the bandwidth share. 'warps_per_sm' resident warps at 128 registers; 'block_us' fixed cost of
# a block (q, first page ids, partial write, counter); the merge reads S partial rows.
TUNING = {
    "default": dict(bw=3.0e12, lat_us=1.2, p=2.5, warps_per_sm=16, block_us=1.0,
                    fixed_us=3.0, merge_bytes_per_us=2.0e5, max_splits=128,
                    num_warps=8, unroll=4, unroll_async=3, num_warps_big_group=4,
                    unroll_big_group=2,
                    prefetch_kv_mb=(24, 100), min_chunk={64: 128, 128: 0},
                    # tensor-core kernel (impl "mma"): UNMEASURED best guess, not yet swept on
                    # the H100. 4 warps x 16-token tiles x 3 stages = 104 KB of cp.async ring at
                    # D=128 (2 blocks/SM, 16 KB in flight per warp); see kernel_config().
                    mma=dict(num_warps=4, tile=16, stages=3, min_blocks=2),
                    # CUDA-core kernel fed by cp.async.bulk rings (impl "bulk", sm_90, sync
                    # only): 8 warps x 2 slots of 8-token K/V tiles, 64 KB per block, one block
                    # per SM at 168 registers (session 6 A/B of 8 shapes: docs notes)
                    bulk=dict(num_warps=8, unroll=4, stages=2, min_blocks=1),
                    # where 'sync' runs the bulk build unasked: GQA groups of bulk_groups heads,
                    # head_dim 128, a step's K/V of >= bulk_min_kv_mb, sm_90 (H100, session 6,
                    # same call: 0.8-2.3% faster than 'cuda_core' on 32/8 from 1 GB of K/V up,
                    # even at 0.5 GB, 1% slower for MHA and up to 19% slower on small steps)
                    bulk_groups=(2, 4), bulk_min_kv_mb=1000,
                    # where 'sync' runs the tensor-core kernel unasked (decode_attention with
                    # no config): a GQA group of >= mma_min_group heads and a step's K/V of
                    # <= mma_max_kv_mb (H100, session 4 grid: mma 5.0 vs 5.7 us at B1 32/8 1k,
                    # 8.9 vs 9.8 at 4k, 12.2 vs 14.3 at B8 1k; 5-9% slower from 67 MB up and
                    # for MHA, where 15 of its 16 mma rows are padding)
                    mma_min_group=3, mma_max_kv_mb=40,
                    # plan_decode fills a partial single wave when the step's K/V is larger
                    fill_wave_min_kv_mb=32,
                    smem_per_sm=228 * 1024, smem_per_block_reserved=1024),
}
# min_chunk (per head_dim): least tokens per split, applied on the device to the real length
# (the plan's S is sized for the bucket's capacity). 0 = finest (one unroll-1 block step:
# 16 tokens at D=128, 32 at D=64, 8 warps); STEP (64 at D=128, 128 at D=64) is the v1 rule.
# Run 5 (H100, capacity 8192, L 128/256/1024): D=128 best at 0, D=64 best at STEP on average
# (docs/decode_attention_notes.md, short contexts).


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def head_group(num_q_heads: int, num_kv_heads: int) -> int:
    """Query heads per block: the largest divisor of Hq/Hkv that is at most MAX_GROUP."""
    g = num_q_heads // num_kv_heads
    return max(d for d in range(1, min(g, MAX_GROUP) + 1) if g % d == 0)


IMPLS = ("cuda_core", "mma", "bulk")


def kernel_config(head_dim: int, group: int, kv_bytes: int = 0,
                  tune: dict | None = None, is_async: bool = False,
                  impl: str = "cuda_core") -> dict:
    """Kernel shape for a block of `group` query heads (G > 4 needs ~250 registers at
    UNROLL 2, so it runs 4-warp blocks). The L2 prefetch of the next tile pays only when the
    step's K/V is a few L2 sizes or less (24-100 MB measured on H100: +15% at 67 MB); when
    streaming GBs from DRAM it costs 2-4%. The async variant keeps one more live value per
    score and spills 8 B at UNROLL 4 under the 2-blocks/SM register cap, so it runs UNROLL 3
    (tools/check_kernels.py fails on spills).
    impl 'mma' (tensor cores, sync only): the tuned TUNING[...]["mma"] shape, the same for
    every group <= 8 (registers do not grow with G; unmeasured default)."""
    t = tune or TUNING["default"]
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, not {impl!r}")
    if impl in ("mma", "bulk"):
        if is_async:
            raise ValueError(f"the decode kernel impl={impl!r} implements the 'sync' "
                             "variant only; use impl='cuda_core' for 'async'")
        return dict(impl=impl, **t[impl])
    lo_mb, hi_mb = t["prefetch_kv_mb"]
    prefetch = int(lo_mb * 1e6 < kv_bytes <= hi_mb * 1e6)
    if group <= 4:
        unroll = t["unroll_async"] if is_async else t["unroll"]
        return dict(num_warps=t["num_warps"], unroll=unroll, prefetch=prefetch)
    return dict(num_warps=t["num_warps_big_group"], unroll=t["unroll_big_group"],
                prefetch=prefetch)


def tokens_per_step(head_dim: int, cfg: dict) -> int:
    """Tokens one block consumes per loop step (the chunk granularity)."""
    if cfg.get("impl", "cuda_core") == "mma":
        return cfg["tile"] * cfg["num_warps"]
    return (32 // (head_dim // 8)) * cfg["unroll"] * cfg["num_warps"]


def _block_smem_bytes(head_dim: int, group: int, num_warps: int) -> int:
    """sizeof(BlockSmem) (decode_common.cuh): o, m, l, m_true floats per warp and head."""
    return -(-num_warps * group * (head_dim + 3) * 4 // 16) * 16


def mma_smem_bytes(head_dim: int, group: int, cfg: dict) -> int:
    """Dynamic shared memory of decode_attention_mma.cu (its SMEM_BYTES; the kernel traps on
    less): the per-warp cp.async rings (K and V tiles of `tile` rows, row stride D + 8
    elements) or the BlockSmem that overlays them after the loop, whichever is larger."""
    ring = cfg["num_warps"] * cfg["stages"] * 2 * cfg["tile"] * (head_dim + 8) * 2
    return max(ring, _block_smem_bytes(head_dim, group, cfg["num_warps"]))


def bulk_smem_bytes(head_dim: int, group: int, cfg: dict) -> int:
    """Dynamic shared memory of the impl='bulk' build of decode_attention.cu (BULK_RING_BYTES
    or the BlockSmem overlaying the rings, whichever is larger; the kernel traps on less)."""
    tile = 32 // (head_dim // 8) * cfg["unroll"]
    ring = cfg["num_warps"] * cfg["stages"] * 2 * tile * head_dim * 2
    return max(ring, _block_smem_bytes(head_dim, group, cfg["num_warps"]))


def _fits_smem(impl: str, cfg: dict, smem: int, tune: dict) -> int:
    if smem > tune["smem_per_sm"] - tune["smem_per_block_reserved"]:
        raise ValueError(f"{impl} config {cfg} needs {smem} B of shared memory per block")
    return smem


def _check_bulk_config(head_dim: int, group: int, cfg: dict, tune: dict) -> int:
    """Validate an impl='bulk' shape; returns its dynamic shared memory in bytes."""
    nw, unroll, stages = cfg["num_warps"], cfg["unroll"], cfg["stages"]
    tile = 32 // (head_dim // 8) * unroll
    if (nw < 1 or nw > 32 or nw & (nw - 1) or unroll < 1 or unroll & (unroll - 1)
            or tile > 16 or stages < 2):
        raise ValueError(f"bulk config needs num_warps and unroll powers of 2, at most 16 "
                         f"tokens per warp step (32 / (D / 8) * unroll) and stages >= 2: {cfg}")
    return _fits_smem("bulk", cfg, bulk_smem_bytes(head_dim, group, cfg), tune)


def _check_mma_config(head_dim: int, group: int, cfg: dict, tune: dict) -> int:
    """Validate an impl='mma' shape; returns its dynamic shared memory in bytes."""
    nw, tile, stages = cfg["num_warps"], cfg["tile"], cfg["stages"]
    if nw < 1 or nw > 32 or nw & (nw - 1) or tile not in (16, 32) or stages < 2:
        raise ValueError(f"mma config needs num_warps a power of 2 <= 32, tile 16 or 32, "
                         f"stages >= 2: {cfg}")
    return _fits_smem("mma", cfg, mma_smem_bytes(head_dim, group, cfg), tune)


def _blocks_per_sm(head_dim: int, group: int, cfg: dict, t: dict) -> int:
    """Resident blocks per SM the plan assumes: registers (warps_per_sm at 128 registers) for
    the CUDA-core kernel; also shared memory for the tensor-core one."""
    impl = cfg.get("impl", "cuda_core")
    by_regs = max(1, t["warps_per_sm"] // cfg["num_warps"])
    if impl == "cuda_core":
        return by_regs
    if impl == "bulk":
        by_regs = max(1, cfg.get("min_blocks", 1))
    smem_bytes = mma_smem_bytes if impl == "mma" else bulk_smem_bytes
    per_block = smem_bytes(head_dim, group, cfg) + t["smem_per_block_reserved"]
    return max(1, min(by_regs, t["smem_per_sm"] // per_block))


def _config_tuple(cfg: dict) -> tuple:
    """plan_decode's hashable config: (num_warps, unroll), ('mma', num_warps, tile, stages)
    or ('bulk', num_warps, unroll, stages, min_blocks)."""
    if cfg.get("impl", "cuda_core") == "mma":
        return ("mma", cfg["num_warps"], cfg["tile"], cfg["stages"])
    if cfg.get("impl") == "bulk":
        return ("bulk", cfg["num_warps"], cfg["unroll"], cfg["stages"], cfg.get("min_blocks", 1))
    return (cfg["num_warps"], cfg["unroll"])


@functools.lru_cache(maxsize=4096)
def plan_decode(batch: int, num_kv_heads: int, max_seq_len: int, num_sms: int, *,
                group: int = 1, head_dim: int = 128, config: tuple | None = None,
                tune_key: str = "default", impl: str = "cuda_core") -> int:
    """Number of KV splits for a decode step of this bucket (fixed per captured graph).

    A cost model rather than a rule of thumb. Blocks run in waves of `slots` (resident blocks);
    a block step costs (lat^p + (bytes in flight / bw)^p)^(1/p), so few blocks are latency-
    bound and many share the bandwidth; each block pays a fixed cost and splits pay a merge
    read of S partial rows per (sequence, head block). The least modelled time wins; fewer
    splits win ties (2%). FA2's heuristic maximises wave efficiency only and FlashInfer's
    fills the SMs; this also prices latency-bound small grids, block overhead and the merge.
    config: (num_warps, unroll) when not the tuned one, or ('mma', num_warps, tile, stages)
    for the tensor-core kernel; impl='mma' without config: its tuned shape. The tensor-core
    kernel uses the same cost model (its step is tile * num_warps tokens, its resident blocks
    also limited by shared memory): not yet fitted to its own measurements."""
    t = TUNING[tune_key]
    g_blk = max(d for d in range(1, min(group, MAX_GROUP) + 1) if group % d == 0)
    if config and config[0] == "mma":
        cfg = dict(zip(("impl", "num_warps", "tile", "stages"), config))
    elif config and config[0] == "bulk":
        cfg = dict(zip(("impl", "num_warps", "unroll", "stages", "min_blocks"), config))
    elif config:
        cfg = dict(zip(("num_warps", "unroll"), config))
    else:
        cfg = kernel_config(head_dim, g_blk, tune=t, impl=impl)
    step = tokens_per_step(head_dim, cfg)
    units = batch * num_kv_heads * (group // g_blk)
    n_steps = cdiv(max(max_seq_len, 1), step)
    slots = num_sms * _blocks_per_sm(head_dim, g_blk, cfg, t)
    bytes_step = step * head_dim * 2 * 2  # K and V, 2-byte elements
    p = t["p"]

    def step_us(active):
        bw_us = bytes_step * active / t["bw"] * 1e6
        return (t["lat_us"] ** p + bw_us ** p) ** (1 / p)

    costs = {}
    best_s, best_t = 1, math.inf
    for s in range(1, min(t["max_splits"], n_steps) + 1):
        steps = cdiv(n_steps, s)
        full, rem = divmod(units * s, slots)
        cost = t["fixed_us"] + full * (steps * step_us(slots) + t["block_us"])
        if rem:
            cost += steps * step_us(rem) + t["block_us"]
        if s > 1:
            cost += s * g_blk * head_dim * 8 / t["merge_bytes_per_us"]
        costs[s] = cost
        if cost < best_t * 0.98:
            best_s, best_t = s, cost
    # A DRAM-bound step in one partial wave: fill it. Below ~2,048 resident warps the chip
    # does not reach full bandwidth, which the blend above underprices (H100, session 5: B1
    # 32/32 L128k S = 7 739.5 us vs S = 8 711; 26 shapes: -2 to -8% from 32 MB of K/V up,
    # +3 to +28% on the L2-sized ones below, hence the threshold).
    kv_bytes = 2 * batch * num_kv_heads * max_seq_len * head_dim * 2
    if kv_bytes > t["fill_wave_min_kv_mb"] * 1e6 and units * best_s < slots:
        fuller = [s for s in costs if s > best_s and units * s <= slots and costs[s] < best_t]
        if fuller:
            best_s = min(fuller, key=costs.get)
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


def default_config(group: int, head_dim: int, kv_bytes: int, is_async: bool,
                   cache_rows: int = 0) -> dict | None:
    """The implementation a call with no config runs (None: 'cuda_core', the tuned shape):
    'mma' for short GQA steps (TUNING mma_min_group / mma_max_kv_mb; its row index is 32-bit),
    'bulk' for long GQA steps on sm_90 (bulk_groups / bulk_min_kv_mb, head_dim 128). Both are
    sync only. group: query heads per block (head_group)."""
    t = TUNING["default"]
    if is_async:
        return None
    if group >= t["mma_min_group"] and kv_bytes <= t["mma_max_kv_mb"] * 1e6 and cache_rows < 1 << 32:
        return {"impl": "mma"}  # latency-bound: tensor cores
    if (t["bulk_groups"][0] <= group <= t["bulk_groups"][1] and head_dim == 128
            and kv_bytes >= t["bulk_min_kv_mb"] * 1e6
            and compute_capability(cp.cuda.Device().id) >= 90):
        return {"impl": "bulk"}  # DRAM-bound GQA: cp.async.bulk rings
    return None


def resolve_config(head_dim: int, group: int, kv_bytes: int, is_async: bool,
                   config: dict | None = None, cache_rows: int = 0) -> tuple[dict, int]:
    """The kernel shape a call runs (config over its impl's tuned shape; None: the default
    rule's choice) and its dynamic shared memory in bytes. Raises ValueError for an impl or
    shape the kernels cannot run (async on 'mma'/'bulk', 'bulk' below sm_90, a 32-bit row
    index overflow on 'mma', rings over the shared memory)."""
    if config is None:
        config = default_config(group, head_dim, kv_bytes, is_async, cache_rows)
    config = config or {}
    impl = config.get("impl", "cuda_core")
    cfg = {**kernel_config(head_dim, group, kv_bytes, is_async=is_async, impl=impl), **config}
    if impl == "mma":
        smem = _check_mma_config(head_dim, group, cfg, TUNING["default"])
        if cache_rows >= 1 << 32:  # the kernel's cache row index is 32-bit
            raise ValueError(f"impl='mma' needs fewer than 2^32 cache rows, not {cache_rows}")
        return cfg, smem
    if impl == "bulk":
        if compute_capability(cp.cuda.Device().id) < 90:
            raise ValueError("impl='bulk' needs sm_90 (cp.async.bulk)")
        return cfg, _check_bulk_config(head_dim, group, cfg, TUNING["default"])
    return cfg, 0


def planned_splits(batch: int, num_q_heads: int, num_kv_heads: int, head_dim: int,
                   max_seq_len: int, config: dict | None = None, is_async: bool = False) -> int:
    """The split count decode_attention plans for this step and config (None: the default
    rule's choice), for tools that report it."""
    kv_bytes = 2 * batch * num_kv_heads * max_seq_len * head_dim * 2
    cfg, _ = resolve_config(head_dim, head_group(num_q_heads, num_kv_heads), kv_bytes,
                            is_async, config)
    return plan_decode(batch, num_kv_heads, max_seq_len, num_sms(cp.cuda.Device().id),
                       group=num_q_heads // num_kv_heads, head_dim=head_dim,
                       config=_config_tuple(cfg))


@functools.lru_cache(maxsize=None)
def compute_capability(device_id: int = 0) -> int:
    return int(cp.cuda.Device(device_id).compute_capability)


def _is_bf16(a) -> bool:
    return a.dtype == np.uint16 or a.dtype.name == "bfloat16"


def decode_attention(q, k_cache, v_cache, block_tables, seq_lens, scale: float, *,
                     max_seq_len: int, variant: str = "sync", phi: float | None = None,
                     window: tuple[float, float] | None = None,
                     workspace: DecodeWorkspace | None = None, out=None,
                     num_splits: int | None = None, config: dict | None = None,
                     min_chunk: int | None = None):
    """o = softmax(scale * q k^T) v per sequence over its paged KV; returns out [B, Hq * D].

    q [B, Hq, D]; k_cache, v_cache [NB, Hkv, BS, D] (BS a power of two); block_tables
    [B, max_blocks] int32; seq_lens [B] int32 (read on the device: graph-safe);
    max_seq_len: the bucket's capacity (host int), sizes the split plan.
    variant 'async' needs phi (natural-log units of scale * q.k, tools/calibrate_softmax.py);
    window (lo, hi) around phi, default DEFAULT_WINDOW. Dtypes: float16, or bfloat16 as a
    'bfloat16' dtype or raw uint16 bits; out has q's dtype. num_splits / config override the
    plan and the tuned kernel shape (tests, tools/bench_attention.py); min_chunk overrides the
    tuned least tokens per split (the device's chunk rule for short sequences).
    config["impl"]: 'cuda_core' (default), 'mma' (tensor cores, decode_attention_mma.cu) or
    'bulk' (cp.async.bulk rings, sm_90), both variant 'sync' only ('async' raises ValueError);
    a partial mma or bulk config such as
    dict(impl="mma", stages=4) takes the other keys (mma: num_warps, tile, stages,
    min_blocks; bulk: num_warps, unroll, stages, min_blocks) from TUNING["default"][impl]."""
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
    kv_bytes = 2 * batch * hkv * int(max_seq_len) * d * k_cache.itemsize
    is_async = variant == "async"
    cfg, smem = resolve_config(d, group, kv_bytes, is_async, config, nb * hkv * bs)
    impl = cfg.get("impl", "cuda_core")
    if num_splits is None:
        num_splits = plan_decode(batch, hkv, int(max_seq_len), num_sms(cp.cuda.Device().id),
                                 group=hq // hkv, head_dim=d, config=_config_tuple(cfg))
    ws = workspace or get_workspace(batch, hq, hkv, d, num_splits)
    if not ws.fits(batch, hq, d, num_splits, y):
        raise ValueError("workspace too small for this batch / split count")
    if out is None:
        out = cp.empty((batch, hq * d), q.dtype)
    elif out.shape != (batch, hq * d) or out.dtype != q.dtype or not out.flags.c_contiguous:
        raise ValueError(f"out must be a contiguous {(batch, hq * d)} array of {q.dtype}")

    lo, hi = window or DEFAULT_WINDOW
    if min_chunk is None:
        min_chunk = TUNING["default"]["min_chunk"][d]
    if impl == "mma":
        defines = dict(HEAD_DIM=d, GROUP=group, NUM_WARPS=cfg["num_warps"], TILE=cfg["tile"],
                       STAGES=cfg["stages"], MIN_BLOCKS=cfg.get("min_blocks", 2),
                       L2_256=int(cfg.get("l2_256", 0)))
        name = ("decode_attention_mma.cu", "decode_attention_mma_kernel")
    elif impl == "bulk":
        defines = dict(HEAD_DIM=d, GROUP=group, NUM_WARPS=cfg["num_warps"],
                       UNROLL=cfg["unroll"], BULK=cfg["stages"], PREFETCH=0,
                       MIN_BLOCKS=cfg.get("min_blocks", 1))
        name = ("decode_attention.cu", "decode_attention_kernel")
    else:
        defines = dict(HEAD_DIM=d, GROUP=group, NUM_WARPS=cfg["num_warps"],
                       UNROLL=cfg["unroll"], IS_ASYNC=int(is_async),
                       PREFETCH=int(cfg.get("prefetch", 0)),
                       MIN_BLOCKS=cfg.get("min_blocks", max(1, 16 // cfg["num_warps"])
                                          if group <= 4 else 1))
        name = ("decode_attention.cu", "decode_attention_kernel")
    if _is_bf16(q):
        defines["DTYPE_BF16"] = 1
    fn = kernel(*name, defines)
    if smem > 48 * 1024 and fn.max_dynamic_shared_size_bytes < smem:
        fn.max_dynamic_shared_size_bytes = smem
    fn((num_splits, y, batch), (cfg["num_warps"] * 32,),
       (q, k_cache, v_cache, block_tables, seq_lens, out, ws.part_o, ws.part_ml, ws.counters,
        ws.fallback_count, np.int32(hq), np.int32(hkv), np.int32(block_tables.shape[1]),
        np.int32(bs.bit_length() - 1), np.float32(scale * LOG2E),
        np.float32((phi or 0.0) * LOG2E), np.float32(lo * LOG2E), np.float32(hi * LOG2E),
        np.int32(min_chunk)), shared_mem=smem)
    return out
