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
bulk_min_kv_mb: 1-2% faster there; its math on tensor cores, bulk_mma_math: 0.5-1.8% faster
again at B8 32/8 and ~50 W less), or >= 256 MB when each (sequence, head block) has an SM of
its own (bulk_one_wave_min_kv_mb), and 'cuda_core' elsewhere.

Plan once per step (`plan_decode`: splits from the bucket's batch and max length), run per
layer (`decode_attention`). The workspace depends only on the plan, so it is allocated once per
bucket (`get_workspace`) and is safe to reuse in CUDA-graph replays: the kernel leaves its
counters at zero.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import cupy as cp
import numpy as np

# planning (no CuPy)
from .attention_plan import (STEAL_EXTRA, TUNING, _check_bulk_config, _check_mma_config,
                             _config_tuple, bulk_max_blocks, cap_blocks_smem, head_group,
                             kernel_config, plan_decode)
from .module import kernel

LOG2E = 1.4426950408889634
# fp32 window for the async variant, natural-log units around phi. Every exponent is at most
# phi + hi: 2^(86.6) * 2^17 keys * 65504 |v| stays below float max; the largest term of a split
# is at least e^lo = 9e-27, far above the denormals, so smaller terms underflow harmlessly.
DEFAULT_WINDOW = (-60.0, 60.0)
# Extra defines for the bulk kernels, for probe builds only (tools/read_floor.py sets NO_MATH:
# the ring loops skip the math, so o is not attention). Empty in every real call; set it
# through probe_defines().
PROBE_DEFINES: dict = {}


@contextlib.contextmanager
def probe_defines(defines: dict):
    """Calls inside the block build the bulk kernels with `defines` added (probe tools only)."""
    PROBE_DEFINES.update(defines)
    try:
        yield
    finally:
        PROBE_DEFINES.clear()


@dataclasses.dataclass
class DecodeWorkspace:
    """Split partials and counters for one bucket; reusable across layers and graph replays."""

    part_o: cp.ndarray  # float32 [B * Hq * S * D]
    part_ml: cp.ndarray  # float32 [B * Hq * S * 2]
    counters: cp.ndarray  # int32 [B * head blocks], zero between launches
    fallback_count: cp.ndarray  # int32 [1], async blocks that fell back (monotonic)
    # work-stealing build (bulk steal=1): the finished-block count and the steal count
    # (monotonic) as two int32 of word 0, then claim and cell words, zero between launches
    words: cp.ndarray  # uint64 [1 + B * head blocks * (slots + 1)]

    @classmethod
    def allocate(cls, batch: int, num_q_heads: int, head_dim: int, num_splits: int,
                 num_head_blocks: int) -> "DecodeWorkspace":
        n = batch * num_q_heads * num_splits
        return cls(cp.empty(n * head_dim, cp.float32), cp.empty(n * 2, cp.float32),
                   cp.zeros(batch * num_head_blocks, cp.int32), cp.zeros(1, cp.int32),
                   cp.zeros(batch * num_head_blocks * (num_splits + 1) + 1, cp.uint64))

    def fits(self, batch, num_q_heads, head_dim, num_splits, num_head_blocks) -> bool:
        n = batch * num_q_heads * num_splits
        return (self.part_o.size >= n * head_dim and self.part_ml.size >= n * 2
                and self.counters.size >= batch * num_head_blocks
                and self.words.size >= batch * num_head_blocks * (num_splits + 1) + 1)

    def steals(self) -> int:
        """Steals by work-stealing launches on this workspace so far (tests, tools)."""
        return int(self.words[:1].view(cp.int32)[1].get())


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
                   cache_rows: int = 0, units: int = 0) -> dict | None:
    """The implementation a call with no config runs (None: 'cuda_core', the tuned shape):
    'mma' for short GQA steps (TUNING mma_min_group / mma_max_kv_mb; its row index is 32-bit),
    'bulk' for long GQA steps on sm_90 (bulk_groups, head_dim 128, bulk_min_kv_mb; or
    bulk_one_wave_min_kv_mb when units, the step's (sequence, head block) pairs, fit one per
    SM), its math on tensor cores when bulk_mma_math. Both are sync only. group: query heads
    per block (head_group)."""
    t = TUNING["default"]
    if is_async:
        return None
    if group >= t["mma_min_group"] and kv_bytes <= t["mma_max_kv_mb"] * 1e6 and cache_rows < 1 << 32:
        return {"impl": "mma"}  # latency-bound: tensor cores
    min_mb = t["bulk_min_kv_mb"]
    if 0 < units <= num_sms(cp.cuda.Device().id):  # each (sequence, head block) has an SM
        min_mb = min(min_mb, t["bulk_one_wave_min_kv_mb"])
    if (t["bulk_groups"][0] <= group <= t["bulk_groups"][1] and head_dim == 128
            and kv_bytes >= min_mb * 1e6
            and compute_capability(cp.cuda.Device().id) >= 90):
        return {"impl": "bulk", "mma_math": t["bulk_mma_math"]}  # DRAM-bound GQA: TMA rings
    return None


def resolve_config(head_dim: int, group: int, kv_bytes: int, is_async: bool,
                   config: dict | None = None, cache_rows: int = 0,
                   units: int = 0) -> tuple[dict, int]:
    """The kernel shape a call runs (config over its impl's tuned shape; None: the default
    rule's choice) and its dynamic shared memory in bytes. Raises ValueError for an impl or
    shape the kernels cannot run (async on 'mma'/'bulk', 'bulk' below sm_90, a 32-bit row
    index overflow on 'mma', rings over the shared memory)."""
    if config is None:
        config = default_config(group, head_dim, kv_bytes, is_async, cache_rows, units)
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
    group = head_group(num_q_heads, num_kv_heads)
    cfg, _ = resolve_config(head_dim, group, kv_bytes, is_async, config,
                            units=batch * num_q_heads // group)
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
    min_blocks; bulk: num_warps, unroll, stages, min_blocks, steal) from
    TUNING["default"][impl]. bulk with steal=1 runs the work-stealing build: the same splits,
    their tiles claimed at run time (its partial states are summed in an order that depends on
    timing, so o can differ in the last bits between calls). bulk with mma_math=1 does the
    rings' math on tensor cores (head_dim 128, unroll 4; the no-config choice on the bulk
    steps); max_blocks caps the blocks per SM (default for mma_math: 1 when the grid is more
    than one wave or the step small, see attention_plan.bulk_max_blocks)."""
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
    cfg, smem = resolve_config(d, group, kv_bytes, is_async, config, nb * hkv * bs,
                               units=batch * y)
    impl = cfg.get("impl", "cuda_core")
    if num_splits is None:
        num_splits = plan_decode(batch, hkv, int(max_seq_len), num_sms(cp.cuda.Device().id),
                                 group=hq // hkv, head_dim=d, config=_config_tuple(cfg))
    steal = impl == "bulk" and bool(cfg.get("steal", 0))
    slots = num_splits + STEAL_EXTRA if steal else num_splits  # partial states per head block
    ws = workspace or get_workspace(batch, hq, hkv, d, slots)
    if not ws.fits(batch, hq, d, slots, y):
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
        if cfg.get("mma_math"):
            defines["MMA_MATH"] = 1
        if steal:
            defines.update(DYN=1, EXTRA=STEAL_EXTRA)
            name = ("decode_attention.cu", "decode_attention_dyn_kernel")
        defines.update(PROBE_DEFINES)
    else:
        defines = dict(HEAD_DIM=d, GROUP=group, NUM_WARPS=cfg["num_warps"],
                       UNROLL=cfg["unroll"], IS_ASYNC=int(is_async),
                       PREFETCH=int(cfg.get("prefetch", 0)),
                       MIN_BLOCKS=cfg.get("min_blocks", max(1, 16 // cfg["num_warps"])
                                          if group <= 4 else 1))
        name = ("decode_attention.cu", "decode_attention_kernel")
    if _is_bf16(q):
        defines["DTYPE_BF16"] = 1
    if impl == "bulk":
        smem = cap_blocks_smem(smem, bulk_max_blocks(cfg, num_splits * y * batch,
                                                     num_sms(cp.cuda.Device().id), kv_bytes),
                               TUNING["default"])
    fn = kernel(*name, defines)
    if smem > 48 * 1024 and fn.max_dynamic_shared_size_bytes < smem:
        fn.max_dynamic_shared_size_bytes = smem
    if steal:
        fn((num_splits, y, batch), (cfg["num_warps"] * 32,),
           (q, k_cache, v_cache, block_tables, seq_lens, out, ws.part_o, ws.part_ml, ws.words,
            np.int32(hq), np.int32(hkv), np.int32(block_tables.shape[1]),
            np.int32(bs.bit_length() - 1), np.float32(scale * LOG2E)), shared_mem=smem)
        return out
    fn((num_splits, y, batch), (cfg["num_warps"] * 32,),
       (q, k_cache, v_cache, block_tables, seq_lens, out, ws.part_o, ws.part_ml, ws.counters,
        ws.fallback_count, np.int32(hq), np.int32(hkv), np.int32(block_tables.shape[1]),
        np.int32(bs.bit_length() - 1), np.float32(scale * LOG2E),
        np.float32((phi or 0.0) * LOG2E), np.float32(lo * LOG2E), np.float32(hi * LOG2E),
        np.int32(min_chunk)), shared_mem=smem)
    return out
