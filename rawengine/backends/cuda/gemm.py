"""Decode-time matrix products: y[M, N] = x[M, K] @ w[N, K]^T (+ bias) (+ residual).
For decode M, `norm_linear` / `silu_mul_linear` also fuse the op that produces x (add +
RMSNorm, SiLU-and-mul) into the GEMV, saving one launch each.

Three implementations, picked per (GPU, N, K, M) from a dispatch table (FlashDecoding++'s
heuristic dataflow):
  'gemv'   kernels_cu/gemv.cu, CUDA cores, smallest M.
  'flat'   kernels_cu/flat_gemm.cu, tensor cores (mma.m16n8k16, M padded to 8).
  'cublas' cuBLAS called through ctypes (cublas.py): eagerly and inside CUDA-graph capture,
           fp16 and bf16. Only where libcublas cannot be loaded that way, cupy.matmul: then
           never inside capture (CuPy refuses cuBLAS there) nor for bf16, where the
           dispatcher takes the table's own-kernel fallback.

Dtypes: float16, or bfloat16 given either as a dtype named 'bfloat16' or as raw uint16 bits
(CuPy has no native bf16 arithmetic). Accumulation is float32 in every path.

Tables: JSON files (see rawengine/tune.py) from $RAWENGINE_CACHE/tuning or
~/.cache/rawengine/tuning (written by `rawengine tune`), then the ones shipped in
rawengine/tuning/. Only looked up here, never tuned online. With no matching entry the
default rule `default_choice` applies.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from pathlib import Path

import cupy as cp

from rawengine.backends.cuda import cublas as libcublas
from rawengine.backends.cuda.fixed_sum import REPLICAS, FixedSum, FixedSumPool
from rawengine.tune import FUSED_MAX_M, FUSED_MAX_MNK  # fused pro/epilogues run up to these

_TUNING_DIR = Path(__file__).resolve().parents[2] / "tuning"
SMEM_MAX = 227 * 1024  # Hopper opt-in limit per block
SMEM_DYNAMIC = 46 * 1024  # dynamic smem used without opt-in (static smem takes the rest)
IMPLS = ("gemv", "flat", "cublas")


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _kernel(file: str, name: str, defines: dict):
    from rawengine.backends.cuda.module import kernel  # the project's only RawModule user

    return kernel(file, name, defines)


# --- device facts and scratch ----------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _device_info(dev: int) -> tuple[str, int]:
    props = cp.cuda.runtime.getDeviceProperties(dev)
    name = props["name"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    return name, int(props["multiProcessorCount"])


def gpu_name() -> str:
    return _device_info(cp.cuda.Device().id)[0]


def num_sms() -> int:
    return _device_info(cp.cuda.Device().id)[1]


class _Scratch:
    """Split-K scratch per device: fp32 partials and self-resetting tile counters.

    Buffers only grow; old ones are kept alive because captured graphs may point at them.
    Kernels on one stream use them in order; concurrent split-K launches on different
    streams would need one scratch per stream (not needed by the runtime today)."""

    def __init__(self):
        self.ws = {}
        self.counters = {}
        self.keep = []

    def get(self, n_ws: int, n_counters: int):
        dev = cp.cuda.Device().id
        ws, cnt = self.ws.get(dev), self.counters.get(dev)
        if ws is None or ws.size < n_ws:
            ws = cp.empty(max(n_ws, 2 * (ws.size if ws is not None else 0), 1 << 20), cp.float32)
            self.keep.append(ws)
            self.ws[dev] = ws
        if cnt is None or cnt.size < n_counters:
            cnt = cp.zeros(max(n_counters, 2 * (cnt.size if cnt is not None else 0), 4096),
                           cp.uint32)
            self.keep.append(cnt)
            self.counters[dev] = cnt
        return ws, cnt


_scratch = _Scratch()


def is_capturing() -> bool:
    try:
        return bool(cp.cuda.get_current_stream().is_capturing())
    except Exception:  # noqa: BLE001 - older CuPy: no capture API means no capture
        return False


def _dtype_flag(a) -> int:
    """0 for float16, 1 for bfloat16 (named dtype or raw uint16 bits)."""
    if a.dtype == cp.float16:
        return 0
    if a.dtype.name == "bfloat16" or a.dtype == cp.uint16:
        return 1
    raise TypeError(f"linear: unsupported dtype {a.dtype} (float16 or bfloat16)")


# --- launchers -----------------------------------------------------------------------------
def _vec_ok(K: int, *arrays) -> bool:
    return K % 8 == 0 and all(a is None or a.data.ptr % 16 == 0 for a in arrays)


def gemv(x, w, y, bias=None, residual=None, *, rows: int = 2, warps: int = 4, unroll: int = 4,
         split: int = 0, stages: int = 0) -> None:
    """y = x @ w.T (+ bias) (+ residual) on CUDA cores; x [M, K], w [N, K], y [M, N].
    split = 0 picks split-K from the shape; stages >= 2 streams w through a per-warp cp.async
    ring of that many batches in shared memory (gemv.cu STAGES), 0 through registers."""
    M, K = x.shape
    _gemv_launch(x, w, y, bias, residual, M, K, _vec_ok(K, x, w), {}, (), rows=rows,
                 warps=warps, unroll=unroll, split=split, stages=stages)


def gemv_ring_bytes(rows: int, warps: int, unroll: int, stages: int) -> int:
    """Shared memory of gemv.cu's weight ring (16 bytes per lane per piece)."""
    return warps * stages * unroll * rows * 32 * 16


def _gemv_launch(x, w, y, bias, residual, M: int, K: int, is_vec: bool, prologue: dict,
                 prologue_args: tuple, *, rows: int = 2, warps: int = 4, unroll: int = 4,
                 split: int = 0, stages: int = 0) -> None:
    """gemv_kernel with an optional x prologue (gemv.cu PROLOGUE defines and extra args)."""
    N = w.shape[0]
    mb = min(M, 8)
    vec = 8 if is_vec else 1
    row_tiles = cdiv(N, warps * rows)
    m_groups = cdiv(M, mb)
    min_split = cdiv(mb * K * 2, SMEM_DYNAMIC)
    if split <= 0:
        split = max(1, min(cdiv(4 * num_sms(), row_tiles * m_groups), K // 512))
    split = max(split, min_split)
    align = 256 if vec == 8 else 32
    k_chunk = cdiv(cdiv(K, split), align) * align
    if mb * k_chunk * 2 > SMEM_DYNAMIC:
        k_chunk = (SMEM_DYNAMIC // (2 * mb)) // align * align
    split = cdiv(K, k_chunk)
    ws, cnt = _scratch.get(split * M * N if split > 1 else 0, row_tiles * m_groups)
    stages = stages if vec == 8 and stages >= 2 else 0
    defines = dict(DTYPE_BF16=_dtype_flag(w), MB=mb, ROWS=rows, WARPS=warps, UNROLL=unroll,
                   VEC=vec, HAS_BIAS=int(bias is not None), HAS_RES=int(residual is not None),
                   **prologue)
    smem = mb * k_chunk * 2
    if stages:
        defines["STAGES"] = stages
        smem = cdiv(smem, 16) * 16 + gemv_ring_bytes(rows, warps, unroll, stages)
    kern = _kernel("gemv.cu", "gemv_kernel", defines)
    _set_smem(kern, smem)
    kern((row_tiles, split, m_groups), (warps * 32,),
         (x, w, bias if bias is not None else w, residual if residual is not None else y, y,
          ws, cnt, cp.int32(M), cp.int32(N), cp.int32(K), cp.int32(k_chunk)) + prologue_args,
         shared_mem=smem)


# --- fused prologues: the op producing x runs inside the GEMV's x staging ----------------------
# Fusion saves one ~2 us launch but puts a serial prologue in front of every block's weight
# stream; it pays only where the product is launch bound (H100, docs/flat_gemm_notes.md v4:
# SmolLM2 shapes gain 1.5-2 us each, Llama-3-8B gate_up / down lose 2-4 us).
FUSED_SMALL_MNK = 1 << 22  # where it picks the flat GEMM (SmolLM2 down 576x1536 at M = 1)
FUSED_SMALL_PARAMS = {"rows": 2, "warps": 8, "split": 1}  # split-K fix-up costs ~1 us here


def _fused_params(M: int, N: int, K: int) -> dict | None:
    """gemv params for a fused prologue, or None where the unfused ops should run."""
    if not 1 <= M <= FUSED_MAX_M or M * N * K > FUSED_MAX_MNK:
        return None
    # same answer eagerly and under capture; a 'cublas' choice (capturable via cublas.py)
    # keeps the unfused ops unless the product is tiny
    impl, params = choose(M, N, K, capturing=True)
    if impl == "gemv":
        return params
    return dict(FUSED_SMALL_PARAMS) if M * N * K <= FUSED_SMALL_MNK else None


def _dest(out, shape: tuple, dtype):
    if out is None:
        return cp.empty(shape, dtype)
    if out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous:
        raise ValueError(f"out: expected contiguous {shape} {dtype}, got {out.shape} {out.dtype}")
    return out


def _is_lowp(*arrays) -> bool:
    dt = arrays[0].dtype
    return (dt in (cp.float16, cp.uint16) or dt.name == "bfloat16") and all(
        a.dtype == dt for a in arrays)


def norm_linear(x, residual, norm_w, eps: float, w, bias=None, *, out=None, r_out=None,
                params: dict | None = None):
    """Add + RMSNorm fused into the GEMV's x staging (gemv.cu PROLOGUE 1), one launch:
        r = x + residual (x when residual is None), rounded to x's dtype
        y = (r / sqrt(mean(r^2) + eps) * norm_w) @ w.T (+ bias)
    x, residual [M, K]; norm_w [K]; w [N, K]; bias [N]. Returns (y [M, N], r [M, K]); r is a
    new array (x itself when residual is None). Returns None when the fused path does not
    apply (M > FUSED_MAX_M, products too big to be launch bound, other dtypes or shapes): the caller runs rmsnorm + linear. Graph-capturable (no cuBLAS, no sync).
    out [M, N], r_out [M, K]: optional destinations (contiguous; r_out must not alias x or
    residual). params: gemv params; given, the fused path is taken for any M <= 8 (tests, lab)."""
    if x.ndim != 2 or w.ndim != 2 or norm_w.ndim != 1:
        return None
    return _norm_linear(x, residual, norm_w, eps, w, bias, (x.shape[0], w.shape[0]), out, r_out,
                        params, {}, ())


def _prologue_params(params: dict | None, M: int, N: int, K: int) -> dict | None:
    """The gemv params of a fused-prologue launch: given ones (tests, lab) for any M <=
    FUSED_MAX_M, else the default rule (_fused_params); None where fusion does not apply."""
    return _fused_params(M, N, K) if params is None or M > FUSED_MAX_M else params


def _norm_linear(x, residual, norm_w, eps, w, bias, y_shape, out, r_out, params, epilogue: dict,
                 epilogue_args: tuple):
    """The PROLOGUE 1 launch of norm_linear with an optional epilogue; None on bad inputs or
    where fusion does not apply (_prologue_params)."""
    M, K = x.shape
    params = _prologue_params(params, M, w.shape[0], K)
    if params is None:
        return None
    if epilogue:
        params = _even_rows(params, M, w.shape[0], K)
    # x may be the fused MLP's fixed sums (mlp.py): read as int64 by the PRO_FIXED prologue
    fixed = isinstance(x, FixedSum)
    arrays = [w, norm_w] + [a for a in (None if fixed else x, residual, bias) if a is not None]
    if (w.shape[1] != K or norm_w.shape[0] != K or not _is_lowp(*arrays)
            or (fixed and (residual is None or x.dtype != w.dtype))
            or (residual is not None and residual.shape != x.shape)
            or (bias is not None and bias.shape != (w.shape[0],))):
        return None
    xa = x.sums if fixed else cp.ascontiguousarray(x)
    w, norm_w = (cp.ascontiguousarray(a) for a in (w, norm_w))
    res = cp.ascontiguousarray(residual) if residual is not None else None
    b = cp.ascontiguousarray(bias) if bias is not None else None
    y = _dest(out, y_shape, w.dtype)
    r = _dest(r_out, x.shape, w.dtype) if res is not None else xa
    is_vec = _vec_ok(K, xa, w, norm_w, res, None if res is None else r)
    # without residual, pro_res and r_out are never touched: any pointer will do
    args = (res if res is not None else xa, norm_w, r if res is not None else y, cp.float32(eps))
    _gemv_launch(xa, w, y, b, None, M, K, is_vec,
                 dict(PROLOGUE=1, PRO_RES=int(res is not None), **epilogue,
                      **(dict(PRO_FIXED=1, FIXED_REPLICAS=REPLICAS) if fixed else {})),
                 args + epilogue_args, **params)
    if fixed:
        FixedSumPool.read(x)  # every block read all of it: the next fused MLP launch clears it
    return y, r


def norm_linear_rope(x, residual, norm_w, eps: float, w, bias, positions, slot_mapping, cos, sin,
                     k_cache, v_cache, num_q_heads: int, num_kv_heads: int, head_dim: int, *,
                     out=None, r_out=None, params: dict | None = None):
    """norm_linear for the decode qkv product with RoPE and the paged K/V write (rope.cu's
    rope_kv_write) fused into the GEMV's output (gemv.cu EPILOGUE 1), one launch:
        r, qkv = norm_linear(x, residual, norm_w, eps, w, bias)   (qkv rounded to x's dtype)
        q = rope(qkv[:, :Hq*D]) -> [M, Hq, D];  rope(k), v -> k_cache, v_cache at slot_mapping
    w [(Hq + 2*Hkv) * D, K] = [q | k | v]; positions, slot_mapping [M] int32 (slot < 0: not
    written); cos, sin [max_pos, D/2] float32; k_cache, v_cache [NB, Hkv, BS, D] contiguous.
    Returns (q, r), or None where the fused path does not apply (as norm_linear): the caller
    runs norm_linear + rope_kv_write. out [M, Hq, D], r_out, params: as norm_linear (an odd
    rows is raised by one: the rows of a rotation pair share a warp)."""
    if norm_w.ndim != 1:
        return None
    rope = _rope_epilogue(x, w, positions, slot_mapping, cos, sin, k_cache, v_cache,
                          num_q_heads, num_kv_heads, head_dim)
    if rope is None:
        return None
    return _norm_linear(x, residual, norm_w, eps, w, bias, (x.shape[0], num_q_heads, head_dim),
                        out, r_out, params, *rope)


def _even_rows(params: dict, M: int, N: int, K: int) -> dict:
    """GEMV params for a paired epilogue (both rows of a pair in one warp: rows even). Params
    that are the table's GEMV choice give way to the rule's 'paired' entry, the fastest config
    the tuner timed with the epilogue itself (rawengine/tune.py time_paired): the plain
    product's ranking did not carry over (1% of Llama-3-8B decode). Otherwise (given params,
    tables without 'paired') an odd rows is raised by one."""
    for m_max, impl, p, _, paired in _tables().get((gpu_name(), N, K), ()):
        if M <= m_max:
            if impl == "gemv" and p == params and paired:
                return dict(paired)
            break
    rows = params.get("rows", 2)
    return dict(params, rows=rows + rows % 2)


def _rope_epilogue(x, w, positions, slot_mapping, cos, sin, k_cache, v_cache, num_q_heads: int,
                   num_kv_heads: int, D: int):
    """(defines, args) of gemv.cu EPILOGUE 1 for these inputs, or None if they do not fit it."""
    if (x.ndim != 2 or w.ndim != 2 or k_cache.ndim != 4 or cos.ndim != 2 or D % 2
            or w.shape[0] != (num_q_heads + 2 * num_kv_heads) * D
            or k_cache.shape != v_cache.shape or k_cache.shape[1] != num_kv_heads
            or k_cache.shape[3] != D or not (k_cache.flags.c_contiguous and v_cache.flags.c_contiguous)
            or k_cache.dtype != x.dtype or v_cache.dtype != x.dtype
            or cos.dtype != cp.float32 or sin.dtype != cp.float32 or sin.shape != cos.shape
            or cos.shape[1] != D // 2 or positions.shape != (x.shape[0],)
            or slot_mapping.shape != (x.shape[0],)
            or positions.dtype != cp.int32 or slot_mapping.dtype != cp.int32):
        return None
    args = tuple(cp.ascontiguousarray(a) for a in (positions, slot_mapping, cos, sin)) + (
        k_cache, v_cache, cp.int32(num_q_heads), cp.int32(num_kv_heads), cp.int32(k_cache.shape[2]))
    return dict(EPILOGUE=1, HEAD_DIM=D), args


def _epilogue_choice(M: int, N: int, K: int) -> tuple[str, dict] | None:
    """(impl, params) for a paired epilogue on an unfused x (no prologue), or None. An
    epilogue adds no serial work in front of the weight stream, so unlike the prologues it
    pays at any size: it rides on the table's choice wherever that can carry it: the GEMV
    at M <= FUSED_MAX_M (rows made even), a flat entry if _stream_pairs_ok takes it."""
    if M < 1:
        return None
    impl, params = choose(M, N, K, capturing=True)
    if impl == "gemv" and M <= FUSED_MAX_M:
        return impl, _even_rows(params, M, N, K)
    return (impl, params) if impl == "flat" else None


def _stream_pairs_ok(N: int, K: int, params: dict, epilogue: dict, *arrays) -> bool:
    """flat_stream_kernel can run this paired epilogue (flat_gemm.cu): whole fragments of
    pairs (N % 16, RoPE heads of whole warps' rows), no split-K, 16-byte rows."""
    fn = params.get("fn", 1)
    return (params.get("kernel") == "stream" and params.get("split", 1) == 1 and N % 16 == 0
            and (epilogue["EPILOGUE"] != 1 or epilogue["HEAD_DIM"] % (16 * fn) == 0)
            and _vec_ok(K, *arrays))


EPILOGUE_OCC = 2


def _epilogue_occ(params: dict) -> dict:
    """Stream params for an epilogue build: 8-warp kt <= 128 builds get occ EPILOGUE_OCC. The
    table times plain products; the epilogue's registers (RoPE: 144 at bm 8, uncapped) would
    otherwise leave one block per SM where the timed build ran two."""
    if (params.get("warps_n", 1) * params.get("warps_k", 8) <= 8 and params.get("kt", 128) <= 128
            and "occ" not in params):
        return dict(params, occ=EPILOGUE_OCC)
    return params


def _epilogue_launch(x, w, bias, y_shape, out, params, epilogue: dict, epilogue_args: tuple):
    """A paired epilogue on x @ w.T: a PROLOGUE 0 gemv launch or flat_stream_kernel (params
    with a 'kernel' are flat's); params None: the table's choice. None if it does not fit."""
    M, K = x.shape
    N = w.shape[0]
    if w.shape[1] != K or not _is_lowp(*([x, w] + ([bias] if bias is not None else []))):
        return None
    if params is None:
        choice = _epilogue_choice(M, N, K)
        if choice is None:
            return None
        impl, params = choice
    else:
        impl = "flat" if "kernel" in params else "gemv"
        params = params if impl == "flat" else _even_rows(params, M, N, K)
    x, w = cp.ascontiguousarray(x), cp.ascontiguousarray(w)
    if impl == "flat" and not _stream_pairs_ok(N, K, params, epilogue, x, w):
        return None
    b = cp.ascontiguousarray(bias) if bias is not None else None
    y = _dest(out, y_shape, x.dtype)
    if impl == "flat":
        flat(x, w, y, b, epilogue=epilogue, epilogue_args=epilogue_args,
             **_epilogue_occ(params))
    else:
        _gemv_launch(x, w, y, b, None, M, K, _vec_ok(K, x, w), epilogue, epilogue_args,
                     **params)
    return y


def linear_rope(x, w, bias, positions, slot_mapping, cos, sin, k_cache, v_cache,
                num_q_heads: int, num_kv_heads: int, head_dim: int, *, out=None,
                params: dict | None = None):
    """The decode qkv product of an already normalised x with RoPE and the paged K/V write in
    its output (pair_epilogue.cuh EPILOGUE 1 in the GEMV, no prologue, or in the flat stream
    kernel), one launch instead of linear + rope_kv_write. For products too big for
    norm_linear_rope (whose serial RMSNorm staging costs more than the launch it saves
    there). Arguments as norm_linear_rope; params: gemv's, or flat's with a 'kernel'. Returns
    q [M, Hq, D], or None where it does not apply (the table's choice cannot carry it:
    _epilogue_choice; other shapes or dtypes): the caller runs linear + rope_kv_write."""
    rope = _rope_epilogue(x, w, positions, slot_mapping, cos, sin, k_cache, v_cache,
                          num_q_heads, num_kv_heads, head_dim)
    if rope is None:
        return None
    return _epilogue_launch(x, w, bias, (x.shape[0], num_q_heads, head_dim), out, params, *rope)


def norm_linear_silu(x, residual, norm_w, eps: float, w, *, out=None, r_out=None,
                     params: dict | None = None):
    """norm_linear for the decode gate_up product with SiLU-and-mul in the GEMV's output
    (gemv.cu PROLOGUE 1 + EPILOGUE 2), one launch:
        [g | u], r = norm_linear(x, residual, norm_w, eps, w)   (g, u rounded to x's dtype)
        act = silu(g) * u  [M, N / 2]
    Returns (act, r), or None where it does not apply (as norm_linear)."""
    if x.ndim != 2 or w.ndim != 2 or norm_w.ndim != 1 or w.shape[0] % 2:
        return None
    return _norm_linear(x, residual, norm_w, eps, w, None, (x.shape[0], w.shape[0] // 2), out,
                        r_out, params, dict(EPILOGUE=2), ())


def linear_silu(x, w, *, out=None, params: dict | None = None):
    """The decode gate_up product with SiLU-and-mul in its output (pair_epilogue.cuh EPILOGUE 2
    in the GEMV or the flat stream kernel, no prologue), one launch instead of linear +
    silu_mul: [g | u] = x @ w.T rounded to x's
    dtype, returns silu(g) * u [M, N / 2]; or None where it does not apply (as linear_rope):
    the caller runs linear + silu_mul."""
    if x.ndim != 2 or w.ndim != 2 or w.shape[0] % 2:
        return None
    return _epilogue_launch(x, w, None, (x.shape[0], w.shape[0] // 2), out, params,
                            dict(EPILOGUE=2), ())


def silu_mul_linear(gate_up, w, bias=None, *, out=None, params: dict | None = None):
    """SiLU-and-mul fused into the GEMV's x staging (gemv.cu PROLOGUE 2), one launch:
        y = (silu(g) * u) @ w.T (+ bias),  [g | u] = gate_up,  silu(g) = g / (1 + exp(-g))
    gate_up [M, 2K]; w [N, K]; bias [N] -> y [M, N]. Returns None where the fused path does not
    apply (as norm_linear): the caller runs silu_mul + linear. Graph-capturable.
    out, params: as norm_linear."""
    if gate_up.ndim != 2 or w.ndim != 2:
        return None
    M, K2 = gate_up.shape
    N, K = w.shape
    arrays = [gate_up, w] + ([bias] if bias is not None else [])
    if K2 != 2 * K or not _is_lowp(*arrays) or (bias is not None and bias.shape != (N,)):
        return None
    params = _prologue_params(params, M, N, K)
    if params is None:
        return None
    gate_up, w = cp.ascontiguousarray(gate_up), cp.ascontiguousarray(w)
    b = cp.ascontiguousarray(bias) if bias is not None else None
    y = _dest(out, (M, N), gate_up.dtype)
    # u = g + K: 16-byte aligned whenever gate_up is and K % 8 == 0
    _gemv_launch(gate_up, w, y, b, None, M, K, _vec_ok(K, gate_up, w), dict(PROLOGUE=2), (),
                 **params)
    return y


_late_trigger = False


@contextlib.contextmanager
def late_trigger(on: bool = True):
    """Stream-kernel launches inside let the next kernel launch only after their weight
    stream (flat_gemm.cu LATE_TRIGGER), not at their start, and skip the table's L2 prefetch
    before the launch wait (pf, PF_TILES). Model forwards run inside it
    (CudaBackend.in_forward): there the early launch cost up to 7 us a layer and the prefetch
    1.5-2.7% of decode (H100, sessions 16-17); a bare chain of products (tools/bench_gemm.py,
    the tuner) gains ~1 us a call from the early launch and up to 1 us more from the
    prefetch."""
    global _late_trigger
    prev, _late_trigger = _late_trigger, on
    try:
        yield
    finally:
        _late_trigger = prev


def flat_smem(bm: int, fn: int, warps_n: int, warps_k: int, bk: int, stages: int) -> int:
    bn = 16 * fn * warps_n
    return max(stages * (bn + bm) * bk * 2, warps_k * bm * (bn + 4) * 4)


def _set_smem(kern, smem: int, static: int = 0) -> None:
    """Opt the kernel in to `smem` bytes of dynamic shared memory where the default 48 KB
    (less its `static` shared memory; SMEM_DYNAMIC assumes <= 2 KB of it) is not enough."""
    if smem + static > SMEM_MAX:
        raise ValueError(f"tile needs {smem + static} B of shared memory (> {SMEM_MAX})")
    if ((smem > SMEM_DYNAMIC or smem + static > 48 * 1024)
            and kern.max_dynamic_shared_size_bytes < smem):
        kern.max_dynamic_shared_size_bytes = smem


def flat(x, w, y, bias=None, residual=None, *, kernel: str = "direct", bm: int = 0, fn: int = 0,
         warps_n: int = 0, warps_k: int = 0, bk: int = 128, stages: int = 4, unroll: int = 0,
         split: int = 0, kt: int = 128, pre: int = 1, occ: int = 1, pf: int = 0,
         epilogue: dict | None = None, epilogue_args: tuple = ()) -> None:
    """y = x @ w.T (+ bias) (+ residual) on tensor cores (mma.m16n8k16); needs K % 8 == 0.

    kernel 'direct': w fragments loaded straight from global memory (decode M);
    kernel 'stream': w streamed in row runs of kt * warps_k * 2 bytes through per-warp shared
    tiles, x copied per warp and tile beside them; pre (1, 2): w tiles per warp requested
    before the programmatic-launch wait; occ 2: registers capped for two blocks per SM (8-warp
    kt 64 / 128 builds, flat_gemm.cu MIN_BLOCKS); pf (0..8): w tiles per warp prefetched
    into L2 before the launch wait (PF_TILES);
    kernel 'smem': cp.async shared-memory pipeline (bk, stages).
    bm = 0: smallest of 8/16/32/64 covering M; 0 for warps/unroll/split: picked from the shape.
    epilogue, epilogue_args: a paired epilogue of the stream kernel (pair_epilogue.cuh defines
    and extra args; split 1, no residual; y is then the epilogue's output)."""
    M, K = x.shape
    N = w.shape[0]
    direct, stream = kernel == "direct", kernel == "stream"
    if bm <= 0:  # the stream kernel's x tiles grow with bm: larger M takes more row groups
        bm = next((b for b in (8, 16, 32, 64) if b >= M), 64)
        bm = min(bm, 32) if stream else bm
    # defaults: the configs with the smallest geomean loss over the H100 tuning runs
    fn = fn or (2 if direct else 1)
    warps_n = warps_n or (1 if direct or stream else 2)
    warps_k = warps_k or ((8 if bm <= 32 else 4) if direct else 8 if stream else 4)
    unroll = unroll or 2
    bn = 16 * fn * warps_n
    c_tile = warps_k * bm * (bn + 4) * 4  # static C tile of the direct and stream kernels
    n_tiles, m_groups = cdiv(N, bn), cdiv(M, bm)
    step = 32 * unroll * warps_k if direct else kt * warps_k if stream else bk
    k_steps = cdiv(K, step)
    if epilogue:  # before the split-K pick: an unset split means 1 here
        if not stream or split > 1 or residual is not None:
            raise ValueError("flat: a paired epilogue needs the stream kernel, split 1 and no "
                             "residual")
        split = 1
    if split <= 0:
        target = (4 if direct else 2) * num_sms()
        split = max(1, min(cdiv(target, n_tiles * m_groups), k_steps // 2))
    split = min(split, k_steps)
    k_chunk = cdiv(k_steps, split) * step
    split = cdiv(K, k_chunk)
    ws, cnt = _scratch.get(split * M * N if split > 1 else 0, n_tiles * m_groups)
    defines = dict(DTYPE_BF16=_dtype_flag(w), DIRECT=2 if stream else int(direct), FM=bm // 8,
                   FN=fn, WARPS_N=warps_n, WARPS_K=warps_k, HAS_BIAS=int(bias is not None),
                   HAS_RES=int(residual is not None))
    if direct:
        defines["UNROLL"] = unroll
        smem = 0
        if c_tile > SMEM_DYNAMIC:
            raise ValueError(f"flat direct: C tile of {warps_k}x{bm}x{bn} exceeds 46 KB")
    elif stream:
        if kt not in (64, 128, 256) or fn * kt > 256:  # two register tiles of fn * kt / 16 uint4
            raise ValueError(f"flat stream: kt {kt} with fn {fn} "
                             "(kt in 64/128/256, fn * kt <= 256)")
        if c_tile > 48 * 1024:
            raise ValueError(f"flat stream: C tile of {warps_k}x{bm}x{bn} exceeds 48 KB")
        if pre not in (1, 2):
            raise ValueError(f"flat stream: pre {pre} (1 or 2 tiles before the launch wait)")
        if occ not in (1, 2) or (occ == 2 and (warps_n * warps_k > 8 or kt > 128)):
            raise ValueError(f"flat stream: occ {occ} (1, or 2 with <= 8 warps and kt <= 128)")
        if not 0 <= pf <= 8:
            raise ValueError(f"flat stream: pf {pf} (0..8 tiles prefetched into L2)")
        defines.update(KT=kt, PRE_TILES=pre, LATE_TRIGGER=int(_late_trigger), **(epilogue or {}))
        # set only where not the default: other builds keep their source text (CuPy's cache)
        defines.update({"MIN_BLOCKS": occ} if occ > 1 else {})
        smem = flat_stream_smem(bm, fn, warps_n * warps_k, kt)
        if pf and not _late_trigger:  # model forwards: no prefetch (see late_trigger)
            defines.update(PF_TILES=pf, PF_WAVE=_first_wave(tuple(sorted(defines.items())),
                                                            32 * warps_n * warps_k, smem, c_tile))
    else:
        defines.update(BK=bk, STAGES=stages)
        smem = flat_smem(bm, fn, warps_n, warps_k, bk, stages)
    name = ("flat_direct_kernel" if direct else "flat_stream_kernel" if stream
            else "flat_gemm_kernel")
    kern = _kernel("flat_gemm.cu", name, defines)
    _set_smem(kern, smem, c_tile if stream else 0)
    kern((n_tiles, split, m_groups), (32 * warps_n * warps_k,),
         (x, w, bias if bias is not None else w, residual if residual is not None else y, y,
          ws, cnt, cp.int32(M), cp.int32(N), cp.int32(K), cp.int32(k_chunk)) + epilogue_args,
         shared_mem=smem)


@functools.lru_cache(maxsize=None)
def _first_wave(frozen: tuple, threads: int, smem: int, c_tile: int) -> int:
    """Blocks of this stream build (its sorted defines, without the prefetch) resident at
    once on the GPU: the ones that start while the previous kernel runs, the only ones whose
    L2 prefetch (PF_TILES) runs ahead of their loads."""
    from rawengine.backends.cuda.launch import blocks_per_sm

    kern = _kernel("flat_gemm.cu", "flat_stream_kernel", dict(frozen))
    _set_smem(kern, smem, c_tile)
    return blocks_per_sm(kern, threads, smem) * num_sms()


def flat_stream_smem(bm: int, fn: int, warps: int, kt: int) -> int:
    """Dynamic shared memory of flat_stream_kernel: per warp one w tile and two x tiles."""
    return warps * (16 * fn + 2 * bm) * kt * 2


def cublas(x, w, y, bias=None, residual=None) -> None:
    """y = x @ w.T (+ bias | + residual) with cuBLAS; the addend rides on its beta = 1: y
    holds the residual (copied in unless y is the residual) or the broadcast bias (a bit
    copy, any dtype), and the GEMM adds x @ w.T in fp32 and rounds once. Bias and residual
    together would round twice: run_impl sends those to our kernels (no model has both)."""
    if not libcublas.available():
        _cupy_matmul(x, w, y, bias, residual)
        return
    if bias is not None and residual is not None:
        raise ValueError("cublas: bias and residual together (use flat or gemv)")
    addend = residual if residual is not None else bias
    if addend is not None and addend.data.ptr != y.data.ptr:
        y[...] = addend
    libcublas.gemm(x, w, y, beta_one=addend is not None)


def _cupy_matmul(x, w, y, bias=None, residual=None) -> None:
    """cuBLAS through cupy.matmul: eager only, fp16 only (the fallback of cublas())."""
    if residual is not None and residual.data.ptr == y.data.ptr:
        t = cp.matmul(x, w.T)  # in-place residual: y already holds it
        if bias is not None:
            t += bias
        y += t
        return
    cp.matmul(x, w.T, out=y)
    if bias is not None:
        y += bias
    if residual is not None:
        y += residual


# --- dispatch ------------------------------------------------------------------------------
def default_choice(M: int, N: int, K: int) -> tuple[str, dict]:
    """Rule when no table entry matches, read off the H100 tuning of 24 shapes
    (docs/flat_gemm_notes.md): CUDA-core GEMV for M <= 2, register-direct tensor-core flat
    GEMM up to M = 8, shared-memory flat GEMM up to M = 32, cuBLAS above (capturable
    through cublas.py; flat GEMM where only cupy.matmul is there and cannot run: graph
    capture, bf16)."""
    if M <= 2:
        return "gemv", {}
    if M <= 8:
        return "flat", {"kernel": "direct"}
    if M <= 32:
        return "flat", {"kernel": "smem"}
    return "cublas", {}


def _table_dirs() -> list[Path]:
    root = os.environ.get("RAWENGINE_CACHE")
    user = Path(root) if root else Path.home() / ".cache" / "rawengine"
    return [user / "tuning", _TUNING_DIR]


@functools.lru_cache(maxsize=None)
def _tables() -> dict:
    """{(gpu, N, K): [(m_max, impl, params, fallback, paired), ...] sorted by m_max}; user
    tables win. fallback: (impl, params) used for 'cublas' where cuBLAS cannot run (capture
    or bf16 when only cupy.matmul is there). paired: for a gemv choice with odd rows, the
    fastest even-rows gemv params of the same timings (paired epilogues need even rows)."""
    out: dict = {}
    for d in reversed(_table_dirs()):
        if not d.is_dir():
            continue
        for f in sorted(d.glob("*.json")):
            try:
                data = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            gpu = data.get("gpu")
            for key, rules in data.get("shapes", {}).items():
                n, k = (int(v) for v in key.split("x"))
                out[(gpu, n, k)] = sorted(
                    ((r["m_max"], r["impl"], r.get("params", {}),
                      (r["fallback"]["impl"], r["fallback"].get("params", {}))
                      if "fallback" in r else None, r.get("paired")) for r in rules),
                    key=lambda r: r[0])
    return out


def reload_tables() -> None:
    _tables.cache_clear()


def choose(M: int, N: int, K: int, gpu: str | None = None,
           capturing: bool = False) -> tuple[str, dict]:
    """(impl, params) for this product from the table, else `default_choice`. capturing:
    cupy.matmul could not run here (capture, bf16); then, if cuBLAS is only reachable
    through it, a 'cublas' entry gives way to its tuned fallback (our fastest kernel).
    With cublas.py's ctypes path 'cublas' runs anywhere and is returned as it is."""
    rules = _tables().get((gpu or gpu_name(), N, K))
    if rules:
        for m_max, impl, params, fallback, _ in rules:
            if M <= m_max:
                if (impl == "cublas" and capturing and fallback is not None
                        and not libcublas.available()):
                    return fallback[0], dict(fallback[1])
                return impl, dict(params)
    return default_choice(M, N, K)


def _can_cublas(w, bias, residual) -> bool:
    """cuBLAS can run now: through ctypes anywhere (one addend at most; none for bf16, where
    cuBLAS's beta = 1 accumulation measured beyond one rounding on the H100), except a capture
    that would have to create the device's handle (cublas.py); through cupy.matmul eagerly
    on fp16 only."""
    if libcublas.available():
        addends = (bias is not None) + (residual is not None)
        return (addends <= (1 if _dtype_flag(w) == 0 else 0)
                and (not is_capturing() or libcublas.is_ready()))
    return not is_capturing() and _dtype_flag(w) == 0


def run_impl(impl: str, x, w, y, bias=None, residual=None, **params) -> None:
    """One named implementation, with fallbacks where it cannot run (see _can_cublas; K % 8)."""
    K = x.shape[1]
    if impl == "cublas" and not _can_cublas(w, bias, residual):
        impl, params = "flat", {"kernel": "smem" if x.shape[0] > 32 else "direct"}
    if impl == "flat" and not _vec_ok(K, x, w, y):
        impl, params = "gemv", {}
    if impl == "gemv":
        gemv(x, w, y, bias, residual, **params)
    elif impl == "flat":
        flat(x, w, y, bias, residual, **params)
    else:
        cublas(x, w, y, bias, residual)


def linear(x, w, bias=None, *, residual=None, out=None):
    """y = x @ w.T (+ bias) (+ residual), fp32 accumulation.

    x [..., K], w [N, K] (HF layout), bias [N], residual [..., N] (may be `out`: in-place add),
    out [..., N] optional. Returns y [..., N] in x's dtype. Safe inside CUDA-graph capture.
    """
    K = x.shape[-1]
    N, Kw = w.shape
    if Kw != K:
        raise ValueError(f"linear: x [..., {K}] vs w {w.shape}")
    if x.dtype != w.dtype:
        raise TypeError(f"linear: x {x.dtype} vs w {w.dtype}")
    lead = x.shape[:-1]
    x2 = cp.ascontiguousarray(x).reshape(-1, K)
    M = x2.shape[0]
    w = cp.ascontiguousarray(w)
    y = out if out is not None else cp.empty(lead + (N,), dtype=x.dtype)
    if y.shape != lead + (N,) or not y.flags.c_contiguous:
        raise ValueError(f"linear: out must be contiguous {lead + (N,)}, got {y.shape}")
    if M == 0:
        return y
    y2 = y.reshape(M, N)
    r2 = None
    if residual is not None:
        r2 = cp.ascontiguousarray(residual).reshape(M, N)
    b = cp.ascontiguousarray(bias) if bias is not None else None
    # where cuBLAS is only cupy.matmul, capture and bf16 take the table's own-kernel fallback
    impl, params = choose(M, N, K, capturing=is_capturing() or _dtype_flag(w) == 1)
    run_impl(impl, x2, w, y2, b, r2, **params)
    return y
