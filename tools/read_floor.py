#!/usr/bin/env python3
"""The bandwidth floor a paged K/V layout allows decode attention (GPU machine).

    PYTHONPATH=. python3 tools/read_floor.py [--case B:HQ:HKV:L] [--page-size 16] [--torch]
                                             [--orders shuffled,in-order[,sorted,window,reverse]]
                                             [--quick] [--power]

Streams every K and V byte of one decode step with a kernel that computes nothing
(kernels_cu/kv_read_floor.cu), for shuffled pages (the grid of tools/bench_attention.py),
in-order pages (what a freshly prefilled batch gets) and optionally other page orders (see
--orders), page-major (the engine's [NB, Hkv, BS, D]), head-major and "all-heads" (a block
reads whole pages: every KV head's run, the kernel called with one head of HKV runs) layouts,
over split counts and unrolls; the same reads claimed dynamically from
one atomic counter by a persistent grid (kv_read_floor_dyn_kernel: every block streams until
the end of the call); then the default decode attention, the CUDA-core bulk kernel (also with
programmatic launch off, and at S = 4), the work-stealing build, and the bulk and stealing
builds without their math (NO_MATH probe builds: the same rings and reads) on each page order,
and with --torch torch SDPA flash on contiguous
K/V, all in one process, graph replays as in the grid. If the best pure read is slower than
torch, no attention kernel on that layout can match torch at that shape. --power adds each
attention row's board power, SM clock and throttle reason (nvidia-smi, 1.5 s back to back).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import cupy as cp
import numpy as np
from bench_attention import D, Paged, calls_for, copy_bandwidth, kv_bytes, time_cupy, torch_case

from rawengine.backends.cuda import attention as attn
from rawengine.backends.cuda import launch
from rawengine.backends.cuda.module import kernel, module


def page_order(order: str, shuffled: cp.ndarray, page_bytes: int) -> cp.ndarray:
    """Block tables [B, pages] of one page order (see --orders)."""
    if order == "shuffled":
        return shuffled
    if order == "sorted":
        return cp.sort(shuffled, axis=1)
    ids = np.arange(shuffled.size, dtype=np.int32)
    if order == "reverse":  # a LIFO free list's reuse of a released in-order table
        return cp.asarray(ids.reshape(shuffled.shape)[:, ::-1].copy())
    if order == "window":
        w = max(1, (2 << 20) // page_bytes)
        rng = np.random.default_rng(1)
        for i in range(0, ids.size, w):
            ids[i:i + w] = rng.permutation(ids[i:i + w])
    elif order != "in-order":
        raise SystemExit(f"unknown page order {order!r}")
    return cp.asarray(ids.reshape(shuffled.shape))


def power_draw(run, secs: float = 1.5) -> str:
    """Median board power, median and lowest SM clock, and the throttle reasons most often
    seen while `run` repeats back to back for `secs` (nvidia-smi samples every 100 ms; the
    first 3 samples, the ramp, are dropped). Why: at 3 TB/s the H100 reaches its power cap, and
    a kernel at the cap runs at the clocks the cap leaves it (session 20)."""
    fields = "power.draw,clocks.sm,clocks_throttle_reasons.active"
    log = subprocess.Popen(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits",
                            "-lms", "100"], stdout=subprocess.PIPE, text=True)
    t0 = time.time()
    while time.time() - t0 < secs:
        for _ in range(20):
            run()
        cp.cuda.Device().synchronize()
    log.terminate()
    rows = [r.split(", ") for r in log.communicate()[0].strip().splitlines()[3:-1]]
    if not rows:
        return "no samples"
    watts = sorted(float(r[0]) for r in rows)
    clocks = sorted(float(r[1]) for r in rows)
    reasons = max({r[2] for r in rows}, key=[r[2] for r in rows].count)
    return (f"{watts[len(watts) // 2]:5.0f} W, SM {clocks[len(clocks) // 2]:.0f} MHz "
            f"(low {clocks[0]:.0f}), throttle {reasons}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", default="8:32:8:65536", help="B:HQ:HKV:L")
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--torch", action="store_true")
    ap.add_argument("--orders", default="shuffled,in-order",
                    help="page orders, of: shuffled, in-order, sorted (each sequence's shuffled "
                         "pages visited in address order), window (in-order pages shuffled "
                         "within 2 MB windows of K), reverse (each sequence's in-order pages "
                         "visited last to first)")
    ap.add_argument("--quick", action="store_true", help="fewer static and dynamic variants")
    ap.add_argument("--power", action="store_true",
                    help="also run each attention row (and torch) for 1.5 s back to back while "
                         "nvidia-smi samples board power, SM clock and throttle reasons")
    a = ap.parse_args()
    b, hq, hkv, length = (int(v) for v in a.case.split(":"))
    nbytes = kv_bytes(b, hkv, length)
    bw = copy_bandwidth()
    def torch_power(run):
        print(f"torch SDPA flash power: {power_draw(run)}", flush=True)
    t_torch = (torch_case(b, hq, hkv, length, also=torch_power if a.power else None)
               if a.torch else None)
    p = Paged(b, hq, hkv, length, bs=a.page_size)
    pages = p.tables.shape[1]
    tables = {o: page_order(o, p.tables, hkv * a.page_size * D * 2) for o in a.orders.split(",")}
    out = cp.empty(max(b * hkv * 64, 4096) * 256, cp.uint32)  # static grid / persistent grid
    run = a.page_size * D * 2 // 16
    n = calls_for(nbytes)
    print(f"copy {bw / 1e9:.0f} GB/s; B{b} {hq}/{hkv} L{length} page {a.page_size}: "
          f"K+V {nbytes / 1e9:.2f} GB", flush=True)
    if t_torch:
        print(f"torch SDPA flash (contiguous K/V)   {t_torch:8.1f} us "
              f"{nbytes / t_torch / 1e3:6.0f} GB/s", flush=True)
    best = {}

    def keep(key, us, unroll, s):
        best[key] = min(best.get(key, (1e30,)), (us, unroll, s))

    # (name, HEAD_MAJOR, uint4 per run, runs per page, static split counts, dynamic ones):
    # "all-heads" reads whole pages (every KV head's run of the engine's layout, one contiguous
    # piece) per block, as a kernel whose warps take the heads of one page would (grid (S, 1, B)).
    layouts = [("page-major", 0, run, hkv, (2, 4) if a.quick else (2, 4, 8, 16),
                (4,) if a.quick else (2, 4, 8)),
               ("all-heads", 0, run * hkv, 1, (16, 32) if a.quick else (8, 16, 32, 64),
                (32,) if a.quick else (16, 32, 64))]
    if not a.quick:
        layouts.append(("head-major", 1, run, hkv, (2, 4, 8, 16), ()))
    counters = cp.zeros(2, cp.int32)
    sms = cp.cuda.Device().attributes["MultiProcessorCount"]
    for layout, head_major, lrun, heads, splits, dyn_splits in layouts:
        for unroll in (4,) if a.quick else (2, 4, 8):
            defines = {"RUN": lrun, "UNROLL": unroll, "HEAD_MAJOR": head_major}
            # a plain launch (no programmatic launch: calls never overlap)
            fn = module("kv_read_floor.cu", defines).get_function("kv_read_floor_kernel")
            for order, tab in tables.items():
                for s in splits:
                    args = (p.k, p.v, tab, np.int32(pages), np.int32(p.k.shape[0]),
                            np.int32(heads), out)
                    us = time_cupy(lambda fn=fn, s=s, h=heads, args=args: fn((s, h, b), (256,),
                                                                                args), n)
                    keep((order, layout), us, unroll, s)
            if not dyn_splits:
                continue
            fn = module("kv_read_floor.cu", defines).get_function("kv_read_floor_dyn_kernel")
            most = launch.blocks_per_sm(kernel("kv_read_floor.cu", "kv_read_floor_dyn_kernel",
                                               defines), 256, 0)
            per_sms = (4,) if a.quick else sorted({1, 2, 4, most} - {m for m in (2, 4)
                                                                    if m > most})
            for per_sm in per_sms:
                for order, tab in tables.items():
                    for s in dyn_splits:
                        args = (p.k, p.v, tab, np.int32(pages), np.int32(p.k.shape[0]),
                                np.int32(heads), np.int32(b), np.int32(s), counters, out)
                        us = time_cupy(lambda fn=fn, g=per_sm * sms, args=args: fn((g,), (256,),
                                                                                   args), n)
                        keep((order, f"{layout} dynamic {per_sm}/SM"), us, unroll, s)
    for (order, layout), (us, unroll, s) in sorted(best.items()):
        print(f"read floor {order:8s} {layout:23s}  {us:8.1f} us {nbytes / us / 1e3:6.0f} GB/s "
              f"({100 * nbytes / us / 1e-6 / bw:5.1f}% copy; UNROLL {unroll}, S {s})", flush=True)
    for order, tab in tables.items():
        p.tables = tab
        bulk, steal = {"impl": "bulk"}, {"impl": "bulk", "steal": 1}
        for name, kw, probe, pdl in (
                ("default", {}, {}, None), ("bulk", {"config": bulk}, {}, None),
                # programmatic launch off: no block of the next call lands beside a running
                # one (session 21: it costs a one-block-per-SM kernel up to 1.6% at B8 32/8)
                ("bulk, no PDL", {"config": bulk}, {}, False),
                ("bulk S4", dict(config=bulk, num_splits=4), {}, None),
                ("steal", {"config": steal}, {}, None),
                # the same rings and reads without the math (o is garbage): the rings' floor
                ("bulk no-math", {"config": bulk}, {"NO_MATH": 1}, None),
                ("steal no-math", {"config": steal}, {"NO_MATH": 1}, None)):
            launch.set_pdl(pdl)
            try:
                with attn.probe_defines(probe):
                    us = time_cupy(p.fn("sync", **kw), n)
                    line = (f"attention {order:8s} {name:15s}  {us:8.1f} us "
                            f"{nbytes / us / 1e3:6.0f} GB/s")
                    if a.power:
                        line += f"  {power_draw(p.fn('sync', **kw))}"
            except ValueError as e:  # bulk needs sm_90 and a GQA group of 2-4
                line = f"attention {order:8s} {name:15s} skipped: {e}"
            finally:
                launch.set_pdl(None)
            print(line, flush=True)
    p.free()


if __name__ == "__main__":
    main()
