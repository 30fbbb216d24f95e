"""embedding, rmsnorm (+ fused residual), silu_mul, add vs the NumPy float32 reference."""

import numpy as np
import pytest
from kutil import check, poison, requires_gpu, rnd

from rawengine.backends.numpy_backend import NumpyBackend

pytestmark = [pytest.mark.gpu, requires_gpu]
ref_be = NumpyBackend()
rng = np.random.default_rng(0)


@pytest.mark.parametrize("t,h", [(1, 64), (7, 576), (97, 4096), (5, 100)])
def test_embedding(be, t, h):
    table = rnd(rng.standard_normal((300, h)), be.dtype_name)
    ids = rng.integers(0, 300, t).astype(np.int32)
    out = be.embedding(be.asarray(ids, np.int32), be.asarray(table))
    np.testing.assert_array_equal(be.to_numpy(out).astype(np.float32), table[ids])


@pytest.mark.parametrize("t,h", [(1, 64), (7, 576), (33, 4096), (3, 8192), (4, 100)])
@pytest.mark.parametrize("fused", [False, True])
def test_rmsnorm(be, t, h, fused):
    dt = be.dtype_name
    x = rnd(rng.standard_normal((t, h)) * 3, dt)
    res = rnd(rng.standard_normal((t, h)), dt)
    w = rnd(rng.standard_normal(h), dt)
    if fused:
        y, r = be.rmsnorm(be.asarray(x), be.asarray(w), 1e-5, be.asarray(res))
        ref_y, ref_r = ref_be.rmsnorm(x, w, 1e-5, res)
        r_low = rnd(x + res, dt)
        low_y = rnd(ref_be.rmsnorm(r_low, w, 1e-5), dt)
        check(be.to_numpy(r), ref_r, r_low, name="r")
    else:
        y = be.rmsnorm(be.asarray(x), be.asarray(w), 1e-5)
        ref_y = ref_be.rmsnorm(x, w, 1e-5)
        low_y = rnd(ref_y, dt)
    check(be.to_numpy(y), ref_y, low_y, floor=1e-5, name="y")


@pytest.mark.parametrize("t,i", [(1, 64), (7, 1536), (97, 11008), (3, 12)])
def test_silu_mul(be, t, i):
    gu = rnd(rng.standard_normal((t, 2 * i)) * 4, be.dtype_name)
    out = be.silu_mul(be.asarray(gu))
    ref = ref_be.silu_mul(gu)
    g = gu[:, :i]
    low = rnd(rnd(g / (1 + np.exp(-g)), be.dtype_name) * gu[:, i:], be.dtype_name)
    check(be.to_numpy(out), ref, low, floor=1e-6)


@pytest.mark.parametrize("shape", [(1, 64), (7, 4096), (3, 13)])
def test_add(be, shape):
    x, y = (rnd(rng.standard_normal(shape), be.dtype_name) for _ in range(2))
    out = be.add(be.asarray(x), be.asarray(y))
    check(be.to_numpy(out), x + y, rnd(x + y, be.dtype_name))


def test_gather_rows(be):
    x = rnd(rng.standard_normal((9, 64)), be.dtype_name)
    idx = np.array([8, 0, 3], np.int32)
    out = be.gather_rows(be.asarray(x), be.asarray(idx, np.int32))
    np.testing.assert_array_equal(be.to_numpy(out), x[idx])


def test_poison_helper(be):
    assert np.isnan(be.to_numpy(poison(be, (4,)))).all()
