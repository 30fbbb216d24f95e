"""Fused GEMV prologues (gemm.norm_linear, gemm.silu_mul_linear) vs a float64 NumPy reference.

Pass rule (STYLE.md): max|out - ref| <= 2 * max|ref_lowp - ref| + 1e-5 * max|ref|, where ref is
the exact computation on the (already fp16/bf16) inputs and ref_lowp the unfused ops' rounding:
the new residual r and the activation h (rmsnorm output, silu(g) * u) rounded to the dtype, and
the output rounded once. Outputs are NaN-poisoned before each launch.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_gemm import lowp, poisoned, round_lowp, to_f64

from kutil import has_gpu  # noqa: E402

if not has_gpu():
    pytest.skip("needs CuPy and a CUDA device", allow_module_level=True)
import cupy as cp  # noqa: E402

from rawengine.backends.cuda import gemm  # noqa: E402

pytestmark = pytest.mark.gpu
rng = np.random.default_rng(1)
EPS = 1e-5
N = 200
MS = [1, 3, 8]
KS = [576, 1000, 4096, 1536, 1001]  # 1001: scalar (VEC=1) staging
DTYPES = ["fp16", "bf16"]
# gemv configs: default (split-K picked from the shape), split 1, forced split-K
CFGS = [dict(), dict(rows=1, warps=8, split=1), dict(rows=4, warps=4, unroll=2, split=3),
        dict(rows=2, warps=8, unroll=2, split=2, stages=3)]


def check(out, ref, ref_lowp, dtype, name=""):
    got = to_f64(out, dtype)
    assert got.shape == ref.shape, (name, got.shape, ref.shape)
    assert not np.isnan(got).any(), f"{name}: unwritten (NaN) outputs"
    err = np.abs(got - ref).max()
    tol = 2 * np.abs(ref_lowp - ref).max() + 1e-5 * np.abs(ref).max()
    assert err <= tol, f"{name}: max err {err:.3e} > tol {tol:.3e}"


def rmsnorm64(r, nw):
    return r / np.sqrt(np.mean(r * r, axis=-1, keepdims=True) + EPS) * nw


def norm_case(M, K, dtype, has_res, has_bias):
    x, x64 = lowp(rng.standard_normal((M, K)), dtype)
    res, res64 = lowp(rng.standard_normal((M, K)), dtype) if has_res else (None, 0.0)
    nw, nw64 = lowp(1 + 0.2 * rng.standard_normal(K), dtype)
    w, w64 = lowp(rng.standard_normal((N, K)) / np.sqrt(K), dtype)
    b, b64 = lowp(rng.standard_normal(N), dtype) if has_bias else (None, 0.0)
    r = x64 + res64
    ref = rmsnorm64(r, nw64) @ w64.T + b64
    h_low = round_lowp(rmsnorm64(round_lowp(r, dtype), nw64), dtype)
    ref_lowp = round_lowp(h_low @ w64.T + b64, dtype)
    return (x, res, nw, w, b), (r, ref, ref_lowp)


def run_norm(M, K, dtype, has_res, has_bias, params):
    (x, res, nw, w, b), (r, ref, ref_lowp) = norm_case(M, K, dtype, has_res, has_bias)
    y = poisoned((M, N), dtype)
    r_out = poisoned((M, K), dtype)
    got = gemm.norm_linear(x, res, nw, EPS, w, b, out=y, r_out=r_out, params=params)
    assert got is not None and got[0] is y
    check(y, ref, ref_lowp, dtype, "y")
    if has_res:
        assert got[1] is r_out
        check(r_out, r, round_lowp(r, dtype), dtype, "r")
    else:
        assert got[1] is x


@pytest.mark.parametrize("has_res", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", KS)
@pytest.mark.parametrize("M", MS)
def test_norm_linear(M, K, dtype, has_res):
    run_norm(M, K, dtype, has_res, has_bias=has_res, params={})


@pytest.mark.parametrize("cfg", range(1, len(CFGS)))
@pytest.mark.parametrize("K", [576, 4096])
def test_norm_linear_configs(cfg, K):
    run_norm(3, K, "fp16", True, True, CFGS[cfg])


def silu64(g):
    return g / (1 + np.exp(-g))


def silu_case(M, K, dtype, has_bias):
    gu, gu64 = lowp(2 * rng.standard_normal((M, 2 * K)), dtype)
    w, w64 = lowp(rng.standard_normal((N, K)) / np.sqrt(K), dtype)
    b, b64 = lowp(rng.standard_normal(N), dtype) if has_bias else (None, 0.0)
    a = silu64(gu64[:, :K]) * gu64[:, K:]
    ref = a @ w64.T + b64
    ref_lowp = round_lowp(round_lowp(a, dtype) @ w64.T + b64, dtype)
    return (gu, w, b), (ref, ref_lowp)


def run_silu(M, K, dtype, has_bias, params):
    (gu, w, b), (ref, ref_lowp) = silu_case(M, K, dtype, has_bias)
    y = poisoned((M, N), dtype)
    assert gemm.silu_mul_linear(gu, w, b, out=y, params=params) is y
    check(y, ref, ref_lowp, dtype, "y")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", KS)
@pytest.mark.parametrize("M", MS)
def test_silu_mul_linear(M, K, dtype):
    run_silu(M, K, dtype, has_bias=M == 3, params={})


@pytest.mark.parametrize("cfg", range(1, len(CFGS)))
def test_silu_mul_linear_configs(cfg):
    run_silu(3, 1536, "bf16", True, CFGS[cfg])


def test_fused_vs_unfused():
    """Same numbers as the unfused kernels (rmsnorm_kernel / silu_mul_kernel + linear) up to
    the order of the fp32 sums: within one output ulp on SmolLM2 shapes at M = 1."""
    from rawengine.backends.cuda.backend import CudaBackend

    be = CudaBackend("float16")
    x, res = (cp.asarray(rng.standard_normal((1, 576)).astype(np.float16)) for _ in range(2))
    nw = cp.asarray((1 + 0.2 * rng.standard_normal(576)).astype(np.float16))
    w_qkv = cp.asarray((rng.standard_normal((960, 576)) / 24).astype(np.float16))
    w_down = cp.asarray((rng.standard_normal((576, 1536)) / 40).astype(np.float16))
    gu = cp.asarray(rng.standard_normal((1, 3072)).astype(np.float16))
    y, r = gemm.norm_linear(x, res, nw, EPS, w_qkv)  # M = 1: fused by the default rule
    h, r_ref = be.rmsnorm(x, nw, EPS, res)
    assert bool((r == r_ref).all())
    y_ref = gemm.linear(h, w_qkv)
    assert float(cp.abs(y - y_ref).max()) <= 2 * float(cp.abs(y_ref).max()) * 2.0**-11
    z = gemm.silu_mul_linear(gu, w_down)
    z_ref = gemm.linear(be.silu_mul(gu), w_down)
    assert float(cp.abs(z - z_ref).max()) <= 2 * float(cp.abs(z_ref).max()) * 2.0**-11


def test_dispatch_rule():
    """Fused where decode is launch bound; None (caller falls back) for M > 8 and for big
    products, where the prologue costs more than the launch it saves."""
    def zeros(*shape):
        return cp.zeros(shape, cp.float16)

    assert gemm.norm_linear(zeros(1, 576), None, zeros(576), EPS, zeros(960, 576)) is not None
    assert gemm.silu_mul_linear(zeros(1, 3072), zeros(576, 1536)) is not None
    assert gemm.norm_linear(zeros(16, 576), None, zeros(576), EPS, zeros(960, 576)) is None
    assert gemm.silu_mul_linear(zeros(16, 3072), zeros(576, 1536), params={}) is None
    assert gemm._fused_params(8, 4096, 14336) is None  # Llama-3-8B down at M = 8: flat
    assert gemm._fused_params(1, 28672, 4096) is None  # gate_up at M = 1: fusion measured slower
    assert gemm.norm_linear(zeros(1, 576), None, zeros(576), EPS,
                            cp.zeros((960, 576), cp.float32)) is None  # dtype mismatch


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("M", [1, 12])
def test_backend_matches_numpy(dtype, M):
    """CudaBackend.norm_linear / silu_mul_linear (fused at M = 1, unfused fallback at 12)
    against the NumPy backend's defaults (the unfused ops in float32)."""
    from kutil import rnd

    from rawengine.backends.cuda.backend import CudaBackend
    from rawengine.backends.numpy_backend import NumpyBackend

    be, ref_be = CudaBackend(dtype), NumpyBackend()
    x, res = (rnd(rng.standard_normal((M, 576)), dtype) for _ in range(2))
    nw = rnd(1 + 0.2 * rng.standard_normal(576), dtype)
    w = rnd(rng.standard_normal((3072, 576)) / 24, dtype)
    w_down = rnd(rng.standard_normal((576, 1536)) / 40, dtype)
    for r_in in (None, res):
        y, r = be.norm_linear(be.asarray(x), None if r_in is None else be.asarray(r_in),
                              be.asarray(nw), EPS, be.asarray(w))
        ref_y, ref_r = ref_be.norm_linear(x, r_in, nw, EPS, w)
        r_low = rnd(ref_r, dtype)
        low_y = rnd(ref_be.linear(rnd(ref_be.rmsnorm(r_low, nw, EPS), dtype), w), dtype)
        tol = 2 * np.abs(low_y - ref_y).max() + 1e-5 * np.abs(ref_y).max()
        assert np.abs(be.to_numpy(y) - ref_y).max() <= tol
        assert np.abs(be.to_numpy(r) - ref_r).max() <= 2 * np.abs(r_low - ref_r).max() + 1e-6
    gu = rnd(rng.standard_normal((M, 3072)), dtype)
    z = be.silu_mul_linear(be.asarray(gu), be.asarray(w_down))
    ref_z = ref_be.silu_mul_linear(gu, w_down)
    low_z = rnd(ref_be.linear(rnd(ref_be.silu_mul(gu), dtype), w_down), dtype)
    tol = 2 * np.abs(low_z - ref_z).max() + 1e-5 * np.abs(ref_z).max()
    assert np.abs(be.to_numpy(z) - ref_z).max() <= tol


@pytest.mark.parametrize("dtype", DTYPES)
def test_graph_capture(dtype):
    """Both fused ops captured in one graph (split-K counters must reset between replays);
    replays recompute from the static input buffers."""
    M, K = 2, 1536
    (x, res, nw, w, b), _ = norm_case(M, K, dtype, True, True)
    (gu, w2, _), _ = silu_case(M, K, dtype, False)
    y, r_out = poisoned((M, N), dtype), poisoned((M, K), dtype)
    z = poisoned((M, N), dtype)
    params = dict(split=3)

    def step():
        gemm.norm_linear(x, res, nw, EPS, w, b, out=y, r_out=r_out, params=params)
        gemm.silu_mul_linear(gu, w2, out=z, params=params)

    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        step()  # compile + scratch outside capture
        stream.synchronize()
        stream.begin_capture()
        step()
        graph = stream.end_capture()
    for _ in range(2):
        new = [lowp(rng.standard_normal(a.shape) * s, dtype) for a, s in ((x, 1), (res, 1), (gu, 2))]
        for dst, (src, _) in zip((x, res, gu), new):
            dst[...] = src
        for a in (y, r_out, z):
            a[...] = poisoned(a.shape, dtype)
        with stream:
            for _ in range(3):
                graph.launch(stream)
            stream.synchronize()
        x64, res64, gu64 = (h for _, h in new)
        nw64, w64, w264 = (to_f64(a, dtype) for a in (nw, w, w2))
        b64 = to_f64(b, dtype)
        r = x64 + res64
        ref = rmsnorm64(r, nw64) @ w64.T + b64
        ref_lowp = round_lowp(round_lowp(rmsnorm64(round_lowp(r, dtype), nw64), dtype) @ w64.T
                              + b64, dtype)
        check(y, ref, ref_lowp, dtype, "y")
        check(r_out, r, round_lowp(r, dtype), dtype, "r")
        a = silu64(gu64[:, :K]) * gu64[:, K:]
        check(z, a @ w264.T, round_lowp(round_lowp(a, dtype) @ w264.T, dtype), dtype, "z")

