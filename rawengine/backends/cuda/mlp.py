"""The fused decode MLP (kernels_cu/mlp.cu): add + RMSNorm -> gate_up -> SiLU-mul -> down in one
launch, its output as fixed-point sums (fixed_sum.py).

It pays where the MLP is launch bound, not bandwidth bound: small models at decode batch sizes
(docs/launch_notes.md, "Session 9"). MAX_WEIGHT_BYTES and MAX_M bound where it is used; above
them the caller runs norm_linear_silu + linear.
"""

from __future__ import annotations

import os

import cupy as cp

from .fixed_sum import REPLICAS, FixedSum, FixedSumPool
from .gemm import SMEM_MAX, _dtype_flag, _is_lowp, _kernel, _set_smem, cdiv

MAX_M = 8
MAX_WEIGHT_BYTES = 16 << 20  # gate, up and down together (SmolLM2-135M: 5.3 MB)
# intermediate columns per block (mlp.cu C): I / C blocks of 6 * C * H bytes of weights. SmolLM2
# step graph, same process (docs/launch_notes.md, "Session 9"): C 8 -> 415.9 / 414.0 us,
# 16 -> 395.6 / 399.3, 24 -> 401.9 / 401.0 (fewer blocks: fewer atomics on each output, but each
# block waits for more weight bytes).
COLS = 16
WARPS = 8
TRACE = os.environ.get("RAWENGINE_MLP_TRACE", "0") == "1"  # tools/trace_mlp.py sets it first


def smem_bytes(H: int, mb: int, cols: int = COLS) -> int:
    """mlp.cu's dynamic shared memory: gate/up rows, down columns, staged x (its static shared
    memory adds 4 * mb * cols bytes)."""
    return 6 * cols * H + 4 * mb * H


def enabled() -> bool:
    return os.environ.get("RAWENGINE_FUSED_MLP", "1") != "0"


def norm_mlp(x, residual, norm_w, eps: float, w_gu, w_d, pool: FixedSumPool, *, r_out=None,
             force: bool = False, cols: int | None = None):
    """(y, r): r = x + residual (x when None) rounded to x's dtype; y = down(silu(g) * u) with
    [g | u] = rmsnorm(r) * norm_w @ w_gu.T, as a FixedSum [M, H]. x, residual [M, H]; norm_w [H];
    w_gu [2I, H]; w_d [H, I]. x may be a FixedSum (attention_o's output; needs a residual):
    read, not cleared (the next pool.take() launch clears it). None where the fused kernel does
    not apply (sizes, dtypes, alignment, RAWENGINE_FUSED_MLP=0); force skips the size rule, cols
    sets mlp.cu's C (tests)."""
    fixed = isinstance(x, FixedSum)
    if (x.ndim != 2 or w_gu.ndim != 2 or w_d.ndim != 2 or norm_w.ndim != 1
            or (fixed and (residual is None or x.dtype != residual.dtype))):
        return None
    cols = cols or COLS
    M, H = x.shape
    I = w_d.shape[1]
    arrays = ([] if fixed else [x]) + [norm_w, w_gu, w_d] + (
        [residual] if residual is not None else [])
    mb = next((b for b in (1, 2, 4, 8) if b >= M), 0)
    if (not enabled() or not 1 <= M <= MAX_M or w_gu.shape != (2 * I, H) or w_d.shape[0] != H
            or norm_w.shape[0] != H or H % 8 or I % 8 or not _is_lowp(*arrays)
            or (residual is not None and residual.shape != x.shape)
            or any(not a.flags.c_contiguous or a.data.ptr % 16 for a in arrays)
            or cols % 8 or cols % WARPS or smem_bytes(H, mb, cols) + 4 * mb * cols > SMEM_MAX
            or (not force and 3 * H * I * w_gu.itemsize > MAX_WEIGHT_BYTES)):
        return None
    r = x
    if residual is not None:
        r = cp.empty_like(residual) if r_out is None else r_out
        if r.shape != x.shape or r.dtype != x.dtype or r.data.ptr % 16:
            raise ValueError(f"r_out: expected {x.shape} {x.dtype}, 16-byte aligned")
    y, clear = pool.take((M, H), x.dtype)  # before x is marked read: x is not cleared here
    kern = _kernel("mlp.cu", "norm_mlp_kernel",
                   kernel_defines(_dtype_flag(residual if fixed else x), H, mb, cols,
                                  residual is not None, fixed))
    smem = smem_bytes(H, mb, cols)
    _set_smem(kern, smem)
    xa = x.sums if fixed else x
    kern((cdiv(I, cols),), (WARPS * 32,),
         (xa, residual if residual is not None else x, norm_w, w_gu, w_d, r, y.sums,
          clear if clear is not None else y.sums, cp.int32(0 if clear is None else clear.size),
          cp.int32(M), cp.int32(I), cp.float32(eps)),
         shared_mem=smem)
    if fixed:  # every block read all of x: the next fixed-sum producer clears it
        pool.read(x)
    return y, r


def kernel_defines(dtype_flag: int, H: int, mb: int, cols: int, has_res: bool,
                   x_fixed: bool = False) -> dict:
    """norm_mlp_kernel's defines; RAWENGINE_MLP_TRACE=1 builds the phase-stamping variant
    (tools/trace_mlp.py)."""
    return dict(DTYPE_BF16=dtype_flag, HIDDEN=H, MB=mb, C=cols, WARPS=WARPS,
                HAS_RES=int(has_res), X_FIXED=int(x_fixed), FIXED_REPLICAS=REPLICAS,
                MLP_TRACE=int(TRACE))


def to_dense(fs: FixedSum, pool: FixedSumPool):
    """The T array of fs (fixed_to_dtype_kernel), clearing fs's buffer."""
    sums = fs.sums
    y = cp.empty(fs.shape, fs.dtype)
    n = y.size
    if n % 8:
        raise ValueError(f"to_dense: {n} elements (a multiple of 8 expected)")
    kern = _kernel("mlp.cu", "fixed_to_dtype_kernel",
                   dict(DTYPE_BF16=_dtype_flag(y), FIXED_REPLICAS=REPLICAS))
    kern((cdiv(n // 8, 128),), (128,), (sums, y, cp.int32(n)))
    pool.cleared(fs)
    return y
