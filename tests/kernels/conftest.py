"""Fixtures for the CUDA kernel tests (helpers: kutil.py); skipped without CuPy or a GPU.

Pass rule (STYLE.md): max|out - ref| <= 2 * max|ref_lowp - ref| + floor, where ref is the float32
NumPy reference on the (already low-precision) inputs and ref_lowp the same computation with the
kernel's rounding of intermediates and output.
"""

from __future__ import annotations

import pytest

@pytest.fixture(params=["float16", "bfloat16"])
def be(request):
    pytest.importorskip("cupy")
    from kutil import has_gpu

    if not has_gpu():
        pytest.skip("no CUDA device")
    from rawengine.backends.cuda.backend import CudaBackend

    return CudaBackend(request.param)
