"""The fused decode MLP (kernels_cu/mlp.cu, rawengine/backends/cuda/mlp.py) and the readers of
its fixed-point output (gemv.cu PRO_FIXED, norm.cu FIXED_IN, to_dense; fixed_sum.py's clearing).

Pass rule (STYLE.md, as test_gemm_fused.py): max|out - ref| <= 2 * max|ref_lowp - ref| +
1e-5 * max|ref|; ref in float64 on the fp16/bf16 inputs, ref_lowp with the unfused ops'
rounding (r, h, g, u, act and y each rounded once). Outputs NaN-poisoned where the kernel writes
them; the fixed sums start at zero by contract, so their readers are checked instead: a reader
of the fixed sums must give bit for bit what the same reader gives on to_dense's array.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_gemm import lowp, poisoned, round_lowp, to_f64
from test_gemm_fused import check, rmsnorm64, silu64

from kutil import has_gpu  # noqa: E402

if not has_gpu():
    pytest.skip("needs CuPy and a CUDA device", allow_module_level=True)
import cupy as cp  # noqa: E402

from rawengine.backends.cuda import gemm, mlp  # noqa: E402
from rawengine.backends.cuda.fixed_sum import FixedSum, FixedSumPool  # noqa: E402

pytestmark = pytest.mark.gpu
rng = np.random.default_rng(23)
EPS = 1e-5


def assert_pool_zero(pool: FixedSumPool) -> None:
    """Every buffer of the pool is marked zero and holds zeros (a step's end state)."""
    for bufs in pool._bufs.values():
        for b in bufs:
            assert b.state == "zero" and not cp.any(b.sums)


def mlp_case(M, H, I, dtype, has_res, down_scale=1.0):
    x, x64 = lowp(rng.standard_normal((M, H)), dtype)
    res, res64 = lowp(rng.standard_normal((M, H)), dtype) if has_res else (None, 0.0)
    nw, nw64 = lowp(1 + 0.2 * rng.standard_normal(H), dtype)
    wgu, wgu64 = lowp(rng.standard_normal((2 * I, H)) / np.sqrt(H), dtype)
    wd, wd64 = lowp(down_scale * rng.standard_normal((H, I)) / np.sqrt(I), dtype)
    r = x64 + res64

    def mlp64(r, rnd):
        gu = rnd(rnd(rmsnorm64(rnd(r), nw64)) @ wgu64.T)
        return rnd(rnd(silu64(gu[:, :I]) * gu[:, I:]) @ wd64.T)

    ref = mlp64(r, lambda a: a)
    ref_lowp = mlp64(r, lambda a: round_lowp(a, dtype))
    return (x, res, nw, wgu, wd), (r, ref, ref_lowp)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("M,H,I,cols,has_res", [
    (1, 576, 1536, 8, True),    # SmolLM2-135M
    (1, 576, 1536, 16, False),
    (3, 1000, 1000, 16, True),  # the last block owns 8 of its 16 columns
    (8, 64, 8, 8, True),        # one block
    (5, 1024, 344, 24, True),   # MB 8 rows with 5 live; the last block owns 8 of 24 columns
    (2, 960, 2560, 8, False),   # SmolLM2-360M
])
def test_norm_mlp(M, H, I, cols, has_res, dtype):
    (x, res, nw, wgu, wd), (r, ref, ref_lowp) = mlp_case(M, H, I, dtype, has_res)
    pool = FixedSumPool()
    r_out = poisoned((M, H), dtype)
    y, r_got = mlp.norm_mlp(x, res, nw, EPS, wgu, wd, pool, r_out=r_out, force=True, cols=cols)
    assert isinstance(y, FixedSum) and y.shape == (M, H)
    sums = y.sums.copy()
    check(mlp.to_dense(y, pool), ref, ref_lowp, dtype, "y")
    if has_res:
        assert r_got is r_out
        check(r_out, r, round_lowp(r, dtype), dtype, "r")
    else:
        assert r_got is x
    # deterministic: the same launch gives the same sums (to_dense cleared the buffer, which
    # the pool hands out again)
    y2, _ = mlp.norm_mlp(x, res, nw, EPS, wgu, wd, pool, force=True, cols=cols)
    assert cp.array_equal(y2.sums, sums)


@pytest.mark.parametrize("dtype,down_scale", [("fp16", 2000.0), ("bf16", 1e6)])
def test_large_values(dtype, down_scale):
    """Outputs of order 1e3 (fp16) and 1e6 (bf16): inside the fixed-point range, and as
    accurate."""
    (x, res, nw, wgu, wd), (_, ref, ref_lowp) = mlp_case(2, 576, 1536, dtype, True, down_scale)
    pool = FixedSumPool()
    y, _ = mlp.norm_mlp(x, res, nw, EPS, wgu, wd, pool, force=True)
    got = mlp.to_dense(y, pool)
    assert np.abs(to_f64(got, dtype)).max() > 0.1 * down_scale
    check(got, ref, ref_lowp, dtype, "y")


def test_rule():
    """The size rule: SmolLM2's MLP is fused, Llama-3-8B-sized ones are not, nor M > MAX_M, nor
    an intermediate size the 16-byte pieces do not divide."""
    pool = FixedSumPool()

    def fused(M, H, I):
        x, nw = cp.zeros((M, H), cp.float16), cp.ones(H, cp.float16)
        w_gu, w_d = cp.zeros((2 * I, H), cp.float16), cp.zeros((H, I), cp.float16)
        return mlp.norm_mlp(x, None, nw, EPS, w_gu, w_d, pool) is not None

    assert fused(1, 576, 1536) and fused(mlp.MAX_M, 576, 1536)
    assert not fused(mlp.MAX_M + 1, 576, 1536)
    assert not fused(1, 4096, 2048)  # 48 MB of weights: bandwidth bound, two launches
    assert not fused(1, 576, 100)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("M", [1, 3])
def test_readers_match_dense(M, dtype):
    """norm_linear (PRO_FIXED prologue) and CudaBackend.rmsnorm (FIXED_IN) on the fixed sums
    give bit for bit what they give on to_dense of the same sums."""
    from rawengine.backends.cuda.backend import CudaBackend

    be = CudaBackend("bfloat16" if dtype == "bf16" else "float16")
    H, I, N = 576, 1536, 960
    (x, res, nw, wgu, wd), _ = mlp_case(M, H, I, dtype, True)
    w, _ = lowp(rng.standard_normal((N, H)) / np.sqrt(H), dtype)
    res2, _ = lowp(rng.standard_normal((M, H)), dtype)

    def run(dense: bool):
        y, _ = mlp.norm_mlp(x, res, nw, EPS, wgu, wd, be._fixed)
        assert isinstance(y, FixedSum)
        a = be._dense(y) if dense else y
        out = gemm.norm_linear(a, res2, nw, EPS, w, params=dict(rows=2, warps=8, split=1))
        y2, _ = mlp.norm_mlp(x, res, nw, EPS, wgu, wd, be._fixed)  # clears y's buffer if read
        b = be._dense(y2) if dense else y2
        h, r = be.rmsnorm(b, nw, EPS, res2)
        return [cp.asnumpy(a) for a in (*out, h, r)]

    for got, want in zip(run(False), run(True)):
        np.testing.assert_array_equal(got, want)
    # every buffer is zero again: the second norm_mlp cleared the first, rmsnorm the second
    assert_pool_zero(be._fixed)


def test_stale_handle_raises():
    pool = FixedSumPool()
    (x, res, nw, wgu, wd), _ = mlp_case(1, 64, 16, "fp16", True)
    y, _ = mlp.norm_mlp(x, res, nw, EPS, wgu, wd, pool, force=True)
    mlp.to_dense(y, pool)
    with pytest.raises(RuntimeError, match="cleared"):
        _ = y.sums


def test_graph_replay_matches_eager():
    """A captured chain of three layers' MLP + reader replays to the eager result, replay after
    replay (a buffer left uncleared would add the previous replay's sums in)."""
    from rawengine.backends.cuda.backend import CudaBackend

    be = CudaBackend("float16")
    H, I, N, M = 576, 1536, 960, 1
    (x, res, nw, wgu, wd), _ = mlp_case(M, H, I, "fp16", True)
    w, _ = lowp(rng.standard_normal((N, H)) / np.sqrt(H), "fp16")

    def chain():
        h, r = x, res
        for _ in range(3):
            y, r = be.norm_mlp(h, r, nw, EPS, wgu, wd)
            assert isinstance(y, FixedSum)
            q, r = gemm.norm_linear(y, r, nw, EPS, w, params=dict(rows=2, warps=8, split=1))
            h = cp.ascontiguousarray(q[:, :H])
        y, r = be.norm_mlp(h, r, nw, EPS, wgu, wd)
        out, _ = be.rmsnorm(y, nw, EPS, r)
        return out

    eager = cp.asnumpy(chain())
    replay = be.graph(chain)
    for _ in range(3):
        np.testing.assert_array_equal(cp.asnumpy(replay()), eager)
