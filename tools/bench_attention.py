#!/usr/bin/env python3
"""Decode attention: rawengine (sync, async, mma) vs torch SDPA FLASH_ATTENTION, graph-timed.

    PYTHONPATH=. python3 tools/bench_attention.py [--quick] [--sweep] [--tables T] [--out DIR]

fp16, head_dim 128, B x (Hq, Hkv) x L; cases whose K+V exceed 40 GB are skipped. Ours reads a
paged cache (block_size 16, pages scattered over the pool in random order, tables read on the
device, in the order the engine hands a decode step: kv_cache.visit_order; --tables position
gives them in position order instead); torch reads
contiguous [B, Hkv, L, D] K/V with a [B, Hq, 1, D] query (enable_gqa). Both are timed as
CUDA-graph replays of N >= 20 back-to-back calls, median of 7 replays; the K/V of small cases
stays in L2 across the calls for both. 'sync' and 'async' run the default rule
(attention.default_config: 'sync' takes the tensor-core kernel on short GQA steps and the
cp.async.bulk build on GQA steps of >= 1 GB, or >= 256 MB when each (sequence, head block) has
an SM of its own; column 'sync S, impl' shows its plan and kernel).
'mma' is the sync variant on the tensor-core kernel
(decode_attention_mma.cu, shape MMA_CONFIG or $RAWENGINE_MMA). GB/s (of the fastest) counts K and V bytes once; '%copy' is against a
device-to-device copy measured in the same run (read + write counted).
--sweep also times kernel shapes x variants and split counts around the plan on a few cases
(tuning data); with SWEEP_SPLITS_ONLY=1 only split counts on three cases near torch.
Writes bench_attention.json and bench_attention.md to --out (default $OUT or .).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import cupy as cp
import numpy as np

from rawengine.backends.cuda import attention as attn
from rawengine.kv_cache import visit_order

D = 128
GRID_B = (1, 8, 32, 64)
GRID_H = ((32, 8), (32, 32))
GRID_L = (1024, 4096, 16384, 65536, 131072)
MAX_KV_BYTES = 40e9
REPLAYS = 7


def kv_bytes(b, hkv, length):
    return 2 * b * hkv * length * D * 2


def calls_for(nbytes):
    return 20 if nbytes > 256e6 else 100


# --- timing --------------------------------------------------------------------------------
def time_cupy(fn, n):
    cp.cuda.Device().synchronize()  # inputs were filled on the null stream
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        fn()
        stream.synchronize()
        stream.begin_capture()
        for _ in range(n):
            fn()
        graph = stream.end_capture()
        graph.launch(stream)
        stream.synchronize()
        times = []
        for _ in range(REPLAYS):
            e0, e1 = cp.cuda.Event(), cp.cuda.Event()
            e0.record(stream)
            graph.launch(stream)
            e1.record(stream)
            e1.synchronize()
            times.append(cp.cuda.get_elapsed_time(e0, e1) * 1e3 / n)
    return statistics.median(times)


def time_torch(fn, n):
    import torch

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(n):
            fn()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(REPLAYS):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        g.replay()
        e1.record()
        e1.synchronize()
        times.append(e0.elapsed_time(e1) * 1e3 / n)
    del g
    return statistics.median(times)


def copy_bandwidth():
    n = 1 << 30
    a, b = cp.ones(n, cp.uint8), cp.empty(n, cp.uint8)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        b.data.copy_from_device_async(a.data, n, stream)
        e0, e1 = cp.cuda.Event(), cp.cuda.Event()
        e0.record(stream)
        for _ in range(10):
            b.data.copy_from_device_async(a.data, n, stream)
        e1.record(stream)
        e1.synchronize()
    t = cp.cuda.get_elapsed_time(e0, e1) / 1e3
    del a, b
    cp.get_default_memory_pool().free_all_blocks()
    return 2 * n * 10 / t


# --- inputs --------------------------------------------------------------------------------
_POOL = None


def fill_random(a):
    """Fill a (large) fp16 array with N(0, 1) values tiled from a 64 MB pool."""
    global _POOL
    if _POOL is None:
        _POOL = cp.random.RandomState(0).standard_normal(1 << 25, dtype=cp.float32).astype(
            cp.float16)
    flat = a.reshape(-1)
    for off in range(0, flat.size, _POOL.size):
        m = min(_POOL.size, flat.size - off)
        flat[off:off + m] = _POOL[:m]
    return a


# The tables decode attention gets: 'visit', what the engine passes a decode step
# (kv_cache.visit_order of each row: ascending page id, the newest page last), or 'position',
# the rows in position order (the grid's tables before session 24).
TABLES = "visit"


class Paged:
    """One bucket of our paged cache: every sequence of length `length`, its pages scattered
    over the pool in random order (a fragmented pool), tables as TABLES says."""

    def __init__(self, b, hq, hkv, length, bs=16, seed=0, tables=None):
        pages = -(-length // bs)
        nb = b * pages
        rng = np.random.default_rng(seed)
        self.k = fill_random(cp.empty((nb, hkv, bs, D), cp.float16))
        self.v = fill_random(cp.empty((nb, hkv, bs, D), cp.float16))
        rows = rng.permutation(nb).astype(np.int32).reshape(b, pages)
        if (tables or TABLES) == "visit":
            rows = np.array([visit_order(r.tolist()) for r in rows], np.int32)
        self.tables = cp.asarray(rows)
        self.seq_lens = cp.full(b, length, cp.int32)
        self.q = cp.asarray(rng.standard_normal((b, hq, D)).astype(np.float16))
        self.out = cp.empty((b, hq * D), cp.float16)
        self.length = length

    def fn(self, variant="sync", **kw):
        scale = D ** -0.5
        phi = 0.0 if variant == "async" else None

        def run():
            attn.decode_attention(self.q, self.k, self.v, self.tables, self.seq_lens, scale,
                                  max_seq_len=self.length, variant=variant, phi=phi,
                                  out=self.out, **kw)
        return run

    def free(self):
        del self.k, self.v
        cp.get_default_memory_pool().free_all_blocks()


def torch_case(b, hq, hkv, length, also=None):
    """Torch SDPA flash time (us) on contiguous K/V, or None; also(run), when given, runs
    before the tensors are freed (tools/read_floor.py --power)."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(b, hq, 1, D, device="cuda", dtype=torch.float16)
    k = torch.empty(b, hkv, length, D, device="cuda", dtype=torch.float16).normal_()
    v = torch.empty(b, hkv, length, D, device="cuda", dtype=torch.float16).normal_()
    gqa = hq != hkv

    def run():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
    try:
        us = time_torch(run, calls_for(kv_bytes(b, hkv, length)))
    except Exception as e:  # noqa: BLE001 - record and go on
        print(f"  torch failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
        us = None
    if also is not None and us is not None:
        also(run)
    del q, k, v
    torch.cuda.empty_cache()
    return us


# --- runs ----------------------------------------------------------------------------------
def grid(quick):
    if quick:
        return [(b, 32, 8, l) for b in (1, 32) for l in (1024, 16384, 131072)] + [
            (8, 32, 32, 16384)]
    return [(b, hq, hkv, l) for hkv_pair in GRID_H for b in GRID_B for l in GRID_L
            for hq, hkv in [hkv_pair]]


def run_grid(cases, copy_bw, log):
    rows = []
    for b, hq, hkv, length in cases:
        nbytes = kv_bytes(b, hkv, length)
        if nbytes > MAX_KV_BYTES:
            log(f"skip B{b} {hq}/{hkv} L{length}: {nbytes / 1e9:.0f} GB of KV")
            continue
        t0 = time.time()
        t_torch = torch_case(b, hq, hkv, length)
        p = Paged(b, hq, hkv, length)
        n = calls_for(nbytes)
        splits = attn.planned_splits(b, hq, hkv, D, length)  # the sync default's plan
        group = attn.head_group(hq, hkv)
        picked = (attn.default_config(group, D, nbytes, False, units=b * hq // group)
                  or {"impl": "cuda_core"})
        sync_impl = picked["impl"] + ("+mma" if picked.get("mma_math") else "")
        ws = attn.get_workspace(b, hq, hkv, D,
                                attn.planned_splits(b, hq, hkv, D, length, is_async=True))
        fb0 = int(ws.fallback_count.get()[0])
        t_sync = time_cupy(p.fn("sync"), n)
        t_async = time_cupy(p.fn("async"), n)
        fired = int(ws.fallback_count.get()[0]) - fb0
        cfg_mma = dict(impl="mma", **MMA_CONFIG)
        t_mma = time_cupy(p.fn("sync", config=cfg_mma), n)
        p.free()
        best = min(t_sync, t_async, t_mma)
        row = dict(B=b, Hq=hq, Hkv=hkv, L=length, kv_mb=nbytes / 1e6, splits=splits,
                   sync_impl=sync_impl,
                   torch_us=t_torch, sync_us=t_sync, async_us=t_async, mma_us=t_mma,
                   mma_config=cfg_mma,
                   gbps=nbytes / best / 1e3, pct_copy=100 * nbytes / best / 1e-6 / copy_bw,
                   ratio_sync=t_torch / t_sync if t_torch else None,
                   ratio_async=t_torch / t_async if t_torch else None,
                   ratio_mma=t_torch / t_mma if t_torch else None,
                   ratio_best=t_torch / best if t_torch else None,
                   fallbacks=fired, secs=time.time() - t0)
        rows.append(row)
        log(fmt_row(row))
    return rows


HEADER = ("|  B | Hq/Hkv |      L |  KV MB | sync S, impl | torch us | sync us | async us | mma us |  GB/s "
          "| %copy | x sync | x async | x mma |")
# tensor-core kernel shape for the 'mma' column (sync variant, decode_attention_mma.cu);
# RAWENGINE_MMA="num_warps,tile,stages" overrides it (sweeps)
MMA_CONFIG = dict(zip(("num_warps", "tile", "stages"),
                      (int(v) for v in os.environ.get("RAWENGINE_MMA", "4,16,3").split(","))))


def fmt_row(r):
    f = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    return (f"| {r['B']:2d} | {r['Hq']}/{r['Hkv']:<3d} | {r['L']:6d} | {r['kv_mb']:6.0f} | "
            f"{r['splits']} {r.get('sync_impl', '')[:8]:8s} | {f(r['torch_us'], '8.1f')} | "
            f"{r['sync_us']:7.1f} | "
            f"{r['async_us']:8.1f} | {r['mma_us']:6.1f} | {r['gbps']:5.0f} | "
            f"{r['pct_copy']:5.1f} | "
            f"{f(r['ratio_sync'], '6.2f')} | {f(r['ratio_async'], '7.2f')} | "
            f"{f(r['ratio_mma'], '5.2f')} |")


def geomean(xs):
    xs = [x for x in xs if x]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


SWEEP_SHAPES = [(1, 32, 8, 131072), (1, 32, 8, 16384), (32, 32, 8, 16384), (8, 32, 32, 16384),
                (8, 32, 8, 65536), (1, 32, 8, 1024)]
SWEEP_CONFIGS = [(8, 4, 1, 2), (8, 4, 0, 2), (4, 4, 1, 4), (4, 4, 0, 4), (4, 4, 0, 1),
                 (8, 4, 0, 1)]  # (num_warps, unroll, prefetch, min_blocks)
if os.environ.get("SWEEP_SPLITS_ONLY"):  # final runs: split counts on the cases near torch
    SWEEP_SHAPES = [(8, 32, 8, 1024), (8, 32, 8, 16384), (1, 32, 8, 131072)]
    SWEEP_CONFIGS = []


def sweep(log):
    """Kernel shapes x variants, then split counts around the plan (tuning data)."""
    res = []
    for b, hq, hkv, length in SWEEP_SHAPES:
        nbytes = kv_bytes(b, hkv, length)
        p = Paged(b, hq, hkv, length)
        for nw, un, pf, mb in SWEEP_CONFIGS:
            cfg = dict(num_warps=nw, unroll=un, prefetch=pf, min_blocks=mb)
            s = attn.plan_decode(b, hkv, length, attn.num_sms(), group=hq // hkv, head_dim=D,
                                 config=(nw, un))
            for variant in ("sync", "async"):
                us = time_cupy(p.fn(variant, config=cfg, num_splits=s), calls_for(nbytes))
                res.append(dict(kind="config", B=b, Hq=hq, Hkv=hkv, L=length, warps=nw,
                                unroll=un, prefetch=pf, min_blocks=mb, variant=variant,
                                splits=s, us=us, gbps=nbytes / us / 1e3))
                log(f"cfg B{b} {hq}/{hkv} L{length} w{nw} u{un} pf{pf} mb{mb} S{s:3d} "
                    f"{variant:5s}: {us:8.1f} us {nbytes / us / 1e3:6.0f} GB/s")
        plan = attn.plan_decode(b, hkv, length, attn.num_sms(), group=hq // hkv, head_dim=D)
        for s in sorted({max(1, plan // 2), plan, plan * 2, plan * 3 // 2 or 1}):
            us = time_cupy(p.fn("async", num_splits=s), calls_for(nbytes))
            res.append(dict(kind="splits", B=b, Hq=hq, Hkv=hkv, L=length, splits=s,
                            is_plan=s == plan, us=us, gbps=nbytes / us / 1e3))
            log(f"S   B{b} {hq}/{hkv} L{length} S {s:3d}{' (plan)' if s == plan else ''}: "
                f"{us:8.1f} us {nbytes / us / 1e3:6.0f} GB/s")
        p.free()
    return res


def main():
    global TABLES
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="7 cases instead of the full grid")
    ap.add_argument("--sweep", action="store_true", help="also sweep shapes / splits / pages")
    ap.add_argument("--no-grid", action="store_true", help="skip the torch comparison grid")
    ap.add_argument("--tables", choices=("visit", "position"), default=TABLES,
                    help="decode tables: the engine's visit order (default) or position order")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    TABLES = args.tables  # Paged's default
    os.makedirs(args.out, exist_ok=True)
    lines = []

    def log(s):
        print(s, flush=True)
        lines.append(s)

    dev = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    copy_bw = copy_bandwidth()
    log(f"device {dev}, {attn.num_sms()} SMs; device-to-device copy {copy_bw / 1e9:.0f} GB/s")
    result = dict(device=dev, copy_gbps=copy_bw / 1e9, argv=sys.argv[1:])
    if args.sweep:
        result["sweep"] = sweep(log)
    if not args.no_grid:
        rows = run_grid(grid(args.quick), copy_bw, log)
        result["rows"] = rows
        result["geomean_sync"] = geomean([r["ratio_sync"] for r in rows])
        result["geomean_async"] = geomean([r["ratio_async"] for r in rows])
        table = [HEADER, "|" + "---|" * 14] + [fmt_row(r) for r in rows]
        result["geomean_mma"] = geomean([r["ratio_mma"] for r in rows])
        result["geomean_best"] = geomean([r["ratio_best"] for r in rows])
        table.append(f"geomean speedup vs torch: sync {result['geomean_sync']:.2f}x, "
                     f"async {result['geomean_async']:.2f}x, mma {result['geomean_mma']:.2f}x, "
                     f"best of the three per shape {result['geomean_best']:.2f}x")
        with open(os.path.join(args.out, "bench_attention.md"), "w") as f:
            f.write("\n".join([f"{dev}; copy {copy_bw / 1e9:.0f} GB/s", ""] + table) + "\n")
    with open(os.path.join(args.out, "bench_attention.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(args.out, "bench_attention.log"), "w") as f:
        f.write("\n".join(lines) + "\n")
    if not args.no_grid:
        print("\n".join(table))


if __name__ == "__main__":
    main()
