"""cuBLAS through ctypes: y[M, N] = x[M, K] @ w[N, K]^T that works inside CUDA-graph capture.

CuPy 14 raises NotImplementedError when cuBLAS is called during stream capture (its binding
checks capture where it sets the handle's stream), and eager cupy.matmul pays ~10 us of Python
per call. This module calls the same shared library directly, as torch does
(aten/src/ATen/cuda/CublasHandlePool.cpp): one handle per device with a preallocated workspace,
so cuBLAS allocates nothing inside a call, which is what makes capture legal.

Nothing is loaded at import time (no GPU, no CuPy needed to import): `available()` loads the
library on first use, the handle is made by the first `gemm` on each device. Make that first
call eagerly (every capture helper here warms up eagerly first); `is_ready()` says whether it
happened, and callers use their own kernels inside a capture that would have to create it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import numpy as np

# enum values from library_types.h (cudaDataType_t) and cublas_api.h
CUDA_R_16F, CUDA_R_16BF = 2, 14
CUBLAS_OP_N, CUBLAS_OP_T = 0, 1
CUBLAS_COMPUTE_32F = 68  # fp32 accumulation, no TF32 or fp16 down-conversion of the products
CUBLAS_GEMM_DEFAULT = -1
# 16 = CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION: split-K partial sums stay in fp32, as
# in every other path here. The default (0, torch's) let bf16 1x576x576 products with beta = 1
# miss the 2x-of-one-rounding test bound on the H100 (2.3e-2 vs 1.95e-2).
MATH_MODE = 16
STATUS = {0: "CUBLAS_STATUS_SUCCESS", 1: "CUBLAS_STATUS_NOT_INITIALIZED",
          3: "CUBLAS_STATUS_ALLOC_FAILED", 7: "CUBLAS_STATUS_INVALID_VALUE",
          8: "CUBLAS_STATUS_ARCH_MISMATCH", 11: "CUBLAS_STATUS_MAPPING_ERROR",
          13: "CUBLAS_STATUS_EXECUTION_FAILED", 14: "CUBLAS_STATUS_INTERNAL_ERROR",
          15: "CUBLAS_STATUS_NOT_SUPPORTED", 16: "CUBLAS_STATUS_LICENSE_ERROR"}
WORKSPACE_BYTES = 32 << 20  # NVIDIA's recommendation for Hopper (torch uses the same)

_P, _I = ctypes.c_void_p, ctypes.c_int
_SIGNATURES = {
    "cublasCreate_v2": [ctypes.POINTER(_P)],
    "cublasSetMathMode": [_P, _I],
    "cublasSetStream_v2": [_P, _P],
    "cublasSetWorkspace_v2": [_P, _P, ctypes.c_size_t],
    # handle, transa, transb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb, beta, C, Ctype, ldc,
    # computeType, algo
    "cublasGemmEx": [_P, _I, _I, _I, _I, _I, _P, _P, _I, _I, _P, _I, _I, _P, _P, _I, _I, _I, _I],
}
_ONE, _ZERO = ctypes.c_float(1.0), ctypes.c_float(0.0)  # host scalars (pointer mode host)


def _mapped_cublas() -> str | None:
    """Path of a libcublas mapped into this process (not libcublasLt), or None."""
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split(maxsplit=5)[-1].strip()
            if path.rsplit("/", 1)[-1].startswith("libcublas.so"):
                return path
    return None


def _cupy_cublas_path() -> str | None:
    """Path of the libcublas CuPy loaded, or None."""
    import cupy
    import cupy_backends.cuda.libs.cublas  # noqa: F401 - links libcublas (DT_NEEDED): loads it
    path = _mapped_cublas()
    if path is None:  # a CuPy that loads libraries lazily: make it load cuBLAS now
        cupy.cuda.device.get_cublas_handle()
        path = _mapped_cublas()
    return path


@functools.lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    """The libcublas CuPy uses (dlopen returns its loaded instance), else one on the search
    path; RuntimeError if none loads."""
    try:
        path = _cupy_cublas_path()
    except Exception:  # noqa: BLE001 - no CuPy, no /proc, no device: try the search path
        path = None
    names = [path, ctypes.util.find_library("cublas"), "libcublas.so.13", "libcublas.so.12"]
    errors = []
    for name in filter(None, names):
        try:
            lib = ctypes.CDLL(name)
            for fn, argtypes in _SIGNATURES.items():
                getattr(lib, fn).argtypes = argtypes
                getattr(lib, fn).restype = ctypes.c_int
            return lib
        except (OSError, AttributeError) as e:
            errors.append(f"{name}: {e}")
    raise RuntimeError("cuBLAS shared library not found: " + ("; ".join(errors) or "no candidates"))


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """True when libcublas loads (callers fall back to their own kernels otherwise)."""
    try:
        _lib()
        return True
    except RuntimeError:
        return False


def _check(status: int, fn: str) -> None:
    if status != 0:
        raise RuntimeError(f"{fn} failed: {STATUS.get(status, f'status {status}')}")


class _Handle:
    """One device's handle and workspace. Never destroyed: captured graphs point at both."""

    def __init__(self):
        import cupy as cp

        lib = _lib()
        self.ptr = _P()
        _check(lib.cublasCreate_v2(ctypes.byref(self.ptr)), "cublasCreate_v2")
        _check(lib.cublasSetMathMode(self.ptr, MATH_MODE), "cublasSetMathMode")
        # cudaMalloc'd directly, outside any memory pool a capture may be allocating from
        self.workspace = cp.cuda.memory.Memory(WORKSPACE_BYTES)
        self.stream = None

    def bind(self, stream: int) -> None:
        """Run on `stream`. cublasSetStream resets the workspace to cuBLAS's own pool, which
        would allocate during capture, so the workspace is set again after it."""
        if stream == self.stream:
            return
        lib = _lib()
        _check(lib.cublasSetStream_v2(self.ptr, stream), "cublasSetStream_v2")
        _check(lib.cublasSetWorkspace_v2(self.ptr, self.workspace.ptr, WORKSPACE_BYTES),
               "cublasSetWorkspace_v2")
        self.stream = stream


_handles: dict[int, _Handle] = {}


def is_ready() -> bool:
    """The current device's handle exists (the first gemm on it ran)."""
    import cupy as cp

    return cp.cuda.Device().id in _handles


def _data_type(a) -> int:
    if a.dtype == np.float16:
        return CUDA_R_16F
    if a.dtype.name == "bfloat16" or a.dtype == np.uint16:  # bf16 as a named dtype or raw bits
        return CUDA_R_16BF
    raise TypeError(f"cublas.gemm: unsupported dtype {a.dtype} (float16 or bfloat16)")


def gemm(x, w, y, *, beta_one: bool = False) -> None:
    """y[M, N] = x[M, K] @ w[N, K]^T (+ y when beta_one), fp32 accumulation, one rounding.

    Row-major contiguous CuPy arrays of one dtype, float16 or bfloat16 (named or uint16 bits);
    runs on the current stream, eagerly or under capture."""
    import cupy as cp

    M, K = x.shape
    N = w.shape[0]
    if w.shape != (N, K) or y.shape != (M, N):
        raise ValueError(f"cublas.gemm: x {x.shape}, w {w.shape}, y {y.shape}")
    if not (x.dtype == w.dtype == y.dtype):
        raise TypeError(f"cublas.gemm: dtypes {x.dtype}, {w.dtype}, {y.dtype} differ")
    if not (x.flags.c_contiguous and w.flags.c_contiguous and y.flags.c_contiguous):
        raise ValueError("cublas.gemm: x, w, y must be contiguous")
    dt = _data_type(x)
    if M == 0 or N == 0:
        return
    if K == 0:  # cuBLAS rejects ld 0; the product is empty
        if not beta_one:
            y.fill(0)
        return
    dev = cp.cuda.Device().id
    if dev not in _handles:
        _handles[dev] = _Handle()
    h = _handles[dev]
    h.bind(cp.cuda.get_current_stream().ptr)
    # cuBLAS is column-major: row-major y [M, N] is y^T [N x M] with ld N, so compute
    # y^T = op_T(W) [N x K] . x^T [K x M], where W is w read as [K x N] (ld K), x^T as [K x M].
    _check(_lib().cublasGemmEx(h.ptr, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, ctypes.byref(_ONE),
                               w.data.ptr, dt, K, x.data.ptr, dt, K,
                               ctypes.byref(_ONE if beta_one else _ZERO), y.data.ptr, dt, N,
                               CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT), "cublasGemmEx")
