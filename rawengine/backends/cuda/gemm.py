"""Decode-time matrix products: y[M, N] = x[M, K] @ w[N, K]^T (+ bias) (+ residual).

Three implementations, picked per (GPU, N, K, M) from a dispatch table (FlashDecoding++'s
heuristic dataflow):
  'gemv'   kernels_cu/gemv.cu, CUDA cores, smallest M.
  'flat'   kernels_cu/flat_gemm.cu, tensor cores (mma.m16n8k16, M padded to 8).
  'cublas' cupy.matmul; never inside CUDA-graph capture (CuPy refuses cuBLAS there) and never
           for bf16 stored as uint16, where the dispatcher falls back to 'flat'.

Dtypes: float16, or bfloat16 given either as a dtype named 'bfloat16' or as raw uint16 bits
(CuPy has no native bf16 arithmetic). Accumulation is float32 in every path.

Tables: JSON files (see rawengine/tune.py) from $RAWENGINE_CACHE/tuning or
~/.cache/rawengine/tuning (written by `rawengine tune`), then the ones shipped in
rawengine/tuning/. Only looked up here, never tuned online. With no matching entry the
default rule `default_choice` applies.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import cupy as cp

_KERNEL_DIR = Path(__file__).resolve().parents[3] / "kernels_cu"
_TUNING_DIR = Path(__file__).resolve().parents[2] / "tuning"
SMEM_DEFAULT = 48 * 1024
SMEM_MAX = 227 * 1024  # Hopper opt-in limit per block
IMPLS = ("gemv", "flat", "cublas")


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


# --- kernel loading (TODO: replace by rawengine.backends.cuda.module.kernel once it exists) ---
try:
    from rawengine.backends.cuda.module import kernel as _module_kernel  # type: ignore
except Exception:  # noqa: BLE001 - colleague's module not there yet
    _module_kernel = None


@functools.lru_cache(maxsize=None)
def _local_kernel(file: str, name: str, defines: tuple):
    src = (_KERNEL_DIR / file).read_text()
    opts = ("--std=c++17",) + tuple(f"-D{k}={v}" for k, v in defines)
    return cp.RawModule(code=src, options=opts).get_function(name)


def _kernel(file: str, name: str, defines: dict):
    if _module_kernel is not None:
        return _module_kernel(file, name, defines)
    return _local_kernel(file, name, tuple(sorted(defines.items())))


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
         split: int = 0) -> None:
    """y = x @ w.T (+ bias) (+ residual) on CUDA cores; x [M, K], w [N, K], y [M, N].
    split = 0 picks split-K from the shape."""
    M, K = x.shape
    N = w.shape[0]
    mb = min(M, 8)
    vec = 8 if _vec_ok(K, x, w) else 1
    row_tiles = cdiv(N, warps * rows)
    m_groups = cdiv(M, mb)
    min_split = cdiv(mb * K * 2, SMEM_DEFAULT)
    if split <= 0:
        split = max(1, min(cdiv(4 * num_sms(), row_tiles * m_groups), K // 512))
    split = max(split, min_split)
    align = 256 if vec == 8 else 32
    k_chunk = cdiv(cdiv(K, split), align) * align
    if mb * k_chunk * 2 > SMEM_DEFAULT:
        k_chunk = (SMEM_DEFAULT // (2 * mb)) // align * align
    split = cdiv(K, k_chunk)
    ws, cnt = _scratch.get(split * M * N if split > 1 else 0, row_tiles * m_groups)
    defines = dict(DTYPE_BF16=_dtype_flag(w), MB=mb, ROWS=rows, WARPS=warps, UNROLL=unroll,
                   VEC=vec, HAS_BIAS=int(bias is not None), HAS_RES=int(residual is not None))
    kern = _kernel("gemv.cu", "gemv_kernel", defines)
    kern((row_tiles, split, m_groups), (warps * 32,),
         (x, w, bias if bias is not None else w, residual if residual is not None else y, y,
          ws, cnt, cp.int32(M), cp.int32(N), cp.int32(K), cp.int32(k_chunk)),
         shared_mem=mb * k_chunk * 2)


def flat_smem(bm: int, fn: int, warps_n: int, warps_k: int, bk: int, stages: int) -> int:
    bn = 16 * fn * warps_n
    return max(stages * (bn + bm) * bk * 2, warps_k * bm * (bn + 4) * 4)


def flat(x, w, y, bias=None, residual=None, *, bm: int = 0, fn: int = 1, warps_n: int = 4,
         warps_k: int = 1, bk: int = 64, stages: int = 4, split: int = 0) -> None:
    """y = x @ w.T (+ bias) (+ residual) on tensor cores; needs K % 8 == 0.
    bm = 0 picks the smallest of 8/16/32/64 covering M; split = 0 picks split-K."""
    M, K = x.shape
    N = w.shape[0]
    if bm <= 0:
        bm = 8 if M <= 8 else 16 if M <= 16 else 32 if M <= 32 else 64
    bn = 16 * fn * warps_n
    n_tiles, m_groups = cdiv(N, bn), cdiv(M, bm)
    k_tiles = cdiv(K, bk)
    if split <= 0:
        split = max(1, min(cdiv(2 * num_sms(), n_tiles * m_groups), k_tiles // 4))
    split = min(split, k_tiles)
    k_chunk = cdiv(k_tiles, split) * bk
    split = cdiv(K, k_chunk)
    ws, cnt = _scratch.get(split * M * N if split > 1 else 0, n_tiles * m_groups)
    defines = dict(DTYPE_BF16=_dtype_flag(w), BM=bm, FN=fn, WARPS_N=warps_n, WARPS_K=warps_k,
                   BK=bk, STAGES=stages, HAS_BIAS=int(bias is not None),
                   HAS_RES=int(residual is not None))
    kern = _kernel("flat_gemm.cu", "flat_gemm_kernel", defines)
    smem = flat_smem(bm, fn, warps_n, warps_k, bk, stages)
    if smem > SMEM_MAX:
        raise ValueError(f"flat: tile needs {smem} B of shared memory (> {SMEM_MAX})")
    if smem > SMEM_DEFAULT and kern.max_dynamic_shared_size_bytes < smem:
        kern.max_dynamic_shared_size_bytes = smem
    kern((n_tiles, split, m_groups), (32 * warps_n * warps_k,),
         (x, w, bias if bias is not None else w, residual if residual is not None else y, y,
          ws, cnt, cp.int32(M), cp.int32(N), cp.int32(K), cp.int32(k_chunk)),
         shared_mem=smem)


def cublas(x, w, y, bias=None, residual=None) -> None:
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
    """Rule when no table entry matches (from the H100 measurements in
    docs/flat_gemm_notes.md): CUDA-core GEMV for M <= 4, tensor-core flat GEMM up to M = 64,
    cuBLAS above (flat GEMM when cuBLAS is unavailable)."""
    if M <= 4:
        return "gemv", {}
    if M <= 64:
        return "flat", {}
    return "cublas", {}


def _table_dirs() -> list[Path]:
    root = os.environ.get("RAWENGINE_CACHE")
    user = Path(root) if root else Path.home() / ".cache" / "rawengine"
    return [user / "tuning", _TUNING_DIR]


@functools.lru_cache(maxsize=None)
def _tables() -> dict:
    """{(gpu, N, K): [(m_max, impl, params), ...] sorted by m_max}; user tables win."""
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
                    ((r["m_max"], r["impl"], r.get("params", {})) for r in rules),
                    key=lambda r: r[0])
    return out


def reload_tables() -> None:
    _tables.cache_clear()


def choose(M: int, N: int, K: int, gpu: str | None = None) -> tuple[str, dict]:
    """(impl, params) for this product from the table, else `default_choice`."""
    rules = _tables().get((gpu or gpu_name(), N, K))
    if rules:
        for m_max, impl, params in rules:
            if M <= m_max:
                return impl, dict(params)
    return default_choice(M, N, K)


def run_impl(impl: str, x, w, y, bias=None, residual=None, **params) -> None:
    """One named implementation, with fallbacks where it cannot run (capture, bf16, K % 8)."""
    K = x.shape[1]
    if impl == "cublas" and (is_capturing() or _dtype_flag(w) == 1):
        impl, params = "flat", {}
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
    impl, params = choose(M, N, K)
    run_impl(impl, x2, w, y2, b, r2, **params)
    return y
