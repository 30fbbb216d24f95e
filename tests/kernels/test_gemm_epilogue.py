"""Paired output epilogues on an unfused x (pair_epilogue.cuh: gemv.cu PROLOGUE 0 + EPILOGUE 1 /
2, and flat_gemm.cu's stream kernel with EPILOGUE 1 / 2) and SiLU-and-mul with the norm prologue
(PROLOGUE 1 + EPILOGUE 2): gemm.linear_silu, gemm.norm_linear_silu, gemm.linear_rope, and the
CudaBackend ops that pick them (norm_linear_silu, norm_linear_rope on products too big for the
norm prologue) against the NumPy backend.

Pass rule (STYLE.md, as test_gemm_fused.py): max|out - ref| <= 2 * max|ref_lowp - ref| +
1e-5 * max|ref|; ref in float64 on the fp16/bf16 inputs, ref_lowp with the unfused ops'
rounding (gate_up / qkv rounded once, the activation rounded once). Outputs NaN-poisoned.
"""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
from test_gemm import lowp, poisoned, round_lowp
from test_gemm_fused import check, rmsnorm64, silu64

from kutil import has_gpu  # noqa: E402

if not has_gpu():
    pytest.skip("needs CuPy and a CUDA device", allow_module_level=True)
import cupy as cp  # noqa: E402

from rawengine.backends.cuda import gemm  # noqa: E402

pytestmark = pytest.mark.gpu
rng = np.random.default_rng(11)
EPS = 1e-5
# gemv configs: rows 2 (pairs in one warp), rows 1 (raised to 2), split-K fix-up, 16 warps
CFGS = [dict(), dict(rows=1, warps=8, split=1), dict(rows=4, warps=4, unroll=2, split=3),
        dict(rows=2, warps=16, unroll=4, split=1), dict(rows=1, warps=8, unroll=4, split=1, stages=4)]
# flat stream configs (pairs by fragment): the shipped kinds, fn 2 (two fragments a warp, a
# block past N), kt 64 with 16 warps, bm 16 / 32 for M > 8, pre 2, registers capped (occ 2) with
# an L2 prefetch
STREAM = [dict(kernel="stream", kt=128, fn=1, warps_n=1, warps_k=8, split=1),
          dict(kernel="stream", kt=64, fn=2, warps_n=1, warps_k=8, split=1),
          dict(kernel="stream", kt=64, fn=1, warps_n=1, warps_k=16, split=1, pre=2),
          dict(kernel="stream", kt=64, fn=2, warps_n=1, warps_k=8, split=1, bm=32),
          dict(kernel="stream", kt=128, fn=1, warps_n=1, warps_k=8, split=1, bm=16, occ=2,
               pf=2)]


def swiglu_ref(h64, w64, dtype):
    """(act, act_lowp): [g | u] = h @ w.T, act = silu(g) * u; lowp rounds g, u and act."""
    inter = w64.shape[0] // 2
    gu = h64 @ w64.T
    act = silu64(gu[:, :inter]) * gu[:, inter:]
    gl = round_lowp(gu, dtype)
    return act, round_lowp(silu64(gl[:, :inter]) * gl[:, inter:], dtype)


@pytest.mark.parametrize("cfg", range(len(CFGS)))
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("M,K,inter", [(1, 576, 1536), (3, 1000, 100), (8, 4096, 344),
                                       (2, 1001, 37)])
def test_linear_silu(M, K, inter, dtype, cfg):
    x, x64 = lowp(rng.standard_normal((M, K)), dtype)
    w, w64 = lowp(rng.standard_normal((2 * inter, K)) / np.sqrt(K), dtype)
    act = poisoned((M, inter), dtype)
    assert gemm.linear_silu(x, w, out=act, params=CFGS[cfg]) is act
    check(act, *swiglu_ref(x64, w64, dtype), dtype, "act")


@pytest.mark.parametrize("cfg", range(len(STREAM)))
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("M,K,inter", [(1, 576, 1536), (13, 1000, 344), (8, 4096, 344),
                                       (3, 1000, 72), (24, 2048, 1024)])
def test_linear_silu_stream(M, K, inter, dtype, cfg):
    """The stream kernel's SiLU-mul pairs: gate row i and up row i in one fragment (inter %
    8 == 0); K not a multiple of the warp tile; M past the 8-row x tile."""
    x, x64 = lowp(rng.standard_normal((M, K)), dtype)
    w, w64 = lowp(rng.standard_normal((2 * inter, K)) / np.sqrt(K), dtype)
    act = poisoned((M, inter), dtype)
    assert gemm.linear_silu(x, w, out=act, params=STREAM[cfg]) is act
    check(act, *swiglu_ref(x64, w64, dtype), dtype, "act")


def test_stream_pairs_need_whole_fragments():
    """Shapes the stream kernel cannot pair return None (the caller runs the unfused ops)."""
    def zeros(*shape):
        return cp.zeros(shape, cp.float16)

    assert gemm.linear_silu(zeros(2, 1000), zeros(200, 1000), params=STREAM[0]) is None  # 100 % 8
    assert gemm.linear_silu(zeros(2, 1001), zeros(192, 1001), params=STREAM[0]) is None  # K % 8
    assert gemm.linear_silu(zeros(2, 1000), zeros(192, 1000),
                            params=dict(STREAM[0], split=2)) is None  # split-K


@pytest.mark.parametrize("cfg", range(len(CFGS)))
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("M,K,has_res", [(1, 576, True), (3, 1000, False), (8, 4096, True)])
def test_norm_linear_silu(M, K, has_res, dtype, cfg):
    inter = 300
    x, x64 = lowp(rng.standard_normal((M, K)), dtype)
    res, res64 = lowp(rng.standard_normal((M, K)), dtype) if has_res else (None, 0.0)
    nw, nw64 = lowp(1 + 0.2 * rng.standard_normal(K), dtype)
    w, w64 = lowp(rng.standard_normal((2 * inter, K)) / np.sqrt(K), dtype)
    act, r_out = poisoned((M, inter), dtype), poisoned((M, K), dtype)
    got = gemm.norm_linear_silu(x, res, nw, EPS, w, out=act, r_out=r_out, params=CFGS[cfg])
    assert got is not None and got[0] is act
    r = x64 + res64
    ref, _ = swiglu_ref(rmsnorm64(r, nw64), w64, dtype)
    _, ref_lowp = swiglu_ref(round_lowp(rmsnorm64(round_lowp(r, dtype), nw64), dtype), w64, dtype)
    check(act, ref, ref_lowp, dtype, "act")
    if has_res:
        check(r_out, r, round_lowp(r, dtype), dtype, "r")


@pytest.mark.parametrize("cfg", range(len(CFGS) + len(STREAM)))
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("heads,D", [((9, 3), 64), ((32, 8), 128)])
@pytest.mark.parametrize("M", [1, 5, 13])
def test_linear_rope(M, heads, D, dtype, cfg):
    """linear_rope(h) == rope_kv_write(h @ w.T + b): q out, K/V into NaN-poisoned caches
    (slot -1 is a padding token whose K/V must not be written)."""
    from test_gemm_rope import NB, tables
    from test_gemm_rope import check as check_rope
    from test_gemm_rope import meta_for

    from rawengine.backends.numpy_backend import NumpyBackend

    Hq, Hkv = heads
    K, BS = 1000, 16
    N = (Hq + 2 * Hkv) * D
    h, h64 = lowp(rng.standard_normal((M, K)), dtype)
    w, w64 = lowp(rng.standard_normal((N, K)) / np.sqrt(K), dtype)
    b, b64 = lowp(rng.standard_normal(N), dtype)
    positions = rng.integers(0, 4096, M).astype(np.int32)
    slots = rng.choice(NB * BS, M, replace=False).astype(np.int32)
    if M > 1:
        slots[1] = -1
    cos, sin = tables(D)
    kc, vc = poisoned((NB, Hkv, BS, D), dtype), poisoned((NB, Hkv, BS, D), dtype)
    q = poisoned((M, Hq, D), dtype)
    got = gemm.linear_rope(h, w, b, cp.asarray(positions), cp.asarray(slots), cp.asarray(cos),
                           cp.asarray(sin), kc, vc, Hq, Hkv, D, out=q,
                           params=(CFGS + STREAM)[cfg])
    assert got is q
    ref_be, live = NumpyBackend(), slots >= 0
    outs = []
    for rnd in (lambda a: a, lambda a: round_lowp(a, dtype)):
        qkv = rnd(h64 @ w64.T + b64)
        k_ref, v_ref = np.full((NB, Hkv, BS, D), np.nan), np.full((NB, Hkv, BS, D), np.nan)
        c64, s64 = cos.astype(np.float64), sin.astype(np.float64)
        ref_be.rope_kv_write(qkv[live], meta_for(positions[live], slots[live]), c64, s64,
                             k_ref, v_ref, Hq, Hkv, D)
        q_ref = ref_be.rope_kv_write(qkv, meta_for(positions, np.zeros_like(slots)), c64, s64,
                                     np.zeros_like(k_ref), np.zeros_like(v_ref), Hq, Hkv, D)
        outs.append((rnd(q_ref), rnd(k_ref), rnd(v_ref)))
    for i, name in enumerate(("q", "k_cache", "v_cache")):
        check_rope((q, kc, vc)[i], outs[0][i], outs[1][i], dtype, name)


@contextlib.contextmanager
def user_table(tmp_path, monkeypatch, rules: dict):
    """gemm's tables with a user table of these rules (RAWENGINE_CACHE) for this GPU."""
    (tmp_path / "tuning").mkdir()
    (tmp_path / "tuning" / "t.json").write_text(json.dumps(dict(gpu=gemm.gpu_name(),
                                                                 shapes=rules)))
    monkeypatch.setenv("RAWENGINE_CACHE", str(tmp_path))
    gemm.reload_tables()
    try:
        yield
    finally:
        monkeypatch.undo()
        gemm.reload_tables()


def test_dispatch_rule(tmp_path, monkeypatch):
    """Epilogues ride on the table's choice however big the product (no serial prologue to pay
    for): the GEMV at M <= 8 (rows made even), the stream kernel at any M; never cuBLAS."""
    def zeros(*shape):
        return cp.zeros(shape, cp.float16)

    gemv_odd = dict(rows=1, warps=8, split=1)
    rules = {"4096x512": [dict(impl="gemv", params=gemv_odd, m_max=1),
                          dict(impl="flat", params=STREAM[1], m_max=16),
                          dict(impl="gemv", params=gemv_odd, m_max=24),
                          dict(impl="cublas", params={}, m_max=8192)]}
    with user_table(tmp_path, monkeypatch, rules):
        assert gemm._epilogue_choice(1, 4096, 512) == ("gemv", dict(gemv_odd, rows=2))
        assert gemm._epilogue_choice(16, 4096, 512) == ("flat", STREAM[1])
        assert gemm._epilogue_choice(20, 4096, 512) is None  # GEMV past FUSED_MAX_M
        assert gemm._epilogue_choice(32, 4096, 512) is None  # cuBLAS
        x, w = zeros(16, 512), zeros(4096, 512)
        assert gemm.linear_silu(x, w) is not None
        assert gemm.linear_silu(zeros(32, 512), w) is None
    assert gemm.linear_silu(zeros(1, 4096), zeros(28671, 4096)) is None  # odd N: no pairs


def test_odd_rows_table_choice_uses_its_paired_params(tmp_path, monkeypatch):
    """A table GEMV with odd rows serves paired epilogues with the rule's 'paired' params (the
    fastest even-rows config the tuner timed); given params, and rules without 'paired', get
    rows + 1."""
    paired = dict(rows=2, warps=4, unroll=8, split=1)
    odd = dict(rows=1, warps=16, unroll=2, split=1)
    rules = {"96x64": [dict(impl="gemv", params=odd, paired=paired, m_max=1)],
             "98x64": [dict(impl="gemv", params=odd, m_max=1)]}
    with user_table(tmp_path, monkeypatch, rules):
        assert gemm._epilogue_choice(1, 96, 64) == ("gemv", paired)
        assert gemm._epilogue_choice(1, 98, 64) == ("gemv", dict(odd, rows=2))
        assert gemm._even_rows(dict(rows=1, warps=8), 1, 96, 64) == dict(rows=2, warps=8)
        x = cp.asarray(rng.standard_normal((1, 64)), cp.float16)
        w = cp.asarray(rng.standard_normal((96, 64)) / 8, cp.float16)
        act = gemm.linear_silu(x, w)  # runs with the paired params
        gu = cp.asnumpy(x).astype(np.float64) @ cp.asnumpy(w).astype(np.float64).T  # [g | u]
        ref = silu64(gu[:, :48]) * gu[:, 48:]
        assert np.abs(cp.asnumpy(act).astype(np.float64) - ref).max() < 2e-2


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("M", [1, 12])
def test_backend_big_products_match_numpy(dtype, M):
    """CudaBackend.norm_linear_silu / norm_linear_rope on products too big for the norm
    prologue (rmsnorm + epilogue GEMV at M = 1, unfused at M = 12) vs the NumPy backend."""
    from kutil import rnd
    from test_gemm_rope import NB, meta_for, tables

    from rawengine.backends.cuda.backend import CudaBackend
    from rawengine.backends.numpy_backend import NumpyBackend

    be, ref_be = CudaBackend(dtype), NumpyBackend()
    K, inter, Hq, Hkv, D, BS = 4096, 4096, 32, 8, 128, 16
    for n in (2 * inter, (Hq + 2 * Hkv) * D):  # really the big-product path
        assert gemm._fused_params(1, n, K) is None
    x, res = (rnd(rng.standard_normal((M, K)), dtype) for _ in range(2))
    nw = rnd(1 + 0.2 * rng.standard_normal(K), dtype)
    w = rnd(rng.standard_normal((2 * inter, K)) / np.sqrt(K), dtype)
    for r_in in (None, res):
        act, r = be.norm_linear_silu(be.asarray(x), None if r_in is None else be.asarray(r_in),
                                     be.asarray(nw), EPS, be.asarray(w))
        ref_act, ref_r = ref_be.norm_linear_silu(x, r_in, nw, EPS, w)
        h_low = rnd(ref_be.rmsnorm(rnd(ref_r, dtype), nw, EPS), dtype)
        gu_low = rnd(ref_be.linear(h_low, w), dtype)
        low = rnd(ref_be.silu_mul(gu_low), dtype)
        tol = 2 * np.abs(low - ref_act).max() + 1e-5 * np.abs(ref_act).max()
        assert np.abs(be.to_numpy(act) - ref_act).max() <= tol
        assert np.allclose(be.to_numpy(r), ref_r, rtol=0, atol=2 * np.abs(rnd(ref_r, dtype) - ref_r).max() + 1e-6)
    w_qkv = rnd(rng.standard_normal(((Hq + 2 * Hkv) * D, K)) / np.sqrt(K), dtype)
    cos, sin = tables(D)
    positions = rng.integers(0, 4096, M).astype(np.int32)
    slots = rng.choice(NB * BS, M, replace=False).astype(np.int32)
    meta = meta_for(positions, slots)
    kc, vc = be.alloc_kv(NB, Hkv, BS, D)
    kr, vr = np.zeros((NB, Hkv, BS, D), np.float32), np.zeros((NB, Hkv, BS, D), np.float32)
    dmeta = meta_for(cp.asarray(positions), cp.asarray(slots))
    q, r = be.norm_linear_rope(be.asarray(x), be.asarray(res), be.asarray(nw), EPS,
                               be.asarray(w_qkv), None, dmeta, cp.asarray(cos), cp.asarray(sin),
                               kc, vc, Hq, Hkv, D)
    q_ref, _ = ref_be.norm_linear_rope(x, res, nw, EPS, w_qkv, None, meta, cos, sin, kr, vr,
                                       Hq, Hkv, D)
    tol = 0.02 * np.abs(q_ref).max()  # fp16/bf16 qkv rounding, checked exactly above
    assert np.abs(be.to_numpy(q) - q_ref).max() <= tol
    assert np.abs(be.to_numpy(kc) - kr).max() <= 0.02 * np.abs(kr).max()
