"""Launch the dispatched M = 1 linear of a few shapes, for Nsight Compute to profile.

    ncu --clock-control none -k regex:gemv --launch-skip 2 --launch-count 1 ... \
        python3 tools/ncu_gemv.py 4096x11008

Each shape runs 3 times (2 warm-ups + the profiled one); the table's choice is printed."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cupy as cp  # noqa: E402

from rawengine.backends.cuda import gemm  # noqa: E402


def main() -> int:
    for spec in sys.argv[1:]:
        n, k = (int(v) for v in spec.split("x"))
        w = (cp.random.standard_normal((n, k), dtype=cp.float32) * 0.02).astype(cp.float16)
        x = cp.random.standard_normal((1, k), dtype=cp.float32).astype(cp.float16)
        print(f"{n}x{k}: {gemm.choose(1, n, k)}", flush=True)
        for _ in range(3):
            gemm.linear(x, w)
        cp.cuda.Device().synchronize()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
