"""Decode-attention planning, no CuPy: the tuned data (TUNING), kernel shapes per impl, their
shared-memory needs and the split-count cost model (plan_decode). Pure Python, so the plan can be
checked on machines without a GPU (tests/test_attention_plan.py); attention.py launches.
"""

from __future__ import annotations

import functools
import math

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
                    # tensor-core kernel (impl "mma"): 4 warps x 16-token tiles x 3 stages =
                    # 104 KB of cp.async ring at D=128 (2 blocks/SM, 16 KB in flight per warp);
                    # see kernel_config(). H100 sweep of 18 shapes x S on 9 GQA cells (session
                    # 13): none beat it by more than 4% (B1 32/8 L1k 4/32/2 3.70 vs 3.84 us).
                    mma=dict(num_warps=4, tile=16, stages=3, min_blocks=2),
                    # its split plan: the cp.async ring overlaps a warp's steps (a step's
                    # latency floor is ~1/4 of the CUDA-core kernel's) and the merge costs a
                    # round trip per 8 splits, not bytes. Fitted to 30 measured S curves of
                    # 8 geometries (D 64 / 128, 9/3 28/4 32/8, B1-B64, 1k-8k; H100, session 13):
                    # the old plan over-split, e.g. B1 32/8 D128 L4k S 32 -> 16 7.90 -> 6.22 us,
                    # D64 L4k S 64 -> 16 6.61 -> 4.83 us (docs/decode_attention_notes.md)
                    mma_plan=dict(lat_us=0.3, p=1.5, merge_round_us=0.2),
                    # CUDA-core kernel fed by cp.async.bulk rings (impl "bulk", sm_90, sync
                    # only): 8 warps x 2 slots of 8-token K/V tiles, 64 KB per block, one block
                    # per SM at 168 registers (session 6 A/B of 8 shapes: docs notes)
                    # steal 1: the work-stealing build (decode_attention_dyn_kernel; blocks
                    # claim their tiles at run time and take over slower blocks' tails)
                    bulk=dict(num_warps=8, unroll=4, stages=2, min_blocks=1, steal=0),
                    # where 'sync' runs the bulk build unasked: GQA groups of bulk_groups heads,
                    # head_dim 128, a step's K/V of >= bulk_min_kv_mb, sm_90 (H100, session 6,
                    # same call: 0.8-2.3% faster than 'cuda_core' on 32/8 from 1 GB of K/V up,
                    # even at 0.5 GB, 1% slower for MHA and up to 19% slower on small steps)
                    bulk_groups=(2, 4), bulk_min_kv_mb=1000,
                    # ... and from bulk_one_wave_min_kv_mb when every (sequence, head block)
                    # has an SM of its own (units <= SMs, so the bulk plan's grid is one wave):
                    # with mma_math, capped at one block per SM, 0.3-2% faster than 'cuda_core'
                    # at B1 32/8 L64k-128k, B2-B16 at 0.27-1 GB (H100, session 22); at B32 L4k
                    # (two waves) even, at B64 L1k 7% slower, at 134 MB mixed
                    bulk_one_wave_min_kv_mb=256,
                    # ... with its math on tensor cores (mma_math, kernels_cu/
                    # decode_mma_step.cuh): 127 registers instead of 168 and ~50 W less at the
                    # same bytes; B8 32/8 L64k/L128k 0.5-1.8% faster (H100, session 21)
                    bulk_mma_math=1,
                    # a one-wave mma_math grid leaves room for the next call's blocks (two fit
                    # per SM) only from this step size up; below it, capped at one block per SM
                    # (H100, session 22: B8 32/8 L16k 181.5 capped vs 182.8 us, B1 32/8 L64k
                    # 93.5 vs 95.5; L64k the other way: 709.5 capped vs 705.4; L32k even)
                    bulk_share_min_kv_mb=1500,
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
STEAL_EXTRA = 8  # EXTRA of decode_attention_dyn_kernel: stolen-state slots per (sequence, head block)


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
    every group <= 8 (registers do not grow with G; swept on the H100 in session 13)."""
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
    if cfg.get("mma_math") and (head_dim != 128 or unroll != 4 or group > 8):
        raise ValueError(f"bulk mma_math=1 needs head_dim 128, unroll 4 and GQA groups of at "
                         f"most 8 query heads: {cfg}, head_dim {head_dim}, group {group}")
    if cfg.get("steal") and group > 4:  # the work-stealing build spills at G 8 (255 registers)
        raise ValueError(f"bulk steal=1 serves GQA groups of at most 4 query heads, not {group}")
    smem = cap_blocks_smem(bulk_smem_bytes(head_dim, group, cfg), cfg.get("max_blocks"), tune)
    return _fits_smem("bulk", cfg, smem, tune)


def cap_blocks_smem(smem: int, max_blocks: int | None, tune: dict) -> int:
    """Dynamic shared memory to ask for so that at most max_blocks blocks fit per SM (None or
    0: smem, no cap). CUDA has no per-kernel cap on resident blocks; shared memory is one."""
    if not max_blocks:
        return smem
    per_sm = tune["smem_per_sm"] // (max_blocks + 1)
    return max(smem, per_sm - tune["smem_per_block_reserved"] + 16)


def bulk_max_blocks(cfg: dict, blocks: int, num_sms: int, kv_bytes: int) -> int | None:
    """Blocks per SM to cap a bulk launch at: cfg's max_blocks when given; else 1 for an
    mma_math build (127 registers, so two blocks fit) whose grid is more than one wave, or
    whose step moves less than bulk_share_min_kv_mb of K/V. Why (H100, sessions 21-22): two
    blocks of one call on an SM read ~1% slower (B32 32/8 L16k 713.9 vs 707.9 us); a one-wave
    grid of a long step gains from the next call's blocks landing early beside it under
    programmatic launch (B8 32/8 L64k in order: 693 us, capped 698, the CUDA-core build that
    cannot share an SM 702-706), but a shorter step loses by it (B8 32/8 L16k 182.8 us,
    capped 181.5)."""
    if "max_blocks" in cfg or not cfg.get("mma_math"):
        return cfg.get("max_blocks")
    small = kv_bytes < TUNING["default"]["bulk_share_min_kv_mb"] * 1e6
    return 1 if blocks > num_sms or small else None


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
    or ('bulk', num_warps, unroll, stages, min_blocks, steal)."""
    if cfg.get("impl", "cuda_core") == "mma":
        return ("mma", cfg["num_warps"], cfg["tile"], cfg["stages"])
    if cfg.get("impl") == "bulk":
        return ("bulk", cfg["num_warps"], cfg["unroll"], cfg["stages"], cfg.get("min_blocks", 1),
                int(cfg.get("steal", 0)))
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
    for the tensor-core kernel; impl='mma' without config: its tuned shape. An impl's
    '<impl>_plan' entry of the tuning overrides the model's constants for it; with
    'merge_round_us' the merge is priced per round of 8 partial rows the last block reads (its
    loop keeps 8 loads in flight) instead of by bytes."""
    t = TUNING[tune_key]
    g_blk = max(d for d in range(1, min(group, MAX_GROUP) + 1) if group % d == 0)
    if config and config[0] == "mma":
        cfg = dict(zip(("impl", "num_warps", "tile", "stages"), config))
    elif config and config[0] == "bulk":
        cfg = dict(zip(("impl", "num_warps", "unroll", "stages", "min_blocks", "steal"), config))
    elif config:
        cfg = dict(zip(("num_warps", "unroll"), config))
    else:
        cfg = kernel_config(head_dim, g_blk, tune=t, impl=impl)
    t = {**t, **t.get(cfg.get("impl", impl) + "_plan", {})}
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
        if s > 1 and "merge_round_us" in t:
            cost += cdiv(s, 8) * t["merge_round_us"]
        elif s > 1:
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
