#!/usr/bin/env python3
"""Time the basic CUDA kernels (graph replays of back-to-back calls, CUDA events, median).

    PYTHONPATH=. python3 tools/bench_kernels.py [--dtype float16]
Prints one line per case: time per call, and GB/s (bytes moved once) or TFLOP/s.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cupy as cp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "kernels"))
from kutil import make_meta, meta_to_device, rope_tables  # noqa: E402

from rawengine.backends.cuda.backend import CudaBackend  # noqa: E402

REPS = 20


def time_us(be, fn) -> float:
    replay = be.graph(lambda: [fn() for _ in range(REPS)])
    replay()
    ts = []
    for _ in range(7):
        a, b = cp.cuda.Event(), cp.cuda.Event()
        a.record()
        replay()
        b.record()
        b.synchronize()
        ts.append(cp.cuda.get_elapsed_time(a, b) * 1e3 / REPS)
    return float(np.median(ts))


def rand(be, shape, scale=1.0):
    return be.asarray((np.random.default_rng(0).standard_normal(shape) * scale).astype(np.float32))


def cases(be):
    h, inter = 4096, 14336
    for t in (1, 512):
        x, r, w = rand(be, (t, h)), rand(be, (t, h)), rand(be, (h,))
        yield f"rmsnorm+res T={t} H={h}", lambda: be.rmsnorm(x, w, 1e-5, r), 4 * t * h * 2, 0
        gu = rand(be, (t, 2 * inter))
        yield f"silu_mul T={t} I={inter}", lambda: be.silu_mul(gu), 3 * t * inter * 2, 0
    for t, bs in ((1, 16), (512, 16)):
        meta, nb = make_meta([t + 100], [t], bs, np.random.default_rng(0))
        dm = meta_to_device(meta)
        qkv = rand(be, (t, 48 * 128))
        cos, sin = (be.asarray(a, np.float32) for a in rope_tables(128, t + 101))
        kc, vc = be.alloc_kv(nb, 8, bs, 128)
        yield (f"rope_kv_write T={t} 32/8x128", lambda: be.rope_kv_write(
            qkv, dm, cos, sin, kc, vc, 32, 8, 128), 2 * t * 48 * 128 * 2, 0)
    for L, hq, hkv in ((1024, 32, 8), (4096, 32, 8)):
        meta, nb = make_meta([L], [L], 16, np.random.default_rng(0))
        dm = meta_to_device(meta)
        q = rand(be, (L, hq, 128))
        kc, vc = rand(be, (nb, hkv, 16, 128)), rand(be, (nb, hkv, 16, 128))
        flops = 4 * L * L / 2 * hq * 128
        yield (f"attention_prefill 1x{L} {hq}/{hkv}x128", lambda: be.attention_prefill(
            q, kc, vc, dm, 128 ** -0.5), 0, flops)
    for L in (1024, 4096):
        meta, nb = make_meta([L], [1], 16, np.random.default_rng(0))
        dm = meta_to_device(meta)
        q = rand(be, (1, 32, 128))
        kc, vc = rand(be, (nb, 8, 16, 128)), rand(be, (nb, 8, 16, 128))
        yield (f"attention_prefill decode B=1 L={L} 32/8", lambda: be.attention_prefill(
            q, kc, vc, dm, 128 ** -0.5), 2 * L * 8 * 128 * 2, 0)
    v = 128256
    for b in (1, 8):
        lg = rand(be, (b, v), 3.0)
        args = (cp.full((b,), 0.8, np.float32), cp.full((b,), 50, np.int32),
                cp.full((b,), 0.9, np.float32), cp.full((b,), 0.05, np.float32),
                cp.full((b,), 1.1, np.float32), cp.arange(b, dtype=np.uint64),
                cp.zeros((b,), np.int32))
        seen = cp.zeros((b, v), np.uint8)
        yield f"argmax B={b} V={v}", lambda: be.argmax(lg), b * v * 2, 0
        yield (f"sample k50 p.9 minp rep B={b} V={v}", lambda: be.sample(lg, *args, seen=seen),
               b * v * 3, 0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="float16")
    be = CudaBackend(ap.parse_args().dtype)
    print(f"{'case':44s} {'us':>9s} {'GB/s':>8s} {'TFLOP/s':>8s}")
    for name, fn, nbytes, flops in cases(be):
        us = time_us(be, fn)
        gbs = f"{nbytes / us / 1e3:8.0f}" if nbytes else f"{'':8s}"
        tfs = f"{flops / us / 1e6:8.1f}" if flops else ""
        print(f"{name:44s} {us:9.1f} {gbs} {tfs}", flush=True)


if __name__ == "__main__":
    main()
