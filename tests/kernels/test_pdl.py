"""Programmatic dependent launch (launch.py): graph launches let each kernel start before the
previous one ends; kernels order themselves with RE_PDL_WAIT. A missing or misplaced wait
is a race, so decode logits through graphs must be bit-identical with PDL on and off (every
reduction in the step has a fixed order, so two runs agree bit for bit)."""

import numpy as np
import pytest

from kutil import has_gpu  # noqa: E402

if not has_gpu():
    pytest.skip("needs CuPy and a CUDA device", allow_module_level=True)

pytestmark = pytest.mark.gpu

import cupy as cp  # noqa: E402

from rawengine.backends.cuda import launch  # noqa: E402
from rawengine.engine import Engine, Sequence  # noqa: E402
from rawengine.sampling import SamplingParams  # noqa: E402


@pytest.fixture
def pdl_restored():
    yield
    launch.set_pdl(None)


def decode_logits(path, use_graphs: bool, steps: int = 24) -> np.ndarray:
    """Teacher-forced batch-3 decode (fixed tokens), logits of every step."""
    e = Engine(path, device="cuda", dtype="float16", max_model_len=512, max_num_seqs=3,
               use_graphs=use_graphs)
    rng = np.random.default_rng(7)
    seqs = [Sequence(rng.integers(0, 49152, n).tolist(), SamplingParams(temperature=0.0))
            for n in (5, 130, 301)]
    for s in seqs:
        e.prefill(s)
    rows = []
    for t in range(steps):
        for s in seqs:
            s.token_ids.append(int(rng.integers(0, 49152)))
        rows.append(e.backend.to_numpy(e.forward(seqs, [1] * len(seqs))))
    assert use_graphs == (e.graphs is not None and bool(e.graphs.captured))
    return np.stack(rows).astype(np.float32)


def test_graph_decode_is_bit_identical_with_and_without_pdl(smollm2_shaped, pdl_restored):
    if int(cp.cuda.Device().compute_capability) < 90:
        pytest.skip("programmatic dependent launch needs sm_90")
    launch.set_pdl(False)
    off = decode_logits(smollm2_shaped, use_graphs=True)
    launch.set_pdl(True)
    assert launch.pdl_enabled()
    on = decode_logits(smollm2_shaped, use_graphs=True)
    again = decode_logits(smollm2_shaped, use_graphs=True)
    assert np.isfinite(on).all()
    np.testing.assert_array_equal(on, off)
    np.testing.assert_array_equal(on, again)


def test_launcher_passes_every_argument_type(pdl_restored):
    """A PDL launch on a side stream passes pointers, 32/64-bit ints and floats like cupy."""
    launch.set_pdl(True)
    src = r'''
    extern "C" __global__ void k(float* out, int a, long long b, float c, double d,
                                 unsigned u) {
        asm volatile("griddepcontrol.wait;" ::: "memory");
        out[threadIdx.x] = a + (float)b + c + (float)d + u + threadIdx.x;
    }'''
    raw = cp.RawModule(code=src).get_function("k")
    kern = launch.Kernel(raw)
    out = cp.full(64, np.nan, np.float32)
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        kern((1,), (64,), (out, np.int32(-3), np.int64(1 << 33), np.float32(0.5),
                           np.float64(0.25), np.uint32(7)))
    s.synchronize()
    want = -3 + float(1 << 33) + 0.5 + 0.25 + 7 + np.arange(64)
    np.testing.assert_allclose(cp.asnumpy(out), want.astype(np.float32))
    with pytest.raises(TypeError, match="not supported"):
        with s:
            kern((1,), (64,), (out, "x", np.int64(0), np.float32(0), np.float64(0), np.uint32(0)))
