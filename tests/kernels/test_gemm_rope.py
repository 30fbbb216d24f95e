"""gemm.norm_linear_rope (gemv.cu PROLOGUE 1 + EPILOGUE 1: add + RMSNorm -> qkv GEMV -> RoPE +
paged K/V write in one launch) vs the NumPy backend's composition norm_linear + rope_kv_write.

Pass rule (STYLE.md, as test_gemm_fused.py): max|out - ref| <= 2 * max|ref_lowp - ref| +
1e-5 * max|ref|, where ref is the composition in float64 on the (already fp16/bf16) inputs and
ref_lowp the unfused ops' rounding: r and h rounded to the dtype, qkv rounded once, q/k rounded
after rotation. The q output and every KV cache slot are NaN-poisoned: slots that no token
writes (padding slot -1 included) must stay NaN.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_gemm import lowp, poisoned, round_lowp, to_f64

from kutil import has_gpu  # noqa: E402

if not has_gpu():
    pytest.skip("needs CuPy and a CUDA device", allow_module_level=True)
import cupy as cp  # noqa: E402

from rawengine.backends.base import StepMeta  # noqa: E402
from rawengine.backends.cuda import gemm  # noqa: E402
from rawengine.backends.numpy_backend import NumpyBackend  # noqa: E402

pytestmark = pytest.mark.gpu
rng = np.random.default_rng(7)
EPS = 1e-5
K = 576
MAX_POS = 4096
NB = 12
HEADS = [(9, 3), (32, 8)]  # SmolLM2-135M, Llama-3-8B GQA groups
CFGS = [dict(rows=2, warps=8, split=1), dict(rows=1, warps=4, split=1),  # rows 1 -> 2
        dict(rows=4, warps=4, unroll=2, split=3),  # split-K fix-up
        dict(rows=2, warps=16, unroll=2, split=1, stages=4)]  # cp.async weight ring


def tables(D):
    inv = 1.0 / 10000.0 ** (np.arange(0, D, 2) / D)
    ang = np.arange(MAX_POS)[:, None] * inv[None, :]
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


def meta_for(positions, slots):
    z = np.zeros(1, np.int32)
    return StepMeta(positions=positions, slot_mapping=slots, query_start=z, seq_lens=z,
                    block_tables=z[None], logits_indices=z, max_query_len=1, max_seq_len=1,
                    is_decode=True)


def make_case(M, D, Hq, Hkv, BS, dtype, has_bias, has_res=True):
    N = (Hq + 2 * Hkv) * D
    x, x64 = lowp(rng.standard_normal((M, K)), dtype)
    res, res64 = lowp(rng.standard_normal((M, K)), dtype) if has_res else (None, 0.0)
    nw, nw64 = lowp(1 + 0.2 * rng.standard_normal(K), dtype)
    w, w64 = lowp(rng.standard_normal((N, K)) / np.sqrt(K), dtype)
    b, b64 = lowp(rng.standard_normal(N), dtype) if has_bias else (None, None)
    positions = rng.integers(0, MAX_POS, M).astype(np.int32)  # ragged
    slots = rng.choice(NB * BS, M, replace=False).astype(np.int32)
    if M > 1:
        slots[rng.integers(M)] = -1  # padding token: q computed, K/V not written
    host = dict(x=x64, res=res64, nw=nw64, w=w64, b=b64, positions=positions, slots=slots)
    return (x, res, nw, w, b), host


def reference(host, D, Hq, Hkv, BS, dtype, cos, sin):
    """(q, k_cache, v_cache) in float64 exact and with the unfused ops' rounding."""
    ref_be = NumpyBackend()
    r = host["x"] + host["res"]
    bias = host["b"]

    def rms(v):
        return v / np.sqrt(np.mean(v * v, axis=-1, keepdims=True) + EPS) * host["nw"]

    out = []
    for lowp_chain in (False, True):
        rnd = (lambda a: round_lowp(a, dtype)) if lowp_chain else (lambda a: a)
        h = rnd(rms(rnd(r)))
        qkv = rnd(h @ host["w"].T + (0.0 if bias is None else bias))
        kc = np.full((NB, Hkv, BS, D), np.nan)
        vc = np.full((NB, Hkv, BS, D), np.nan)
        live = host["slots"] >= 0
        meta = meta_for(host["positions"][live], host["slots"][live])
        ref_be.rope_kv_write(qkv[live], meta, cos.astype(np.float64), sin.astype(np.float64),
                             kc, vc, Hq, Hkv, D)
        q = ref_be.rope_kv_write(qkv, meta_for(host["positions"], np.full_like(host["slots"], 0)),
                                 cos.astype(np.float64), sin.astype(np.float64),
                                 np.zeros_like(kc), np.zeros_like(vc), Hq, Hkv, D)
        out.append((rnd(q), rnd(kc), rnd(vc)))
    return out


def check(got, ref, ref_lowp, dtype, name):
    got = to_f64(got, dtype)
    assert got.shape == ref.shape, (name, got.shape, ref.shape)
    nan = np.isnan(ref)
    assert (np.isnan(got) == nan).all(), f"{name}: written / unwritten (NaN) mismatch"
    g, r, rl = got[~nan], ref[~nan], ref_lowp[~nan]
    err = np.abs(g - r).max()
    tol = 2 * np.abs(rl - r).max() + 1e-5 * np.abs(r).max()
    assert err <= tol, f"{name}: max err {err:.3e} > tol {tol:.3e}"


def run_case(M, D, Hq, Hkv, BS, dtype, has_bias, params, has_res=True):
    (x, res, nw, w, b), host = make_case(M, D, Hq, Hkv, BS, dtype, has_bias, has_res)
    cos, sin = tables(D)
    kc, vc = poisoned((NB, Hkv, BS, D), dtype), poisoned((NB, Hkv, BS, D), dtype)
    q = poisoned((M, Hq, D), dtype)
    r_out = poisoned((M, K), dtype)
    got = gemm.norm_linear_rope(x, res, nw, EPS, w, b, cp.asarray(host["positions"]),
                                cp.asarray(host["slots"]), cp.asarray(cos), cp.asarray(sin),
                                kc, vc, Hq, Hkv, D, out=q, r_out=r_out, params=params)
    assert got is not None and got[0] is q
    (q64, k64, v64), (ql, kl, vl) = reference(host, D, Hq, Hkv, BS, dtype, cos, sin)
    check(q, q64, ql, dtype, "q")
    check(kc, k64, kl, dtype, "k_cache")
    check(vc, v64, vl, dtype, "v_cache")
    if has_res:
        r = host["x"] + host["res"]
        check(r_out, r, round_lowp(r, dtype), dtype, "r")


@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_norm_linear_rope(dtype, D, heads):
    """M = 1..8; block size 16 and 1, bias on and off, alternating with M."""
    Hq, Hkv = heads
    for M in range(1, 9):
        run_case(M, D, Hq, Hkv, 1 if M % 3 == 0 else 16, dtype, has_bias=M % 2 == 0,
                 params={})


@pytest.mark.parametrize("cfg", range(len(CFGS)))
@pytest.mark.parametrize("has_bias", [False, True])
def test_norm_linear_rope_configs(cfg, has_bias):
    run_case(3, 64, 9, 3, 16, "bf16", has_bias, CFGS[cfg])
    run_case(5, 128, 32, 8, 1, "fp16", has_bias, CFGS[cfg], has_res=False)


def test_dispatch_rule():
    """Fused where norm_linear is; None (caller falls back) elsewhere."""
    def zeros(*shape, dt=cp.float16):
        return cp.zeros(shape, dt)

    cos = zeros(64, 32, dt=cp.float32)
    pos = zeros(1, dt=cp.int32)
    kc = zeros(4, 3, 16, 64)
    args = (None, zeros(576), EPS, zeros(960, 576), None, pos, pos, cos, cos, kc, zeros(4, 3, 16, 64),
            9, 3, 64)
    assert gemm.norm_linear_rope(zeros(1, 576), *args) is not None
    big = (None, zeros(576), EPS, zeros(960, 576), None, zeros(16, dt=cp.int32),
           zeros(16, dt=cp.int32), cos, cos, kc, zeros(4, 3, 16, 64), 9, 3, 64)
    assert gemm.norm_linear_rope(zeros(16, 576), *big) is None  # M > 8
    bad = list(args)
    bad[12] = 4  # heads do not match w
    assert gemm.norm_linear_rope(zeros(1, 576), *bad) is None


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("is_decode", [True, False])
def test_backend_matches_numpy(dtype, is_decode):
    """CudaBackend.norm_linear_rope (fused at decode, composition otherwise) against the NumPy
    backend's default composition, SmolLM2 shapes, Qwen2-style bias."""
    from kutil import rnd

    from rawengine.backends.cuda.backend import CudaBackend

    be, ref_be = CudaBackend(dtype), NumpyBackend()
    M, D, Hq, Hkv, BS = 4, 64, 9, 3, 16
    N = (Hq + 2 * Hkv) * D
    x, res = (rnd(rng.standard_normal((M, K)), dtype) for _ in range(2))
    nw = rnd(1 + 0.2 * rng.standard_normal(K), dtype)
    w = rnd(rng.standard_normal((N, K)) / 24, dtype)
    b = rnd(rng.standard_normal(N), dtype)
    cos, sin = tables(D)
    positions = np.array([5, 700, 31, 2], np.int32)
    # no padding slot here: the NumPy reference writes slot -1 into the last block (padding is
    # covered by the kernel tests above, whose reference skips slots < 0)
    slots = np.array([3, 40, 62, 17], np.int32)
    meta = meta_for(positions, slots)
    meta.is_decode = is_decode
    dmeta = meta_for(be.asarray(positions, dtype="int32"), be.asarray(slots, dtype="int32"))
    dmeta.is_decode = is_decode
    kc = be.asarray(np.zeros((NB, Hkv, BS, D), np.float32))
    vc = be.asarray(np.zeros((NB, Hkv, BS, D), np.float32))
    q, r = be.norm_linear_rope(be.asarray(x), be.asarray(res), be.asarray(nw), EPS, be.asarray(w),
                               be.asarray(b), dmeta, be.asarray(cos, dtype="float32"),
                               be.asarray(sin, dtype="float32"), kc, vc, Hq, Hkv, D)
    rkc, rvc = np.zeros((NB, Hkv, BS, D), np.float32), np.zeros((NB, Hkv, BS, D), np.float32)
    ref_q, ref_r = ref_be.norm_linear_rope(x, res, nw, EPS, w, b, meta, cos, sin, rkc, rvc,
                                           Hq, Hkv, D)
    # low-precision chain of the composition, for the tolerance
    r_low = rnd(ref_r, dtype)
    qkv_low = rnd(ref_be.linear(rnd(ref_be.rmsnorm(r_low, nw, EPS), dtype), w, b), dtype)
    lkc, lvc = np.zeros_like(rkc), np.zeros_like(rvc)
    low_q = rnd(ref_be.rope_kv_write(qkv_low, meta, cos, sin, lkc, lvc, Hq, Hkv, D), dtype)
    for got, ref, low in ((q, ref_q, low_q), (kc, rkc, rnd(lkc, dtype)), (vc, rvc, rnd(lvc, dtype))):
        tol = 2 * np.abs(low - ref).max() + 1e-5 * np.abs(ref).max()
        assert np.abs(be.to_numpy(got) - ref).max() <= tol
    assert np.abs(be.to_numpy(r) - ref_r).max() <= 2 * np.abs(r_low - ref_r).max() + 1e-6


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_graph_capture(dtype):
    """Captured once (split-K counters must reset between replays), replayed with new inputs,
    positions and slots written into the static buffers."""
    M, D, Hq, Hkv, BS = 3, 64, 9, 3, 16
    (x, res, nw, w, b), host = make_case(M, D, Hq, Hkv, BS, dtype, True)
    cos, sin = tables(D)
    cos_d, sin_d = cp.asarray(cos), cp.asarray(sin)
    pos_d, slot_d = cp.asarray(host["positions"]), cp.asarray(host["slots"])
    kc, vc = poisoned((NB, Hkv, BS, D), dtype), poisoned((NB, Hkv, BS, D), dtype)
    q, r_out = poisoned((M, Hq, D), dtype), poisoned((M, K), dtype)
    params = dict(rows=2, warps=4, split=3)

    def step():
        gemm.norm_linear_rope(x, res, nw, EPS, w, b, pos_d, slot_d, cos_d, sin_d, kc, vc,
                              Hq, Hkv, D, out=q, r_out=r_out, params=params)

    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        step()  # compile + scratch outside capture
        stream.synchronize()
        stream.begin_capture()
        step()
        graph = stream.end_capture()
    for _ in range(2):
        (x2, res2, _, _, _), new = make_case(M, D, Hq, Hkv, BS, dtype, True)
        x[...], res[...] = x2, res2
        pos_d[...] = cp.asarray(new["positions"])
        slot_d[...] = cp.asarray(new["slots"])
        new.update(nw=host["nw"], w=host["w"], b=host["b"])
        for a in (q, r_out, kc, vc):
            a[...] = poisoned(a.shape, dtype)
        with stream:
            for _ in range(3):
                graph.launch(stream)
            stream.synchronize()
        (q64, k64, v64), (ql, kl, vl) = reference(new, D, Hq, Hkv, BS, dtype, cos, sin)
        check(q, q64, ql, dtype, "q")
        check(kc, k64, kl, dtype, "k_cache")
        check(vc, v64, vl, dtype, "v_cache")
