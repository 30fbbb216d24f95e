"""cuBLAS through ctypes (rawengine/backends/cuda/cublas.py) vs a float64 NumPy reference,
eagerly and inside CUDA-graph capture.

Pass rule (STYLE.md, as test_gemm.py): max|out - ref| <= 2 * max|round_lowp(ref) - ref| +
1e-5 * max|ref|, ref the exact result on the (already fp16/bf16) inputs: cuBLAS accumulates in
fp32 and rounds once (the bias or residual rides on beta = 1). Outputs are NaN-poisoned before
each launch, so an unwritten element fails.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_gemm import lowp, make, poisoned, round_lowp, to_f64

from kutil import has_gpu  # noqa: E402

if not has_gpu():
    pytest.skip("needs CuPy and a CUDA device", allow_module_level=True)
import cupy as cp  # noqa: E402

from rawengine.backends.cuda import cublas as libcublas  # noqa: E402
from rawengine.backends.cuda import gemm  # noqa: E402

pytestmark = pytest.mark.gpu
rng = np.random.default_rng(2)
DTYPES = ["fp16", "bf16"]  # bf16 as raw uint16 bits
# bias and residual together go to our kernels (run_impl), checked here all the same
EPILOGUES = ["none", "bias", "residual", "residual_in_place", "bias_residual"]


def check(out, ref, dtype, name=""):
    got = to_f64(out, dtype)
    assert got.shape == ref.shape, (name, got.shape, ref.shape)
    assert not np.isnan(got).any(), f"{name}: unwritten (NaN) outputs"
    err = np.abs(got - ref).max()
    tol = 2 * np.abs(round_lowp(ref, dtype) - ref).max() + 1e-5 * np.abs(ref).max()
    assert err <= tol, f"{name}: max err {err:.3e} > tol {tol:.3e}"


def epilogue_case(M, N, K, dtype, epilogue):
    """x, w, bias, residual (device arrays or None) and the exact float64 result."""
    return make(M, N, K, dtype, bias="bias" in epilogue, res="residual" in epilogue)


@pytest.fixture
def shipped_tables(tmp_path, monkeypatch):
    """Dispatch from the tables in rawengine/tuning/ only (no user tables of this machine)."""
    monkeypatch.setenv("RAWENGINE_CACHE", str(tmp_path))
    gemm.reload_tables()
    yield
    monkeypatch.undo()
    gemm.reload_tables()


def test_available():
    assert libcublas.available(), "libcublas did not load through ctypes"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M", [1, 3, 13, 64, 200])
@pytest.mark.parametrize("N,K", [(1000, 1000), (1000, 4096), (130, 1001), (576, 576)])
def test_gemm(dtype, M, N, K):
    x, w, _, _, ref = make(M, N, K, dtype)
    y = poisoned((M, N), dtype)
    libcublas.gemm(x, w, y)
    check(y, ref, dtype)
    if dtype == "bf16":  # beta = 1 is not used for bf16 (gemm._can_cublas): see below
        return
    r, r64 = lowp(rng.standard_normal((M, N)), dtype)  # beta = 1 accumulates onto y
    libcublas.gemm(x, w, r, beta_one=True)
    check(r, ref + r64, dtype, "beta_one")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M", [1, 13, 64])
@pytest.mark.parametrize("epilogue", EPILOGUES)
def test_epilogues(dtype, M, epilogue):
    N, K = 392, 520
    x, w, b, r, ref = epilogue_case(M, N, K, dtype, epilogue)
    y = r if epilogue == "residual_in_place" else poisoned((M, N), dtype)
    gemm.run_impl("cublas", x, w, y, b, r)
    check(y, ref, dtype, epilogue)


def test_bad_inputs():
    x, w, _, _, _ = make(4, 64, 32, "fp16")
    with pytest.raises(ValueError):
        libcublas.gemm(x, w, cp.empty((4, 63), cp.float16))
    with pytest.raises(ValueError):
        libcublas.gemm(x, cp.asfortranarray(w), cp.empty((4, 64), cp.float16))
    with pytest.raises(TypeError):
        libcublas.gemm(x.astype(cp.float32), w.astype(cp.float32), cp.empty((4, 64), cp.float32))


def test_choose_capturing_returns_cublas(shipped_tables):
    """cuBLAS entries now survive capture: shipped H100 table (4096x4096 at M = 64 is cuBLAS
    with an own-kernel fallback) and the default rule (M > 32)."""
    h100 = "NVIDIA H100 80GB HBM3"
    assert gemm.choose(64, 4096, 4096, gpu=h100)[0] == "cublas"
    assert gemm.choose(64, 4096, 4096, gpu=h100, capturing=True) == ("cublas", {})
    assert gemm.choose(200, 1000, 2048, gpu="no such GPU", capturing=True)[0] == "cublas"


def test_fused_params_with_cublas_choice(monkeypatch):
    """A 'cublas' choice at decode M: the fused GEMV runs only where the product is tiny."""
    monkeypatch.setattr(gemm, "choose", lambda *a, **k: ("cublas", {}))
    assert gemm._fused_params(4, 576, 576) == gemm.FUSED_SMALL_PARAMS
    assert gemm._fused_params(4, 1024, 2048) is None  # 8M: above FUSED_SMALL_MNK


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M", [64, 200])
@pytest.mark.parametrize("epilogue", ["none", "bias", "residual"])
def test_linear_capture(dtype, M, epilogue, monkeypatch, shipped_tables):
    """gemm.linear for an M whose choice is cuBLAS, captured in a CUDA graph: cuBLAS is
    called during capture, and replays read new data from the static input buffer."""
    N, K = 1000, 2048
    assert gemm.choose(M, N, K, capturing=True)[0] == "cublas"
    x, w, b, r, ref = epilogue_case(M, N, K, dtype, epilogue)
    calls_in_capture = []
    real_gemm = libcublas.gemm

    def spy(*args, **kwargs):
        calls_in_capture.append(gemm.is_capturing())
        real_gemm(*args, **kwargs)

    monkeypatch.setattr(libcublas, "gemm", spy)
    out = poisoned((M, N), dtype)
    nan = np.nan if dtype == "fp16" else 0x7FC0
    x2, x2_64 = lowp(rng.standard_normal((M, K)), dtype)
    cp.cuda.Device().synchronize()  # the capture stream does not wait for the null stream
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        gemm.linear(x, w, b, residual=r, out=out)  # handle and workspace: made outside capture
        stream.synchronize()
        calls_in_capture.clear()
        stream.begin_capture()
        try:
            gemm.linear(x, w, b, residual=r, out=out)
        finally:
            graph = stream.end_capture()
        if dtype == "bf16" and epilogue != "none":  # bf16 addends take our kernels
            assert not calls_in_capture
        else:
            assert calls_in_capture and all(calls_in_capture), "cuBLAS was not captured"
        out.fill(nan)
        graph.launch(stream)
        stream.synchronize()
        check(out, ref, dtype, "first replay")
        x[...] = x2  # new data in the static input buffer
        out.fill(nan)
        graph.launch(stream)
        stream.synchronize()
    prod = x2_64 @ to_f64(w, dtype).T
    res = to_f64(r, dtype) if r is not None else 0.0
    bias = to_f64(b, dtype) if b is not None else 0.0
    check(out, prod + res + bias, dtype, "replay with new x")


def test_bf16_addends_go_to_own_kernels():
    """cuBLAS's beta = 1 accumulation on bf16 measured beyond one rounding (1x576x576 on the
    H100: 2.3e-2 vs a 1.95e-2 bound), so bf16 products with a bias or residual never take it."""
    w = cp.zeros((8, 8), cp.uint16)
    b = cp.zeros((8,), cp.uint16)
    assert not gemm._can_cublas(w, b, None)
    assert gemm._can_cublas(w, None, None) == libcublas.available()
    assert gemm._can_cublas(cp.zeros((8, 8), cp.float16), cp.zeros((8,), cp.float16), None) \
        == libcublas.available()
