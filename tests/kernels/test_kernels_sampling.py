"""GPU argmax and sampling vs rawengine/sampling.py semantics."""

import numpy as np
import pytest
from kutil import requires_gpu, rnd

from rawengine.sampling import SamplingParams, apply_repetition_penalty, filtered_probs

pytestmark = [pytest.mark.gpu, requires_gpu]
cp = pytest.importorskip("cupy")


def _args(be, b, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, rep=1.0, seed=0, steps=None):
    f32 = lambda x: cp.full((b,), x, np.float32)  # noqa: E731
    st = cp.arange(b, dtype=np.int32) if steps is None else cp.asarray(steps, np.int32)
    return (f32(temperature), cp.full((b,), top_k, np.int32), f32(top_p), f32(min_p), f32(rep),
            cp.full((b,), seed, np.uint64), st)


@pytest.mark.parametrize("b,v", [(1, 256), (3, 32000), (2, 128256), (5, 7)])
def test_argmax(be, b, v):
    rng = np.random.default_rng(v)
    x = rnd(rng.standard_normal((b, v)) * 4, be.dtype_name)  # low precision: ties do happen
    got = be.to_numpy(be.argmax(be.asarray(x)))
    np.testing.assert_array_equal(got, np.argmax(x, axis=1))
    got32 = be.to_numpy(be.argmax(cp.asarray(x)))  # float32 logits
    np.testing.assert_array_equal(got32, np.argmax(x, axis=1))


@pytest.mark.parametrize("b,v", [(1, 1024), (2, 1025), (3, 49152), (1, 151936)])
def test_argmax_ties_across_chunks_into_out(be, b, v):
    """One-launch argmax: the row max twice (in different 1,024-logit chunks where V allows),
    the first index wins; written into the given out; repeated launches stay right (the last
    block of each row resets its counter)."""
    rng = np.random.default_rng(b * v)
    x = rnd(rng.standard_normal((b, v)), be.dtype_name)
    for r in range(b):
        j1 = int(rng.integers(0, min(v, 1024)))
        j2 = int(rng.integers(1024, v)) if v > 1024 else min(j1 + 1, v - 1)
        x[r, j1] = x[r, j2] = 100.0
    want = np.argmax(x, axis=1)
    out = cp.full((b,), -7, np.int32)
    for _ in range(3):
        out.fill(-7)
        assert be.argmax(be.asarray(x), out=out) is out
        np.testing.assert_array_equal(out.get(), want)
    with pytest.raises(ValueError, match="out"):
        be.argmax(be.asarray(x), out=cp.zeros((b + 1,), np.int32))


@pytest.mark.parametrize("b,v", [(1, 49152), (3, 1025)])
def test_argmax_into_pinned_host_slots(be, b, v):
    """A decode graph's argmax also lands in pinned host memory at the slot a device int
    names (graphs.py hands tokens to the host this way, with no copy on the stream): replayed
    with slots 0, 1, 0 and new logits each time, the named slot holds that replay's ids and
    the other slot keeps the previous one's; the device out gets the same ids."""
    rng = np.random.default_rng(v)
    x = cp.empty((b, v), cp.float16 if be.dtype_name == "float16" else cp.float32)
    out = cp.full((b,), -7, np.int32)
    slot = cp.zeros((1,), np.int32)
    ring = be.pinned((2, b), "int32")
    ring[:] = -1
    replay = be.graph(lambda: be.argmax(x, out=out, host_out=ring, host_slot=slot))
    prev = None
    for k, s in enumerate((0, 1, 0)):
        xs = rng.standard_normal((b, v)).astype(np.float32)
        x.set(xs.astype(x.dtype))
        slot.fill(s)
        replay()
        got = be.when_done(lambda: ring.copy())()
        want = np.argmax(x.get().astype(np.float32), axis=1)
        np.testing.assert_array_equal(got[s], want)
        np.testing.assert_array_equal(out.get(), want)
        if prev is not None:
            np.testing.assert_array_equal(got[1 - s], prev)
        prev = want
    with pytest.raises(ValueError, match="host_out"):
        be.argmax(x, host_out=be.pinned((2, b + 1), "int32"), host_slot=slot)


def test_greedy_with_repetition_penalty(be):
    rng = np.random.default_rng(3)
    b, v = 4, 5000
    x = rnd(rng.standard_normal((b, v)) * 3, be.dtype_name)
    seen = (rng.random((b, v)) < 0.3).astype(np.uint8)
    seen[:, np.argmax(x, 1)] = 1  # penalise the current winners
    got = be.to_numpy(be.sample(be.asarray(x), *_args(be, b, temperature=0.0, rep=1.7),
                                seen=cp.asarray(seen)))
    want = [np.argmax(apply_repetition_penalty(x[i], np.nonzero(seen[i])[0], 1.7))
            for i in range(b)]
    np.testing.assert_array_equal(got, want)


PARAMS = [
    dict(temperature=1.0),
    dict(temperature=0.7, top_k=5),
    dict(temperature=1.3, top_p=0.8),
    dict(temperature=1.0, min_p=0.2),
    dict(temperature=0.9, top_k=20, top_p=0.9, min_p=0.05, rep=1.3),
]


@pytest.mark.parametrize("kw", PARAMS, ids=str)
def test_sample_distribution(be, kw):
    """Many rows of the same logits, different (seed, step): the empirical distribution
    matches filtered_probs, and no token outside its support is ever drawn."""
    kw = dict(kw)
    rng = np.random.default_rng(5)
    v, n = 50, 40000
    x = rnd(rng.standard_normal(v) * 2, be.dtype_name)
    seen_ids = np.array([0, 3, int(np.argmax(x))])
    seen = np.zeros((n, v), np.uint8)
    seen[:, seen_ids] = 1
    logits = cp.asarray(np.ascontiguousarray(np.broadcast_to(x, (n, v)), np.float32))
    got = be.to_numpy(be.sample(logits, *_args(be, n, seed=123, **kw), seen=cp.asarray(seen)))
    rep = kw.pop("rep", 1.0)
    p = SamplingParams(repetition_penalty=rep, **kw)
    probs = filtered_probs(apply_repetition_penalty(x, seen_ids, rep), p)
    freq = np.bincount(got, minlength=v) / n
    assert (freq[probs == 0] == 0).all(), "drew a token outside the filtered support"
    tv = 0.5 * np.abs(freq - probs).sum()
    assert tv < 0.02, f"total variation {tv:.4f}"


def test_sample_big_vocab_support(be):
    rng = np.random.default_rng(7)
    b, v = 64, 128256
    x = rnd(rng.standard_normal(v) * 3, be.dtype_name)
    logits = be.asarray(np.broadcast_to(x, (b, v)))
    got = be.to_numpy(be.sample(logits, *_args(be, b, temperature=0.8, top_k=40, top_p=0.9)))
    probs = filtered_probs(x, SamplingParams(temperature=0.8, top_k=40, top_p=0.9))
    assert (probs[got] > 0).all()
    assert len(set(got.tolist())) > 3  # actually random


def test_sample_deterministic_per_seed_and_step(be):
    x = be.asarray(np.random.default_rng(9).standard_normal((1, 1000)))
    a = [int(be.sample(x, *_args(be, 1, seed=42, steps=[s]))[0]) for s in (5, 5, 6, 7, 8)]
    assert a[0] == a[1]
    assert len(set(a[1:])) > 1
