"""Backend selection: cuda when CuPy sees a GPU, else numpy; --device overrides."""

from __future__ import annotations

from ..config import ModelConfig
from ..errors import RawEngineError
from .base import Backend, StepMeta  # noqa: F401

DTYPES = ("auto", "float16", "bfloat16", "float32")


def cuda_available() -> tuple[bool, str]:
    """(available, reason if not)."""
    try:
        import cupy
    except ImportError:
        return False, "CuPy is not installed (pip install 'rawengine[cuda13]' or '[cuda12]')"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # driver missing or broken
        return False, f"CuPy cannot reach a CUDA driver ({str(e).splitlines()[0]})"
    return (n > 0, "no CUDA device found") if n == 0 else (True, "")


def make_backend(device: str = "auto", dtype: str | None = None,
                 cfg: ModelConfig | None = None) -> Backend:
    dtype = dtype or "auto"
    if dtype not in DTYPES:
        raise RawEngineError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if device not in ("auto", "cpu", "cuda"):
        raise RawEngineError(f"unknown device {device!r}; choose auto, cpu or cuda")
    if device in ("auto", "cuda"):
        ok, why = cuda_available()
        if ok:
            from .cuda.backend import CudaBackend
            if dtype == "auto":
                stored = cfg.torch_dtype if cfg else "float16"
                dtype = "bfloat16" if stored == "bfloat16" else "float16"
            if dtype == "float32":
                raise RawEngineError("the CUDA backend runs float16 or bfloat16; "
                                     "use --device cpu for float32")
            return CudaBackend(dtype)
        if device == "cuda":
            raise RawEngineError(f"--device cuda was requested but {why}")
    from .numpy_backend import NumpyBackend
    return NumpyBackend()
