"""CUDA backend: CuPy arrays and the kernels in kernels_cu/, one typed launcher per op.

bfloat16 is stored as uint16 bit patterns (CuPy has no bfloat16 arithmetic; the kernels only
need the bits); `self.dtype` is the storage dtype, `self.dtype_name` the logical one.
Every launcher checks shape, dtype and contiguity, then sizes the grid with cdiv.
Decode attention and linear layers are delegated to attention.py / gemm.py (other owners).
"""

from __future__ import annotations

import weakref

import cupy as cp
import numpy as np

from ...checkpoint import to_float32
from ..base import Backend, StepMeta
from ..numpy_backend import f32_to_bf16_bits
from .fixed_sum import REPLICAS, FixedSum, FixedSumPool
from .module import kernel

_STORAGE = {"float16": np.float16, "bfloat16": np.uint16}
# logits per argmax block (256 threads, 4 loads each): V = 49,152 -> 48 blocks, 128,256 -> 126
ARGMAX_CHUNK = 1024


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _check(name: str, a, dtype=None, ndim: int | None = None) -> None:
    if not isinstance(a, cp.ndarray):
        raise TypeError(f"{name}: expected a cupy array, got {type(a).__name__}")
    if dtype is not None and a.dtype != dtype:
        raise TypeError(f"{name}: dtype {a.dtype}, expected {np.dtype(dtype)}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dims, got shape {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: must be C-contiguous")


def _vec(n: int, *arrays) -> int:
    """8 (16-byte vectors) when n and every pointer allow it, else 1."""
    return 8 if n % 8 == 0 and all(a.data.ptr % 16 == 0 for a in arrays) else 1


class CudaBackend(Backend):
    name = "cuda"
    supports_graphs = True

    def __init__(self, dtype: str = "float16"):
        if dtype not in _STORAGE:
            raise ValueError(f"CudaBackend runs float16 or bfloat16, not {dtype!r}")
        self.dtype_name = dtype
        self.is_bf16 = dtype == "bfloat16"
        self.dtype = np.dtype(_STORAGE[dtype])
        self._dt = {"USE_BF16": 1} if self.is_bf16 else {}
        self.use_decode_kernel = True  # attention.decode_attention for decode steps
        # Decode softmax: 'sync' (Flash-Decoding running max) or 'async' (FlashDecoding++
        # unified max phi, set by the engine from the model's rawengine_softmax.json; exact for
        # any phi thanks to the in-kernel fallback). sync is the default because it measured
        # faster on the H100 once both are spill-free: 1.23x vs 1.21x torch SDPA flash
        # (BENCHMARKS.md, decode attention).
        self.attention_variant, self.softmax_phi = "sync", 0.0
        self._decode_steps = weakref.WeakKeyDictionary()  # model -> DecodeStep or None
        self._counters: dict[tuple, cp.ndarray] = {}  # (device, rows) -> argmax counters
        self._fixed = FixedSumPool()  # the fused MLP's output buffers (mlp.py)

    def _k(self, file: str, name: str, **defines):
        return kernel(file, name, {**self._dt, **defines})

    # --- memory -----------------------------------------------------------------
    def asarray(self, a, dtype=None, src_dtype: str | None = None):
        """Host array -> device. dtype None (or the storage dtype): activation/weight dtype,
        converted from src_dtype ('F32', 'F16', 'BF16' = uint16 bits; None: a's own dtype)."""
        a = np.asarray(a)
        if dtype is not None and np.dtype(dtype) != self.dtype:
            return cp.asarray(np.ascontiguousarray(a, dtype=dtype))
        is_bf16_bits = src_dtype == "BF16"
        if self.is_bf16:
            bits = a.astype(np.uint16) if is_bf16_bits else f32_to_bf16_bits(a.astype(np.float32))
            return cp.asarray(np.ascontiguousarray(bits))
        f = to_float32(a, "BF16") if is_bf16_bits else a
        return cp.asarray(np.ascontiguousarray(f, dtype=np.float16))

    def to_numpy(self, a):
        """Device -> host; bfloat16 comes back as float32."""
        h = cp.asnumpy(a)
        return to_float32(h, "BF16") if self.is_bf16 and h.dtype == np.uint16 else h

    def empty(self, shape, dtype=None):
        return cp.empty(shape, dtype=dtype or self.dtype)

    def randn(self, shape, std, seed=0, offset=0.0):
        """offset + std * N(0, 1), drawn on the device in float32, rounded to self.dtype."""
        x = cp.random.RandomState(seed).standard_normal(shape, dtype=np.float32) * std + offset
        if not self.is_bf16:
            return x.astype(np.float16)
        u = x.view(np.uint32)  # round to nearest even, as f32_to_bf16_bits
        return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)

    def alloc_kv(self, num_blocks, num_kv_heads, block_size, head_dim):
        shape = (num_blocks, num_kv_heads, block_size, head_dim)
        return cp.zeros(shape, self.dtype), cp.zeros(shape, self.dtype)

    def synchronize(self) -> None:
        cp.cuda.get_current_stream().synchronize()

    def pinned(self, shape, dtype):
        """Page-locked host memory (numpy), mapped at the same address on the device."""
        import cupyx

        return cupyx.empty_pinned(shape, np.dtype(dtype))

    def when_done(self, fn):
        """A callable that waits for the work queued so far on the current stream, then
        returns fn(): lets the host launch more work before it needs the results."""
        done = cp.cuda.get_current_stream().record()

        def wait():
            done.synchronize()
            return fn()

        return wait

    # --- reporting ----------------------------------------------------------------
    def device_name(self) -> str:
        return cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["name"].decode()

    def peak_memory(self) -> int:
        """Bytes in use on the device (CuPy pools never shrink, so this is the peak)."""
        free, total = cp.cuda.runtime.memGetInfo()
        return total - free

    def copy_bandwidth(self, nbytes: int = 1 << 30, reps: int = 10) -> float:
        """Device-to-device copy, read + write counted, GB/s (median of reps)."""
        src, dst = cp.empty(nbytes, np.uint8), cp.empty(nbytes, np.uint8)
        dst[...] = src  # warm-up
        times = []
        for _ in range(reps):
            start, end = cp.cuda.Event(), cp.cuda.Event()
            start.record()
            dst[...] = src
            end.record()
            end.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, end) / 1e3)
        del src, dst
        cp.get_default_memory_pool().free_all_blocks()
        return 2 * nbytes / float(np.median(times)) / 1e9

    # --- ops --------------------------------------------------------------------
    def embedding(self, ids, table):
        _check("ids", ids, np.int32, 1)
        _check("table", table, self.dtype, 2)
        t, h = ids.shape[0], table.shape[1]
        out = cp.empty((t, h), self.dtype)
        if t:
            fn = self._k("embedding.cu", "embedding_kernel", VEC=_vec(h, table, out))
            fn((t,), (128,), (ids, table, out, np.int32(h)))
        return out

    def _dense(self, x):
        """x as a plain array: fixed sums (the fused MLP's output) are converted and cleared."""
        if isinstance(x, FixedSum):
            from .mlp import to_dense

            return to_dense(x, self._fixed)
        return x

    def rmsnorm(self, x, weight, eps, residual=None):
        fixed = isinstance(x, FixedSum)
        if fixed and (residual is None or x.shape[1] % 8 or x.dtype != self.dtype):
            x, fixed = self._dense(x), False
        if fixed:
            _check("x", x.sums, np.int64, 3)  # [REPLICAS, T, H]
        else:
            _check("x", x, self.dtype, 2)
        _check("weight", weight, self.dtype, 1)
        t, h = x.shape
        if weight.shape[0] != h:
            raise ValueError(f"rmsnorm: weight {weight.shape} vs x {x.shape}")
        y = cp.empty(x.shape, self.dtype)
        r = y  # placeholder pointer when there is no residual
        if residual is not None:
            _check("residual", residual, self.dtype, 2)
            if residual.shape != x.shape:
                raise ValueError(f"rmsnorm: residual {residual.shape} vs x {x.shape}")
            r = cp.empty_like(y)
        xa = x.sums if fixed else x
        vec = _vec(h, xa, y, r, weight, residual if residual is not None else y)
        if fixed and vec != 8:
            return self.rmsnorm(self._dense(x), weight, eps, residual)
        num_vec = h // vec
        threads = min(1024, max(32, cdiv(cdiv(num_vec, 2), 32) * 32))
        npt = cdiv(num_vec, threads)
        if t:
            fn = self._k("norm.cu", "rmsnorm_kernel", VEC=vec, NPT=npt,
                         RESIDUAL=int(residual is not None),
                         **(dict(FIXED_IN=1, FIXED_REPLICAS=REPLICAS) if fixed else {}))
            args = (xa, residual if residual is not None else y, weight, y, r, np.int32(h),
                    np.float32(eps))
            if fixed:
                clear = self._fixed.pending()
                args += (xa if clear is None else clear,
                         np.int32(0 if clear is None else clear.size))
            fn((t,), (threads,), args)
        if fixed:
            self._fixed.cleared(x)  # FIXED_IN clears each element as it reads it
        return y if residual is None else (y, r)

    def linear(self, x, w, bias=None):
        from . import gemm

        return gemm.linear(self._dense(x), w, bias)

    def norm_linear(self, x, residual, norm_w, eps, w, bias=None):
        """One GEMV launch for decode M (gemm.norm_linear), else rmsnorm + linear."""
        from . import gemm

        x = self._dense(x)
        out = gemm.norm_linear(x, residual, norm_w, eps, w, bias)
        return out if out is not None else super().norm_linear(x, residual, norm_w, eps, w, bias)

    def norm_linear_rope(self, x, residual, norm_w, eps, w_qkv, bias, meta: StepMeta, cos, sin,
                         k_cache, v_cache, Hq, Hkv, D):
        """Decode: one GEMV launch with RoPE + K/V write in its epilogue
        (gemm.norm_linear_rope); else norm_linear + rope_kv_write."""
        from . import gemm

        if meta.is_decode:
            out = gemm.norm_linear_rope(x, residual, norm_w, eps, w_qkv, bias, meta.positions,
                                        meta.slot_mapping, cos, sin, k_cache, v_cache, Hq, Hkv, D)
            if out is not None:
                return out
            # too big for the norm prologue: rmsnorm, then RoPE + K/V write in the GEMV output
            h, r = self._add_rmsnorm(self._dense(x), residual, norm_w, eps)
            q = gemm.linear_rope(h, w_qkv, bias, meta.positions, meta.slot_mapping, cos, sin,
                                 k_cache, v_cache, Hq, Hkv, D)
            if q is None:
                q = self.rope_kv_write(self.linear(h, w_qkv, bias), meta, cos, sin, k_cache,
                                       v_cache, Hq, Hkv, D)
            return q, r
        return super().norm_linear_rope(self._dense(x), residual, norm_w, eps, w_qkv, bias, meta,
                                        cos, sin, k_cache, v_cache, Hq, Hkv, D)

    def _add_rmsnorm(self, x, residual, norm_w, eps):
        """(rmsnorm(r), r) with r = x + residual, or r = x without residual (norm_linear's r)."""
        return (self.rmsnorm(x, norm_w, eps), x) if residual is None else \
            self.rmsnorm(x, norm_w, eps, residual)

    def norm_linear_silu(self, x, residual, norm_w, eps, w):
        """Decode: one GEMV launch with add+RMSNorm in its x staging (small products) and
        SiLU-mul in its output (gemm.norm_linear_silu); else norm + one GEMV with SiLU-mul in
        its output (gemm.linear_silu); else norm_linear + silu_mul."""
        from . import gemm

        x = self._dense(x)
        out = gemm.norm_linear_silu(x, residual, norm_w, eps, w)
        if out is not None:
            return out
        h, r = self._add_rmsnorm(x, residual, norm_w, eps)
        act = gemm.linear_silu(h, w)
        return (act if act is not None else self.silu_mul(self.linear(h, w))), r

    def norm_mlp(self, x, residual, norm_w, eps, w_gate_up, w_down):
        """Small models at decode sizes: one launch (mlp.norm_mlp), y as fixed sums that
        norm_linear_rope and rmsnorm read directly (any other op converts them first); else
        norm_linear_silu + linear. x may be fixed sums (attention_o's output)."""
        from . import mlp

        out = mlp.norm_mlp(x, residual, norm_w, eps, w_gate_up, w_down, self._fixed)
        if out is None and isinstance(x, FixedSum):
            x = self._dense(x)
            out = mlp.norm_mlp(x, residual, norm_w, eps, w_gate_up, w_down, self._fixed)
        return out if out is not None else super().norm_mlp(x, residual, norm_w, eps, w_gate_up,
                                                            w_down)

    def short_context(self, cfg) -> int | None:
        """attention_o.MAX_LEN where the fused attention + o_proj serves this model at batch 1
        (attention_o.applies), else None."""
        from . import attention_o

        ok = (self.use_decode_kernel and self.attention_variant == "sync"
              and attention_o.applies(cfg.num_attention_heads, cfg.num_key_value_heads,
                                      cfg.head_dim, cfg.hidden_size, batch=1))
        return attention_o.MAX_LEN if ok else None

    def attention_o(self, q, k_cache, v_cache, meta: StepMeta, scale, w_o):
        """Decode at short capacities, small models: attention and o_proj in one launch
        (attention_o.py), the result as fixed sums that norm_mlp reads; else attention +
        linear."""
        if (meta.is_decode and self.use_decode_kernel and self.attention_variant == "sync"
                and q.ndim == 3):
            from .attention_o import attention_o

            y = attention_o(q, k_cache, v_cache, meta.block_tables, meta.seq_lens, scale, w_o,
                            self._fixed, max_seq_len=meta.max_seq_len)
            if y is not None:
                return y
        return super().attention_o(q, k_cache, v_cache, meta, scale, w_o)

    def silu_mul_linear(self, gate_up, w, bias=None):
        """One GEMV launch for decode M (gemm.silu_mul_linear), else silu_mul + linear."""
        from . import gemm

        y = gemm.silu_mul_linear(gate_up, w, bias)
        return y if y is not None else super().silu_mul_linear(gate_up, w, bias)

    def decode_step(self, model, ids, meta: StepMeta, kv_caches: list):
        """Batch 1 with the synchronized decode attention: the whole step as one persistent
        kernel where decode_step.why_not allows it (small models on sm_90); else None."""
        if ids.shape[0] != 1 or self.attention_variant != "sync" or not self.use_decode_kernel:
            return None
        if model not in self._decode_steps:
            from .decode_step import build

            self._decode_steps[model] = build(self, model)
        step = self._decode_steps[model]
        return None if step is None else step(ids, meta, kv_caches)

    def rope_kv_write(self, qkv, meta: StepMeta, cos, sin, k_cache, v_cache, num_q_heads,
                      num_kv_heads, head_dim):
        _check("qkv", qkv, self.dtype, 2)
        for name, a in (("cos", cos), ("sin", sin)):
            _check(name, a, np.float32, 2)
        for name, a in (("k_cache", k_cache), ("v_cache", v_cache)):
            _check(name, a, self.dtype, 4)
        t = qkv.shape[0]
        num_heads = num_q_heads + 2 * num_kv_heads
        if qkv.shape[1] != num_heads * head_dim or cos.shape[1] != head_dim // 2:
            raise ValueError(f"rope: qkv {qkv.shape}, cos {cos.shape}, heads {num_heads}x{head_dim}")
        if k_cache.shape[1:] != (num_kv_heads, k_cache.shape[2], head_dim):
            raise ValueError(f"rope: k_cache {k_cache.shape} vs Hkv {num_kv_heads}, D {head_dim}")
        q = cp.empty((t, num_q_heads, head_dim), self.dtype)
        if t == 0:
            return q
        vec = 8 if (head_dim // 2) % 8 == 0 else 1
        items = num_heads * (head_dim // 2) // vec
        fn = self._k("rope.cu", "rope_kv_write_kernel", HEAD_DIM=head_dim, VEC=vec)
        fn((t, cdiv(items, 128)), (128,),
           (qkv, meta.positions, meta.slot_mapping, cos, sin, q, k_cache, v_cache,
            np.int32(num_q_heads), np.int32(num_kv_heads), np.int32(k_cache.shape[2])))
        return q

    def attention(self, q, k_cache, v_cache, meta: StepMeta, scale):
        d, bs = q.shape[2], k_cache.shape[2]
        if (meta.is_decode and self.use_decode_kernel and d in (64, 128)
                and bs & (bs - 1) == 0):
            from .attention import decode_attention

            return decode_attention(q, k_cache, v_cache, meta.block_tables, meta.seq_lens,
                                    scale, max_seq_len=meta.max_seq_len,
                                    variant=self.attention_variant, phi=self.softmax_phi)
        return self.attention_prefill(q, k_cache, v_cache, meta, scale)

    def attention_prefill(self, q, k_cache, v_cache, meta: StepMeta, scale, impl: str = "auto"):
        """Paged causal attention for any query length. impl 'mma': tensor cores
        (attention_prefill_mma.cu; head_dim % 32 == 0, <= 128); 'cuda_core': the general kernel
        (attention_prefill.cu; any head_dim % 8 == 0); 'auto': mma wherever it applies and a
        query is longer than one token."""
        _check("q", q, self.dtype, 3)
        for name, a in (("k_cache", k_cache), ("v_cache", v_cache)):
            _check(name, a, self.dtype, 4)
        for name in ("block_tables", "query_start", "seq_lens"):
            _check(name, getattr(meta, name), np.int32)
        t, hq, d = q.shape
        hkv, bs = k_cache.shape[1], k_cache.shape[2]
        if k_cache.shape[3] != d or hq % hkv or d % 8:
            raise ValueError(f"attention: q {q.shape} vs cache {k_cache.shape}")
        out = cp.empty((t, hq * d), self.dtype)
        b = meta.seq_lens.shape[0]
        if t == 0 or b == 0:
            return out
        mma_ok = d % 32 == 0 and d <= 128
        if impl == "mma" and not mma_ok:
            raise ValueError(f"attention: the tensor-core kernel needs head_dim % 32 == 0 and <= 128, not {d}")
        if impl == "mma" or (impl == "auto" and mma_ok and meta.max_query_len > 1):
            fn = self._k("attention_prefill_mma.cu", "attention_prefill_mma_kernel", HEAD_DIM=d)
            smem = 5 * 64 * d * 2  # Q tile + two stages of K and V tiles, 64 rows each
            if smem > 48 * 1024 and fn.max_dynamic_shared_size_bytes < smem:
                fn.max_dynamic_shared_size_bytes = smem
            fn((cdiv(meta.max_query_len, 64), hq, b), (128,),
               (q, k_cache, v_cache, meta.block_tables, meta.query_start, meta.seq_lens, out,
                np.float32(scale), np.int32(hq), np.int32(hkv), np.int32(bs),
                np.int32(meta.block_tables.shape[1])), shared_mem=smem)
            return out
        rows_per_warp, num_warps = 4, 4
        grid = (cdiv(meta.max_query_len * (hq // hkv), rows_per_warp * num_warps), hkv, b)
        fn = self._k("attention_prefill.cu", "attention_prefill_kernel", HEAD_DIM=d,
                     ROWS_PER_WARP=rows_per_warp, NUM_WARPS=num_warps)
        fn(grid, (num_warps * 32,),
           (q, k_cache, v_cache, meta.block_tables, meta.query_start, meta.seq_lens, out,
            np.float32(scale), np.int32(hq), np.int32(hkv), np.int32(bs),
            np.int32(meta.block_tables.shape[1])))
        return out

    def silu_mul(self, gate_up):
        _check("gate_up", gate_up, self.dtype, 2)
        t, i = gate_up.shape[0], gate_up.shape[1] // 2
        out = cp.empty((t, i), self.dtype)
        vec = _vec(i, gate_up, out)
        if t * i:
            fn = self._k("activation.cu", "silu_mul_kernel", VEC=vec)
            fn((cdiv(t * i // vec, 256),), (256,), (gate_up, out, np.int32(t), np.int32(i)))
        return out

    def add(self, x, y):
        x = self._dense(x)
        _check("x", x, self.dtype)
        _check("y", y, self.dtype)
        if x.shape != y.shape:
            raise ValueError(f"add: {x.shape} vs {y.shape}")
        out = cp.empty_like(x)
        n = x.size
        vec = _vec(n, x, y, out)
        if n:
            fn = self._k("activation.cu", "add_kernel", VEC=vec)
            fn((cdiv(n // vec, 256),), (256,), (x, y, out, np.int64(n)))
        return out

    def gather_rows(self, x, idx):
        return cp.ascontiguousarray(x[idx])

    # --- sampling ---------------------------------------------------------------
    def _logits_defines(self, logits) -> dict:
        if logits.dtype == np.float32:
            return {"LOGITS_F32": 1}
        if logits.dtype != self.dtype:
            raise TypeError(f"logits dtype {logits.dtype}: expected {self.dtype} or float32")
        return {}

    def argmax(self, logits, out=None, host_out=None, host_slot=None):
        """Greedy token per row: logits [B, V] (dtype or float32) -> [B] int32 (first max),
        written into out ([B] int32, e.g. a decode graph's next input ids) when given. One
        launch: chunks of ARGMAX_CHUNK logits per block, the row's last block reduces.
        host_out: pinned host memory [2, B] int32 (cupyx.empty_pinned) that the kernel also
        writes, at row host_slot[0] (a [1] int32 device array read at run time)."""
        _check("logits", logits, None, 2)
        b, v = logits.shape
        if out is None:
            out = cp.empty((b,), np.int32)
        elif out.shape != (b,) or out.dtype != np.int32 or not out.flags.c_contiguous:
            raise ValueError(f"argmax out must be a contiguous ({b},) int32 array")
        host_ptr = np.uint64(0)
        if host_out is not None:
            if (host_out.shape != (2, b) or host_out.dtype != np.int32 or host_slot is None
                    or host_slot.dtype != np.int32 or host_slot.size < 1):
                raise ValueError(f"argmax host_out must be pinned (2, {b}) int32 with an int32 "
                                 "host_slot")
            # pinned memory is mapped at the same address on the device (unified addressing)
            host_ptr = np.uint64(host_out.ctypes.data)
        num_chunks = cdiv(v, ARGMAX_CHUNK)
        part_val = cp.empty((b, num_chunks), np.float32)
        part_idx = cp.empty((b, num_chunks), np.int32)
        self._k("sampling.cu", "argmax_kernel", **self._logits_defines(logits))(
            (num_chunks, b), (256,), (logits, np.int32(v), np.int32(ARGMAX_CHUNK), part_val,
                                      part_idx, self._argmax_counters(b), out, host_ptr,
                                      host_slot if host_slot is not None else out))
        return out

    def _argmax_counters(self, b: int):
        """argmax_kernel's per-row counters (zero between launches). From the default pool on
        purpose: a decode graph's private pool dies with its graph, this cache does not."""
        key = (cp.cuda.Device().id, b)
        c = self._counters.get(key)
        if c is None:
            with cp.cuda.using_allocator(cp.get_default_memory_pool().malloc):
                c = self._counters[key] = cp.zeros((b,), np.int32)
        return c

    def sample(self, logits, temperature, top_k, top_p, min_p, rep_penalty, seeds, steps,
               seen=None):
        """One token per row, rawengine/sampling.py semantics, on the GPU.

        logits [B, V] (dtype or float32); per-row device arrays [B]: temperature, top_p, min_p,
        rep_penalty float32, top_k int32, seeds uint64, steps int32 (the draw is a function of
        (seed, step, token): bump steps each decode step); seen [B, V] uint8 or None (tokens
        already in prompt/output, for the repetition penalty; see mark_seen). -> [B] int32.
        Everything stays on the device, so it can be captured in a CUDA graph."""
        _check("logits", logits, None, 2)
        b, v = logits.shape
        spec = ((temperature, np.float32), (top_k, np.int32), (top_p, np.float32),
                (min_p, np.float32), (rep_penalty, np.float32), (seeds, np.uint64),
                (steps, np.int32))
        for i, (a, dt) in enumerate(spec):
            _check(f"sample arg {i}", a, dt, 1)
            if a.shape[0] != b:
                raise ValueError(f"sample arg {i}: {a.shape[0]} rows, logits have {b}")
        if seen is not None:
            _check("seen", seen, np.uint8, 2)
            if seen.shape != (b, v):
                raise ValueError(f"seen {seen.shape} vs logits {logits.shape}")
        out = cp.empty((b,), np.int32)
        fn = self._k("sampling.cu", "sample_kernel", **self._logits_defines(logits))
        fn((b,), (1024,), (logits, np.int32(v), seen if seen is not None else logits,
                           temperature, top_k, top_p, min_p, rep_penalty,
                           np.int32(seen is not None), seeds, steps, out))
        return out

    def sample_rows(self, logits, seqs) -> list[int]:
        """Engine hook: one token per sequence (seqs: engine.Sequence, with .params,
        .token_ids, .rng). Per-step seeds come from each sequence's rng, so a seeded request
        is reproducible; only B token ids come back to the host."""
        b = len(seqs)
        ps = [s.params for s in seqs]
        if all(p.is_greedy and p.repetition_penalty == 1.0 for p in ps):
            return self.argmax(logits).get().tolist()
        col = lambda vals, dt: cp.asarray(np.array(vals, dt))  # noqa: E731
        seen = None
        if any(p.repetition_penalty != 1.0 for p in ps):
            host = np.zeros((b, logits.shape[1]), np.uint8)
            for i, s in enumerate(seqs):
                host[i, np.asarray(s.token_ids, np.int64)] = 1
            seen = cp.asarray(host)
        seeds = [int(s.rng.integers(0, 2**63)) for s in seqs]
        out = self.sample(logits, col([p.temperature for p in ps], np.float32),
                          col([p.top_k for p in ps], np.int32), col([p.top_p for p in ps], np.float32),
                          col([p.min_p for p in ps], np.float32),
                          col([p.repetition_penalty for p in ps], np.float32),
                          col(seeds, np.uint64), cp.zeros((b,), np.int32), seen)
        return out.get().tolist()

    @staticmethod
    def mark_seen(seen, tokens) -> None:
        """seen[b, tokens[b]] = 1 (after each step; fill the prompt's tokens once)."""
        seen[cp.arange(tokens.shape[0]), tokens] = 1

    # --- CUDA graphs ------------------------------------------------------------
    def in_forward(self):
        """Model forwards launch the stream GEMM with the late trigger (gemm.late_trigger):
        +0.5-2.8% decode tok/s on the 1-8B presets (H100, session 16)."""
        from . import gemm

        return gemm.late_trigger()

    def graph(self, fn):
        """Capture fn() (our kernels and cuBLAS through cublas.py, never cupy.matmul) into a graph.

        Returns replay() -> fn's output arrays (the same static buffers each time). fn runs
        once eagerly first (compiles and loads kernels), then once under capture. Arrays
        allocated during capture come from a private memory pool that lives as long as
        replay, so the captured addresses stay valid and nobody else reuses them."""
        pool = cp.cuda.MemoryPool()
        stream = cp.cuda.Stream(non_blocking=True)
        caller = cp.cuda.get_current_stream()
        stream.wait_event(caller.record())
        with cp.cuda.using_allocator(pool.malloc), stream:
            fn()
            stream.synchronize()
            stream.begin_capture()
            try:
                out = fn()
            finally:
                g = stream.end_capture()

        def replay():
            g.launch(cp.cuda.get_current_stream())
            return out

        replay.graph, replay.pool, replay.stream = g, pool, stream  # keep alive with replay
        return replay

