"""A whole batch-1 decode step of a small llama-family model as one persistent kernel
(kernels_cu/decode_step.cu).

Why: at batch 1 a small model's step is a chain of ~5 dependent kernels per layer whose work is
tiny (SmolLM2-135M: 7 MB of weights per layer, ~2.4 us at the copy rate) while each kernel
boundary costs ~0.9 us even with programmatic launch (docs/launch_notes.md). One kernel with a
block per SM replaces the boundaries by grid barriers and bulk-copies every layer's weights into
shared memory a layer ahead, so DRAM streams under the dependency chain.

Status: EXPERIMENTAL, OFF BY DEFAULT (RAWENGINE_DECODE_STEP=1 turns it on). It is exact (tests
against the NumPy engine and the unfused step) but measured slower on the H100: SmolLM2-135M
1,530 tok/s against 2,330 for the unfused PDL chain (BENCHMARKS.md, session 7). Each grid
barrier costs ~1.0 us, no less than a programmatic kernel boundary (~0.9 us), and the phases
between barriers cost 1.5-5 us of dependent L2 round trips; `tools/profile_decode_step.py`
prints the per-phase split (docs/launch_notes.md, "Persistent step").

Where it applies (`build` returns None elsewhere and the model runs its unfused step):
batch 1, CUDA sm_90+, no q/k/v bias, head_dim 64 or 128, and one layer's weight slice per SM
fitting twice in shared memory (SmolLM2-135M: 58 KB; a 1B model needs ~900 KB, so it stays on
the unfused path).

    step = build(backend, model)          # None: not applicable
    logits = step(ids, meta, kv_caches)   # [1, V] dtype, graph-capturable
"""

from __future__ import annotations

import math
import os

import numpy as np

# cupy is imported where it is used: shape_defines / smem_bytes are also read by
# tools/check_kernels.py on machines without it

NUM_WARPS = 8  # 256 threads: room for 255 registers (16 warps spilled at the 128 cap)
CH = 32  # keys per staged attention tile
LAYER_KEYS = ("input_norm", "qkv", "o", "post_norm", "gate_up", "down")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def shape_defines(cfg, grid: int) -> dict:
    """Compile-time shape of the kernel for a model config and a grid of `grid` blocks."""
    h, i, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    nq, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    return dict(HIDDEN=h, INTER=i, NQ=nq, NKV=nkv, HEAD_DIM=d, NUM_WARPS=NUM_WARPS, CH=CH,
                RPB_QKV=_cdiv((nq + 2 * nkv) * d, grid), RPB_O=_cdiv(h, grid),
                RPB_GU=_cdiv(i, grid), RPB_DN=_cdiv(h, grid),
                MAX_SPLITS=max(1, min(64, grid // nkv)))


def smem_bytes(df: dict) -> int:
    """The kernel's shared-memory layout (SMEM_BYTES in decode_step.cu; it traps on less)."""
    h, i, d = df["HIDDEN"], df["INTER"], df["HEAD_DIM"]
    qd, g = df["NQ"] * d, df["NQ"] // df["NKV"]
    slot = (df["RPB_QKV"] * h + df["RPB_O"] * qd + 2 * df["RPB_GU"] * h + df["RPB_DN"] * i) * 2
    slot = _cdiv(slot, 128) * 128
    xs = _cdiv(max(h, i, qd), 4) * 4
    lm_rows = slot // (h * 2)  # lm_head rows per slot-sized chunk
    outs = _cdiv(max(df["RPB_QKV"], df["RPB_O"], 2 * df["RPB_GU"], df["RPB_DN"], lm_rows), 4) * 4
    up16 = lambda n: _cdiv(n, 16) * 16  # noqa: E731
    return (2 * slot + 2 * 2 * CH * d * 2 + 4 * (xs + outs + g * d) + up16(4 * g * CH)
            + up16(12 * g) + 128 + 16)


def why_not(backend, model) -> str | None:
    """None if the persistent step applies to this model on this device, else the reason."""
    import cupy as cp

    from .attention import compute_capability, num_sms

    cfg = model.cfg
    if os.environ.get("RAWENGINE_DECODE_STEP", "0") != "1":
        return "off unless RAWENGINE_DECODE_STEP=1 (slower than the unfused step on the H100)"
    if cp.cuda.runtime.is_hip or compute_capability() < 90:
        return "needs CUDA sm_90 (bulk copies)"
    if any("qkv_bias" in w for w in model.layers):
        return "q/k/v biases"
    nq, nkv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    if d not in (64, 128) or nq % nkv or nq // nkv > NUM_WARPS:
        return f"head shape {nq}/{nkv} x {d}"
    if cfg.hidden_size % 8 or cfg.intermediate_size % 8 or cfg.hidden_size > 8 * NUM_WARPS * 32:
        return "hidden or intermediate size not a multiple of 8, or hidden > 8 x threads"
    limit = cp.cuda.Device().attributes["MaxSharedMemoryPerBlockOptin"]
    if smem_bytes(shape_defines(cfg, num_sms())) > limit:
        return "a layer's weight slice per SM does not fit twice in shared memory"
    return None


class DecodeStep:
    def __init__(self, backend, model):
        import cupy as cp

        from .attention import num_sms
        from .module import kernel

        self.b, self.m, cfg = backend, model, model.cfg
        self.grid = num_sms()
        self.defines = {**backend._dt, **shape_defines(cfg, self.grid)}
        self.smem = smem_bytes(self.defines)
        self.fn = kernel("decode_step.cu", "decode_step_kernel", self.defines)
        if self.fn.max_dynamic_shared_size_bytes < self.smem:
            self.fn.max_dynamic_shared_size_bytes = self.smem
        h, d = cfg.hidden_size, cfg.head_dim
        nq, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
        dt, splits = backend.dtype, self.defines["MAX_SPLITS"]
        # scratch: written before read inside every launch (the NaN-poison test checks it)
        self.resid = cp.empty((2, h), dt)
        self.y = cp.empty((h,), dt)
        self.qkv = cp.empty(((nq + 2 * nkv) * d,), dt)
        self.act = cp.empty((cfg.intermediate_size,), dt)
        self.part_o = cp.empty((nkv * splits * nq // nkv * d,), np.float32)
        self.part_ml = cp.empty((nkv * splits * nq // nkv * 2,), np.float32)
        self.counters = cp.zeros((2,), np.uint32)
        self.scale_log2 = np.float32(d ** -0.5 * math.log2(math.e))
        self._tables: dict[tuple, object] = {}  # KV cache pointers -> [L, 8] u64 table

    def _layer_table(self, kv_caches):
        import cupy as cp

        key = tuple(k.data.ptr for k, _ in kv_caches)
        if key not in self._tables:
            rows = [[w[name].data.ptr for name in LAYER_KEYS] + [k.data.ptr, v.data.ptr]
                    for w, (k, v) in zip(self.m.layers, kv_caches)]
            self._tables[key] = cp.asarray(np.array(rows, np.uint64))
        return self._tables[key]

    def __call__(self, ids, meta, kv_caches):
        import cupy as cp

        m, cfg = self.m, self.m.cfg
        if ids.shape[0] != 1 or meta.seq_lens.shape[0] != 1:
            raise ValueError(f"decode_step runs batch 1, got {ids.shape[0]} tokens")
        k0 = kv_caches[0][0]
        if k0.shape[1:] != (cfg.num_key_value_heads, k0.shape[2], cfg.head_dim) or k0.dtype != self.b.dtype:
            raise ValueError(f"decode_step: KV cache {k0.shape} {k0.dtype} does not match the model")
        logits = cp.empty((1, m.lm_head.shape[0]), self.b.dtype)
        self.fn((self.grid,), (NUM_WARPS * 32,),
                (ids, meta.positions, meta.slot_mapping, meta.seq_lens, meta.block_tables,
                 np.int32(k0.shape[2]), np.int32(len(m.layers)), np.int32(m.lm_head.shape[0]),
                 self._layer_table(kv_caches), m.embed, m.norm, m.lm_head, m.cos, m.sin, logits,
                 self.resid, self.y, self.qkv, self.act, self.part_o, self.part_ml, self.counters,
                 np.float32(cfg.rms_norm_eps), self.scale_log2), shared_mem=self.smem)
        return logits


def build(backend, model) -> DecodeStep | None:
    return None if why_not(backend, model) else DecodeStep(backend, model)
