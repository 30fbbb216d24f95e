#!/usr/bin/env python3
"""Decode attention at short real lengths inside a graph captured for a long capacity.

    PYTHONPATH=. python3 tools/bench_decode_short.py [--long] [--tag NAME] [--out DIR]

The engine captures one graph per batch bucket with max_seq_len = its capacity (8192 here), so
the split plan S is fixed for 8192 while seq_lens (device memory) may be short. This captures
NL back-to-back calls once per (shape, B, variant, min_chunk) and replays it with seq_lens set
to each L: 'hot' repeats one layer's K/V (stays in L2), 'cold' rotates over NL layers whose
K/V together exceed L2 (closer to a real step, where weights stream through L2 between
layers). Reports us per call (median of 7 replays). 'null' is a graph of NL one-element
fills: the per-node floor. --long times the quick grid's long points (capacity = L) for the
regression check. Run once per kernel directory (RAWENGINE_KERNELS_DIR) to compare builds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

import cupy as cp
import numpy as np

from rawengine.backends.cuda import attention as attn
from rawengine.backends.cuda.attention_plan import tokens_per_step

SHAPES = ((32, 8, 128), (9, 3, 64))  # Llama-3-8B, SmolLM2-135M
CAPACITY, BS, NL, REPLAYS = 8192, 16, 96, 7
LENS = (128, 256, 1024)
MAX_L = max(LENS)


def graph_us(calls, stream):
    """Median us per call of a graph holding calls() (which launches len(...) kernels)."""
    with stream:
        n = calls()
        stream.synchronize()
        stream.begin_capture()
        calls()
        graph = stream.end_capture()
        graph.launch(stream)
        stream.synchronize()

    def timed():
        times = []
        with stream:
            for _ in range(REPLAYS):
                e0, e1 = cp.cuda.Event(), cp.cuda.Event()
                e0.record(stream)
                graph.launch(stream)
                e1.record(stream)
                e1.synchronize()
                times.append(cp.cuda.get_elapsed_time(e0, e1) * 1e3 / n)
        return statistics.median(times)
    return timed


class Layers:
    """NL layers of paged K/V for B sequences; each table covers CAPACITY tokens, pages past
    MAX_L point at page 0 (never read: seq_lens <= MAX_L)."""

    def __init__(self, b, hkv, d, nl, seed=0):
        pages = MAX_L // BS
        rng = np.random.default_rng(seed)
        nb = nl * b * pages + 1
        self.k = cp.random.RandomState(seed).standard_normal((nb, hkv, BS, d), cp.float32)
        self.k = self.k.astype(cp.float16)
        self.v = self.k[cp.asarray(rng.permutation(nb))]
        self.tables = []
        for i in range(nl):
            t = np.zeros((b, CAPACITY // BS), np.int32)
            t[:, :pages] = 1 + i * b * pages + rng.permutation(b * pages).reshape(b, pages)
            self.tables.append(cp.asarray(t))


def run_short(log, min_chunks):
    rows = []
    stream = cp.cuda.Stream(non_blocking=True)
    tiny = cp.zeros(1, cp.float32)
    cp.cuda.Device().synchronize()

    def null():
        for _ in range(NL):
            tiny.fill(0)
        return NL
    t_null = graph_us(null, stream)()
    log(f"null node (1-element fill) {t_null:.2f} us")
    rows.append(dict(kind="null", us=t_null))
    for hq, hkv, d in SHAPES:
        for b in (1, 8):
            rows += time_shape(hq, hkv, d, b, stream, log, min_chunks)
            cp.get_default_memory_pool().free_all_blocks()
    return rows


def time_shape(hq, hkv, d, b, stream, log, min_chunks):
    """Every (variant, min_chunk, mode) graph of one head shape and batch, at every L."""
    rows = []
    lay = Layers(b, hkv, d, NL)
    q = cp.asarray(np.random.default_rng(1).standard_normal((b, hq, d)), cp.float16)
    out = cp.empty((b, hq * d), cp.float16)
    seq_lens = cp.full(b, MAX_L, cp.int32)
    s = attn.plan_decode(b, hkv, CAPACITY, attn.num_sms(), group=hq // hkv, head_dim=d)
    ws = attn.get_workspace(b, hq, hkv, d, s)
    cfg = attn.kernel_config(d, attn.head_group(hq, hkv), 2 * b * hkv * CAPACITY * d * 2)
    step = tokens_per_step(d, cfg)
    cp.cuda.Device().synchronize()
    for variant in ("async", "sync"):
        phi = 0.0 if variant == "async" else None
        for mc in min_chunks or sorted({0, step // 2, step, 1 << 20}):
            for mode in ("hot", "cold"):
                def calls(mode=mode, mc=mc, variant=variant, phi=phi):
                    for i in range(NL):
                        attn.decode_attention(
                            q, lay.k, lay.v, lay.tables[i if mode == "cold" else 0], seq_lens,
                            d ** -0.5, max_seq_len=CAPACITY, variant=variant, phi=phi,
                            workspace=ws, out=out, num_splits=s, min_chunk=mc)
                    return NL
                timed = graph_us(calls, stream)
                for length in LENS:
                    seq_lens[...] = length
                    cp.cuda.Device().synchronize()
                    us = timed()
                    rows.append(dict(kind="short", Hq=hq, Hkv=hkv, D=d, B=b, S=s, L=length,
                                     variant=variant, min_chunk=mc, mode=mode, us=us))
                    log(f"{hq}/{hkv} D{d} B{b} S{s:3d} L{length:5d} {variant:5s} "
                        f"min_chunk {mc:7d} {mode}: {us:6.2f} us")
    return rows


LONG = [(1, 32, 8, 1024), (1, 32, 8, 16384), (1, 32, 8, 131072), (32, 32, 8, 1024),
        (32, 32, 8, 16384), (32, 32, 8, 131072), (8, 32, 32, 16384), (8, 32, 8, 65536)]


def run_long(log):
    """The quick grid's points, capacity = L (tools/bench_attention.py's convention)."""
    import bench_attention as ba  # tools/ on sys.path (this file's directory)

    rows = []
    for b, hq, hkv, length in LONG:
        p = ba.Paged(b, hq, hkv, length)
        n = ba.calls_for(ba.kv_bytes(b, hkv, length))
        for variant in ("async", "sync"):
            us = ba.time_cupy(p.fn(variant), n)
            rows.append(dict(kind="long", B=b, Hq=hq, Hkv=hkv, L=length, variant=variant,
                             us=us, gbps=ba.kv_bytes(b, hkv, length) / us / 1e3))
            log(f"long B{b} {hq}/{hkv} L{length} {variant}: {us:8.2f} us "
                f"{rows[-1]['gbps']:6.0f} GB/s")
        p.free()
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--long", action="store_true", help="also the long-context points")
    ap.add_argument("--min-chunks", type=lambda s: [int(x) for x in s.split(",")],
                    help="comma-separated min_chunk values (default 0, STEP/2, STEP, 2^20)")
    ap.add_argument("--tag", default=os.environ.get("RAWENGINE_KERNELS_DIR") and "base" or "new")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    lines = []

    def log(s):
        print(f"[{args.tag}] {s}", flush=True)
        lines.append(s)

    rows = run_short(log, args.min_chunks)
    if args.long:
        rows += run_long(log)
    with open(os.path.join(args.out, f"bench_short_{args.tag}.json"), "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
