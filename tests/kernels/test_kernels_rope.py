"""rope_kv_write: rotated q, and K/V in the paged cache, vs the NumPy reference."""

import numpy as np
import pytest
from kutil import check, make_meta, meta_to_device, poison, poison_np, requires_gpu, rnd, rope_tables

from rawengine.backends.numpy_backend import NumpyBackend

pytestmark = [pytest.mark.gpu, requires_gpu]


@pytest.mark.parametrize("d,hq,hkv,bs,seqs", [
    (128, 8, 2, 16, [(97, 97)]),
    (64, 12, 4, 1, [(7, 1), (1025, 1), (1, 1)]),
    (128, 6, 2, 16, [(1025, 33), (4099, 7)]),
    (8, 8, 2, 16, [(20, 20), (5, 2)]),
    (16, 4, 4, 16, [(3, 3)]),
])
def test_rope_kv_write(be, d, hq, hkv, bs, seqs):
    rng = np.random.default_rng(d + hq + bs)
    dt = be.dtype_name
    meta, nb = make_meta([s[0] for s in seqs], [s[1] for s in seqs], bs, rng)
    t = len(meta.positions)
    qkv = rnd(rng.standard_normal((t, (hq + 2 * hkv) * d)), dt)
    cos, sin = rope_tables(d, max(s[0] for s in seqs) + 1)
    shape = (nb, hkv, bs, d)
    kc, vc = poison(be, shape), poison(be, shape)
    q = be.rope_kv_write(be.asarray(qkv), meta_to_device(meta), be.asarray(cos, np.float32),
                         be.asarray(sin, np.float32), kc, vc, hq, hkv, d)
    ref = NumpyBackend()
    rk, rv = poison_np(shape), poison_np(shape)
    ref_q = ref.rope_kv_write(qkv, meta, cos, sin, rk, rv, hq, hkv, d)
    check(be.to_numpy(q), ref_q, rnd(ref_q, dt), name="q")
    written = np.zeros(shape, bool)
    written[meta.slot_mapping // bs, :, meta.slot_mapping % bs, :] = True
    out_k, out_v = be.to_numpy(kc), be.to_numpy(vc)
    assert np.isnan(out_k[~written]).all() and np.isnan(out_v[~written]).all()
    check(out_k[written], rk[written], rnd(rk[written], dt), name="k")
    np.testing.assert_array_equal(out_v[written], rv[written])


def test_rope_padding_slot_skipped(be):
    rng = np.random.default_rng(1)
    meta, nb = make_meta([4], [4], 16, rng)
    meta.slot_mapping[2] = -1  # padding token: K/V must not be written
    qkv = rnd(rng.standard_normal((4, 3 * 2 * 64)), be.dtype_name)
    cos, sin = rope_tables(64, 8)
    kc, vc = poison(be, (nb, 2, 16, 64)), poison(be, (nb, 2, 16, 64))
    be.rope_kv_write(be.asarray(qkv), meta_to_device(meta), be.asarray(cos, np.float32),
                     be.asarray(sin, np.float32), kc, vc, 2, 2, 64)
    k = be.to_numpy(kc)
    blk = meta.block_tables[0, 0]
    assert np.isnan(k[blk, :, 2]).all() and np.isfinite(k[blk, :, [0, 1, 3]]).all()
