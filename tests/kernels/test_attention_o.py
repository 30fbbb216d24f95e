"""Decode attention + o_proj in one launch (decode_attention.cu O_PROJ, attention_o.py), the
fused MLP reading its fixed-point output (mlp.cu X_FIXED), the final rmsnorm clearing the last
buffer (fixed_sum.py pending()), and the short-context decode graph (graphs.py).

Pass rule (STYLE.md, as test_decode_attention.py / test_gemm_fused.py): max|out - ref| <=
2 * max|ref_lowp - ref| + floor; ref in float64 on the fp16/bf16 inputs, ref_lowp with the
unfused ops' rounding (scores, probabilities and the attention output rounded to the dtype,
then o_proj's output rounded once). The fixed sums start at zero by contract (no NaN poisoning
possible there); they are read back through to_dense, and a reader must give bit for bit what it
gives on to_dense's array.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_decode_attention import FLOOR, Case, LateWriter, from_device, round_to, to_device
from test_gemm import lowp, round_lowp

from kutil import has_gpu  # noqa: E402

if not has_gpu():
    pytest.skip("needs CuPy and a CUDA device", allow_module_level=True)
import cupy as cp  # noqa: E402

from rawengine.backends.cuda import attention_o as ao  # noqa: E402
from rawengine.backends.cuda import gemm, mlp  # noqa: E402
from rawengine.backends.cuda.fixed_sum import FixedSum, FixedSumPool  # noqa: E402
from test_mlp_fused import assert_pool_zero  # noqa: E402

pytestmark = pytest.mark.gpu
EPS = 1e-5


def needs_sm90():
    if int(cp.cuda.Device().compute_capability) < 90:
        pytest.skip("attention_o needs sm_90 (cp.async.bulk)")


def make_wo(rng, hidden, hq, d, dtype):
    w = rng.standard_normal((hidden, hq * d)) / np.sqrt(hq * d)
    w = round_to(w, dtype).astype(np.float64)
    return to_device(w, dtype), w


def reference(case, scale, w64, dtype):
    """(ref, ref_lowp) of o_proj(attention) [B, H]."""
    b = len(case.lens)
    a = case.reference(scale).reshape(b, -1)
    a_lowp = case.reference(scale, lowp=True).reshape(b, -1)
    return a @ w64.T, round_lowp(a_lowp @ w64.T, dtype)


def check(got, ref, ref_lowp, floor, name=""):
    assert np.isfinite(got).all(), f"{name}: NaN or unwritten output"
    err = np.abs(got - ref).max()
    tol = 2 * np.abs(ref_lowp - ref).max() + floor
    assert err <= tol, f"{name}: max err {err:.3e} > tol {tol:.3e}"


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("d,hq,hkv,hidden,rows,bs,lens", [
    (64, 9, 3, 576, 48, 16, [1, 97, 384]),            # SmolLM2-135M
    (64, 9, 3, 200, 48, 16, [600]),                     # past the 512 keys the rings hold;
                                                        # the last row block owns 8 of 48 rows
    (128, 32, 8, 1000, 40, 16, [7, 1025, 33]),          # G 4, D 128
    (64, 8, 8, 72, 16, 64, [5, 300]),                   # MHA (G 1), page size 64
    (128, 16, 2, 136, 16, 16, [129, 2]),                # G 8 (rows 16: shared memory)
])
@pytest.mark.parametrize("impl", ["bulk", "mma"])
def test_matches_reference(d, hq, hkv, hidden, rows, bs, lens, dtype, impl, monkeypatch):
    needs_sm90()
    monkeypatch.setitem(ao.OVERRIDE, "impl", impl)
    rng = np.random.default_rng(5)
    case = Case(rng, lens, hq, hkv, d, bs, dtype)
    w_dev, w64 = make_wo(rng, hidden, hq, d, dtype)
    scale = d ** -0.5
    pool = FixedSumPool()
    y = ao.attention_o(case.q_dev, case.k_dev, case.v_dev, case.tables, case.seq_lens, scale,
                       w_dev, pool, max_seq_len=max(lens), force=True, rows=rows)
    assert isinstance(y, FixedSum) and y.shape == (len(lens), hidden)
    sums = y.sums.copy()
    got = from_device(mlp.to_dense(y, pool), dtype).astype(np.float64)
    ref, ref_lowp = reference(case, scale, w64, dtype)
    check(got, ref, ref_lowp, FLOOR[dtype], f"{dtype} D{d} {hq}/{hkv} H{hidden}")
    # deterministic: the same launch gives the same sums (to_dense cleared the buffer)
    y2 = ao.attention_o(case.q_dev, case.k_dev, case.v_dev, case.tables, case.seq_lens, scale,
                        w_dev, pool, max_seq_len=max(lens), force=True, rows=rows)
    assert cp.array_equal(y2.sums, sums)


def test_rule():
    """SmolLM2's shape runs fused at batch 1 and short capacities; not past MAX_LEN, not when
    the blocks exceed one wave, not for GQA groups over 8."""
    needs_sm90()
    pool = FixedSumPool()

    def fused(b, hq, hkv, d, hidden, max_len):
        q = cp.zeros((b, hq, d), cp.float16)
        k = cp.zeros((4, hkv, 16, d), cp.float16)
        w = cp.zeros((hidden, hq * d), cp.float16)
        t, n = cp.zeros((b, 4), cp.int32), cp.ones(b, cp.int32)
        y = ao.attention_o(q, k, k, t, n, 0.1, w, pool, max_seq_len=max_len)
        if y is not None:
            mlp.to_dense(y, pool)
        return y is not None

    assert fused(1, 9, 3, 64, 576, ao.MAX_LEN)
    assert not fused(1, 9, 3, 64, 576, ao.MAX_LEN + 1)
    assert not fused(1, 32, 8, 128, 4096, 256)  # 86 row blocks x 8 KV heads: several waves
    assert not fused(1, 32, 2, 64, 576, 256)    # G 16
    assert ao.applies(9, 3, 64, 576, 1) and not ao.applies(9, 3, 64, 576, 64)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_mlp_reads_fixed_x_like_dense(dtype):
    """norm_mlp on attention_o's fixed sums gives bit for bit what it gives on to_dense of the
    same sums (both round x to the dtype first), and leaves the x buffer for the next launch that
    takes one to clear."""
    needs_sm90()
    from rawengine.backends.cuda.backend import CudaBackend

    be = CudaBackend("bfloat16" if dtype == "bf16" else "float16")
    rng = np.random.default_rng(8)
    H, I = 576, 1536
    case = Case(rng, [1, 130], 9, 3, 64, 16, dtype)
    w_dev, _ = make_wo(rng, H, 9, 64, dtype)
    res, _ = lowp(rng.standard_normal((2, H)), dtype)
    nw, _ = lowp(1 + 0.2 * rng.standard_normal(H), dtype)
    wgu, _ = lowp(rng.standard_normal((2 * I, H)) / np.sqrt(H), dtype)
    wd, _ = lowp(rng.standard_normal((H, I)) / np.sqrt(I), dtype)

    def run(dense):
        y = ao.attention_o(case.q_dev, case.k_dev, case.v_dev, case.tables, case.seq_lens,
                           0.125, w_dev, be._fixed, max_seq_len=130)
        assert isinstance(y, FixedSum)
        x = be._dense(y) if dense else y
        z, r = be.norm_mlp(x, res, nw, EPS, wgu, wd)
        assert isinstance(z, FixedSum)
        h, r2 = be.rmsnorm(z, nw, EPS, r)  # FIXED_IN; also clears y's buffer when it was read
        return [cp.asnumpy(a) for a in (r, h, r2)]

    for got, want in zip(run(False), run(True)):
        np.testing.assert_array_equal(got, want)
    assert_pool_zero(be._fixed)


def test_graph_replay_matches_eager():
    """Three layers of attention_o -> fused MLP -> qkv GEMV (PRO_FIXED), then the final
    rmsnorm, captured and replayed: equal to eager replay after replay, every buffer zero at the
    end (a buffer left uncleared would add the previous replay's sums in)."""
    needs_sm90()
    from rawengine.backends.cuda.backend import CudaBackend

    be = CudaBackend("float16")
    rng = np.random.default_rng(9)
    H, I = 576, 1536
    case = Case(rng, [200], 9, 3, 64, 16, "fp16")
    w_dev, _ = make_wo(rng, H, 9, 64, "fp16")
    res, _ = lowp(rng.standard_normal((1, H)), "fp16")
    nw, _ = lowp(1 + 0.2 * rng.standard_normal(H), "fp16")
    wgu, _ = lowp(rng.standard_normal((2 * I, H)) / np.sqrt(H), "fp16")
    wd, _ = lowp(rng.standard_normal((H, I)) / np.sqrt(I), "fp16")
    wqkv, _ = lowp(rng.standard_normal((960, H)) / np.sqrt(H), "fp16")

    def chain():
        r = res
        for _ in range(3):
            y = ao.attention_o(case.q_dev, case.k_dev, case.v_dev, case.tables, case.seq_lens,
                               0.125, w_dev, be._fixed, max_seq_len=200)
            z, r = be.norm_mlp(y, r, nw, EPS, wgu, wd)
            _, r = gemm.norm_linear(z, r, nw, EPS, wqkv, params=dict(rows=2, warps=8, split=1))
        y = ao.attention_o(case.q_dev, case.k_dev, case.v_dev, case.tables, case.seq_lens,
                           0.125, w_dev, be._fixed, max_seq_len=200)
        z, r = be.norm_mlp(y, r, nw, EPS, wgu, wd)
        out, _ = be.rmsnorm(z, nw, EPS, r)
        return out

    eager = cp.asnumpy(chain())
    for bufs in be._fixed._bufs.values():
        assert all(b.state == "zero" for b in bufs)
    replay = be.graph(chain)
    for _ in range(3):
        np.testing.assert_array_equal(cp.asnumpy(replay()), eager)
        for bufs in be._fixed._bufs.values():
            assert all(not cp.any(b.sums) for b in bufs)


@pytest.mark.parametrize("impl", ["bulk", "mma"])
@pytest.mark.parametrize("d,hq,hkv", [(64, 9, 3), (128, 32, 8)])
def test_early_loads_never_read_the_newest_key(d, hq, hkv, impl, monkeypatch):
    """The fused kernel copies old keys into its rings before its PDL wait. Here the previous
    kernel writes q and every newest K/V row ~50 us late, over NaN: any early read of them would
    poison the output."""
    from rawengine.backends.cuda import launch

    needs_sm90()
    monkeypatch.setitem(ao.OVERRIDE, "impl", impl)
    if not launch.pdl_enabled():
        pytest.skip("programmatic dependent launch is off")
    rng = np.random.default_rng(11)
    lens = [300, 17, 1, 700]
    case = Case(rng, lens, hq, hkv, d, 16, "fp16")
    w_dev, w64 = make_wo(rng, 96, hq, d, "fp16")
    scale = d ** -0.5
    late = LateWriter(case)
    pool = FixedSumPool()
    ref, ref_lowp = reference(case, scale, w64, "fp16")
    stream = cp.cuda.Stream(non_blocking=True)
    cp.cuda.Device().synchronize()
    with stream:
        stream.begin_capture()
        late.write()
        y = ao.attention_o(case.q_dev, case.k_dev, case.v_dev, case.tables, case.seq_lens,
                           scale, w_dev, pool, max_seq_len=max(lens), force=True)
        graph = stream.end_capture()
        for _ in range(3):
            late.poison()
            y.sums.fill(0)
            graph.launch(stream)
            stream.synchronize()
            sums = y.sums.astype(np.float64).get()[0] * 2.0 ** -32
            check(round_lowp(sums, "fp16"), ref, ref_lowp, FLOOR["fp16"])


def test_short_and_long_graphs_switch_in_pipelined_decode(smollm2_shaped, monkeypatch):
    """A short-context graph (fused attention + o_proj) serves steps while every row fits
    attention_o.MAX_LEN and the long one (unfused) after; greedy decode that runs one step ahead
    crosses that line mid-batch and must give eager decoding's tokens."""
    needs_sm90()
    from rawengine.engine import Engine
    from rawengine.sampling import SamplingParams

    monkeypatch.setattr(ao, "MAX_LEN", 48)
    prompts = [[5, 6, 7], list(range(40)), list(range(100, 111))]

    def run(use_graphs):
        e = Engine(smollm2_shaped, device="cuda", max_model_len=96, max_num_seqs=3,
                   use_graphs=use_graphs)
        params = [SamplingParams(max_tokens=n, temperature=0.0) for n in (5, 40, 30)]
        out = {s.index: list(s.output_ids) for s in e.generate(prompts, params)}
        return out, e

    eager, _ = run(False)
    piped, e = run(True)
    assert e.graphs.short == 48
    assert {cap for _, cap in e.graphs.captured} == {48, 96}
    assert piped == eager
