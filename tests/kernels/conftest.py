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


@pytest.fixture(scope="session")
def smollm2_shaped(tmp_path_factory):
    """SmolLM2-135M dimensions (hidden 576, 9/3 heads, head_dim 64, vocab 49152), 4 layers,
    random fp16 weights written as a real checkpoint so both backends load the same bytes."""
    from kutil import write_random_checkpoint

    from rawengine.presets import PRESETS

    cfg_dict = dict(PRESETS["smollm2-135m"], num_hidden_layers=4)
    return write_random_checkpoint(tmp_path_factory.mktemp("smollm2"), cfg_dict, seed=0)
