"""The only place that touches cupy.RawModule: compile kernels_cu/*.cu lazily with NVRTC.

    kernel("norm.cu", "rmsnorm_kernel", {"HIDDEN": 4096, "USE_BF16": 1}) -> cupy.RawKernel

Local `#include "x.cuh"` lines are inlined (recursively, once each), and the defines are
written at the top of the source, so the source text alone determines the binary. CuPy's
on-disk cache (~/.cupy/kernel_cache or CUPY_CACHE_DIR) keys on that text + options + the
device arch, so editing a header recompiles every kernel that includes it. Compiled modules
are memoised in-process per (file, defines).

kernels_cu/ is found at $RAWENGINE_KERNELS_DIR, else inside the installed package
(rawengine/kernels_cu, shipped as package data), else at the repository root.

Launches on a non-default stream (CUDA-graph capture, the decode hot path) use programmatic
dependent launch on sm_90+ (launch.py); RAWENGINE_PDL=0 turns it off.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.MULTILINE)
_OPTIONS = ("-std=c++17",)


@functools.lru_cache(maxsize=1)
def kernels_dir() -> Path:
    env = os.environ.get("RAWENGINE_KERNELS_DIR")
    here = Path(__file__).resolve()
    candidates = [Path(env)] if env else []
    candidates += [here.parents[2] / "kernels_cu", here.parents[3] / "kernels_cu"]
    for c in candidates:
        if c.is_dir():
            return c
    raise FileNotFoundError(f"kernels_cu/ not found (looked in {[str(c) for c in candidates]})")


def _inline(path: Path, seen: set[str]) -> str:
    """Source text with local includes pasted in; a header seen before is skipped (#pragma once)."""
    def repl(m: re.Match) -> str:
        name = m.group(1)
        if name in seen:
            return f"// (already included: {name})"
        seen.add(name)
        return f"// ---- begin {name}\n{_inline(kernels_dir() / name, seen)}\n// ---- end {name}"

    return _INCLUDE.sub(repl, path.read_text())


def source(file: str, defines: dict | None = None) -> str:
    """Full compilable text: defines, then the .cu with its local headers inlined."""
    head = "".join(f"#define {k} {_fmt(v)}\n" for k, v in sorted((defines or {}).items()))
    return head + _inline(kernels_dir() / file, set())


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float):
        return f"{v!r}f"
    return str(v)


@functools.lru_cache(maxsize=None)
def _module(file: str, frozen_defines: tuple):
    import cupy

    return cupy.RawModule(code=source(file, dict(frozen_defines)), options=_OPTIONS)


def module(file: str, defines: dict | None = None):
    return _module(file, tuple(sorted((defines or {}).items())))


@functools.lru_cache(maxsize=None)
def _kernel(file: str, name: str, frozen_defines: tuple):
    from .launch import Kernel

    return Kernel(_module(file, frozen_defines).get_function(name))


def kernel(file: str, name: str, defines: dict | None = None):
    """A compiled kernel for `name` in kernels_cu/`file` built with `defines`; called like a
    cupy.RawKernel: kern(grid, block, args, shared_mem=0)."""
    return _kernel(file, name, tuple(sorted((defines or {}).items())))
