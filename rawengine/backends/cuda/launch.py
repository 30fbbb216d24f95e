"""Kernel launches, with programmatic dependent launch (PDL) where it pays.

    kern = Kernel(raw_kernel)          # module.kernel() returns these
    kern(grid, block, args, shared_mem=0)

On the default stream this is a plain cupy.RawKernel launch. On any other stream (the decode
step's CUDA-graph capture) with PDL on, it goes through the driver's cuLaunchKernelEx with the
programmatic-stream-serialization attribute: the kernel may start while the previous kernel in
the stream is finishing, and orders itself with RE_PDL_WAIT (contract in kernels_cu/common.cuh).
Captured in a graph, each such launch becomes a programmatic edge. CuPy has no cuLaunchKernelEx,
so it is called through ctypes; this is the only ctypes use in the project.

Measured on the H100 (tools/pdl_probe.py): a chain of small kernels in a graph 1.20 -> 0.89 us
per kernel; 33.6 MB weight-streaming kernels that issue their first loads before the wait
13.40 -> 12.71 us.

PDL is on where the GPU is sm_90+ under CUDA and RAWENGINE_PDL is not "0"; set_pdl() overrides
(benchmarks compare both in one process; graphs keep the choice made when they were captured).
"""

from __future__ import annotations

import ctypes
import functools
import os

import cupy as cp
import numpy as np

_PROGRAMMATIC_STREAM_SERIALIZATION = 6  # CUlaunchAttributeID in cuda.h


class _Attr(ctypes.Structure):  # CUlaunchAttribute: id, 4 bytes of padding, 64-byte value union
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", ctypes.c_int * 16)]


class _Config(ctypes.Structure):  # CUlaunchConfig
    _fields_ = [("grid_x", ctypes.c_uint), ("grid_y", ctypes.c_uint), ("grid_z", ctypes.c_uint),
                ("block_x", ctypes.c_uint), ("block_y", ctypes.c_uint), ("block_z", ctypes.c_uint),
                ("shared_mem", ctypes.c_uint), ("stream", ctypes.c_void_p),
                ("attrs", ctypes.POINTER(_Attr)), ("num_attrs", ctypes.c_uint)]


_PDL_ATTR = _Attr(id=_PROGRAMMATIC_STREAM_SERIALIZATION)
_PDL_ATTR.value[0] = 1

# kernel argument -> its C type (what a cupy.RawKernel would pass for the same value)
_C_TYPES = {np.dtype(np.int32): ctypes.c_int32, np.dtype(np.uint32): ctypes.c_uint32,
            np.dtype(np.int64): ctypes.c_int64, np.dtype(np.uint64): ctypes.c_uint64,
            np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double}

_enabled: bool | None = None  # None: decide on first use


@functools.lru_cache(maxsize=1)
def _driver():
    lib = ctypes.CDLL("libcuda.so.1")
    lib.cuLaunchKernelEx.argtypes = [ctypes.POINTER(_Config), ctypes.c_void_p,
                                     ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p]
    lib.cuLaunchKernelEx.restype = ctypes.c_int
    lib.cuGetErrorName.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
    return lib


def blocks_per_sm(kern, threads: int, dynamic_smem: int) -> int:
    """Blocks of `kern` (a Kernel) that fit on one SM at once (registers, shared memory,
    threads), from the driver's occupancy calculator; 1 where it cannot be asked (HIP)."""
    if cp.cuda.runtime.is_hip:
        return 1
    try:
        lib = _driver()
    except (OSError, AttributeError):
        return 1
    n = ctypes.c_int(0)
    fn = lib.cuOccupancyMaxActiveBlocksPerMultiprocessor
    fn.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    r = fn(ctypes.byref(n), kern.raw.kernel.ptr, int(threads), int(dynamic_smem))
    return max(1, n.value) if r == 0 else 1


def _supported() -> bool:
    if os.environ.get("RAWENGINE_PDL", "1") == "0" or cp.cuda.runtime.is_hip:
        return False
    if int(cp.cuda.Device().compute_capability) < 90:
        return False
    try:
        _driver()
    except (OSError, AttributeError):  # no driver library, or one without cuLaunchKernelEx
        return False
    return True


def pdl_enabled() -> bool:
    global _enabled
    if _enabled is None:
        _enabled = _supported()
    return _enabled


def set_pdl(enabled: bool | None) -> None:
    """True/False: force programmatic launches on/off (True still needs sm_90+); None: auto."""
    global _enabled
    _enabled = None if enabled is None else bool(enabled) and _supported()


def _c_arg(a):
    if isinstance(a, cp.ndarray):
        return ctypes.c_void_p(a.data.ptr)
    if isinstance(a, np.generic):
        try:
            return _C_TYPES[a.dtype](a.item())
        except KeyError:
            raise TypeError(f"kernel argument of dtype {a.dtype} is not supported") from None
    if isinstance(a, bool):
        return ctypes.c_bool(a)
    if isinstance(a, int):
        return ctypes.c_int64(a)
    if isinstance(a, float):
        return ctypes.c_double(a)
    raise TypeError(f"kernel argument of type {type(a).__name__} is not supported")


def _dim3(d) -> tuple:
    d = tuple(d) if isinstance(d, (tuple, list)) else (d,)
    return tuple(int(v) for v in d) + (1,) * (3 - len(d))


class Kernel:
    """A compiled kernel, called like cupy.RawKernel; other attributes are the RawKernel's."""

    __slots__ = ("raw", "_ptr")

    def __init__(self, raw):
        self.raw, self._ptr = raw, None

    def __getattr__(self, name):
        return getattr(self.raw, name)

    @property
    def max_dynamic_shared_size_bytes(self) -> int:
        return self.raw.max_dynamic_shared_size_bytes

    @max_dynamic_shared_size_bytes.setter
    def max_dynamic_shared_size_bytes(self, value: int) -> None:
        self.raw.max_dynamic_shared_size_bytes = value

    def __call__(self, grid, block, args, shared_mem: int = 0) -> None:
        stream = cp.cuda.get_current_stream().ptr
        if stream and pdl_enabled():
            self._launch_pdl(grid, block, args, shared_mem, stream)
        else:
            self.raw(_dim3(grid), _dim3(block), tuple(args), shared_mem=shared_mem)

    def _launch_pdl(self, grid, block, args, shared_mem: int, stream: int) -> None:
        if self._ptr is None:
            self._ptr = self.raw.kernel.ptr  # loads the module on the current device
        store = [_c_arg(a) for a in args]
        params = (ctypes.c_void_p * len(store))(*[ctypes.addressof(c) for c in store])
        cfg = _Config(*_dim3(grid), *_dim3(block), int(shared_mem), stream,
                      ctypes.pointer(_PDL_ATTR), 1)
        r = _driver().cuLaunchKernelEx(ctypes.byref(cfg), self._ptr, params, None)
        if r != 0:
            name = ctypes.c_char_p()
            _driver().cuGetErrorName(r, ctypes.byref(name))
            raise RuntimeError(f"kernel launch failed: {(name.value or b'?').decode()} ({r})")
