"""backend.graph: a captured step replayed with new inputs equals eager execution."""

import numpy as np
import pytest
from kutil import make_meta, meta_to_device, requires_gpu, rnd, rope_tables

pytestmark = [pytest.mark.gpu, requires_gpu]
cp = pytest.importorskip("cupy")


def test_graph_replay_matches_eager(be):
    rng = np.random.default_rng(11)
    dt = be.dtype_name
    d, hq, hkv, bs, h, inter, vocab = 64, 4, 2, 16, 256, 128, 300
    meta, nb = make_meta([40, 9], [1, 1], bs, rng)
    dmeta = meta_to_device(meta)
    cos, sin = (be.asarray(a, np.float32) for a in rope_tables(d, 64))
    emb = be.asarray(rnd(rng.standard_normal((vocab, h)), dt))
    w = be.asarray(rnd(rng.standard_normal(h), dt))
    kc = be.asarray(rnd(rng.standard_normal((nb, hkv, bs, d)), dt))
    vc = be.asarray(rnd(rng.standard_normal((nb, hkv, bs, d)), dt))
    ids = cp.zeros((2,), np.int32)
    qkv_in = be.asarray(rnd(rng.standard_normal((2, (hq + 2 * hkv) * d)), dt))
    gu_in = be.asarray(rnd(rng.standard_normal((2, 2 * inter)), dt))

    def step():
        x = be.embedding(ids, emb)
        y, r = be.rmsnorm(x, w, 1e-5, x)
        q = be.rope_kv_write(qkv_in, dmeta, cos, sin, kc, vc, hq, hkv, d)
        o = be.attention_prefill(q, kc, vc, dmeta, d ** -0.5)
        a = be.silu_mul(gu_in)
        return be.add(y, r), o, a, be.argmax(y)

    replay = be.graph(step)
    for trial in range(2):
        ids[...] = cp.asarray(rng.integers(0, vocab, 2), np.int32)
        qkv_in[...] = be.asarray(rnd(rng.standard_normal(qkv_in.shape), dt))
        gu_in[...] = be.asarray(rnd(rng.standard_normal(gu_in.shape), dt))
        got = [be.to_numpy(a).copy() for a in replay()]
        want = [be.to_numpy(a) for a in step()]  # eager on the same inputs and cache
        for g, e in zip(got, want):
            np.testing.assert_array_equal(g, e)
