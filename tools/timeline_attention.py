#!/usr/bin/env python3
"""Per-block timeline of back-to-back decode-attention calls (GPU probe for
docs/decode_attention_notes.md).

    PYTHONPATH=. python3 tools/timeline_attention.py [--case B:HQ:HKV:L[:S[:impl]]]...
                                                     [--in-order] [--torch] [--json out.json]
    (impl: cuda_core | mma | bulk | steal)

Each case builds tools/bench_attention.py's paged cache (16-token pages, shuffled unless
--in-order) and runs the default sync rule (or split count S / impl) as a CUDA graph of
back-to-back calls, each writing its own output, with the kernels built with TIMELINE=1
(kernels_cu/timeline.cuh): thread 0 of every block logs %globaltimer at entry, past the launch
wait, once all its warps have streamed their K/V, and at exit. Per call it prints, in us from
the call's first wait: the median / p90 / last block's stream end and the last exit, and the
idle share: the SM time blocks spend finished while the call's slowest block still streams,
over (blocks x the call's stream span). A large idle share with a late last block means static
splits leave bandwidth unused at the end of the call (work stealing would help); a small one
means every block streams at the same rate until the end. The plain build's graph time (and
with --torch torch SDPA flash on contiguous K/V) are timed in the same process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cupy as cp
from bench_attention import Paged, calls_for, kv_bytes, time_cupy, torch_case
from timeline_gemm import _built, _probe_kernel, record_graph

from rawengine.backends.cuda import attention as attn
from rawengine.backends.cuda import module


def _q(v: list[float], f: float) -> float:
    return v[min(len(v) - 1, int(f * len(v)))] if v else float("nan")


def call_stats(ev: dict[int, dict[int, float]]) -> dict:
    """One call's numbers from {event: {block: us}}."""
    wait, done, exit_ = ev.get(1, {}), ev.get(2, {}), ev.get(3, {})
    w0 = min(wait.values())
    ends = sorted(t - w0 for t in done.values())
    last = ends[-1]
    idle = sum(last - e for e in ends) / (len(ends) * last)
    return dict(blocks=len(done), wait_spread=max(wait.values()) - w0, end_med=_q(ends, 0.5),
                end_p10=_q(ends, 0.1), end_p90=_q(ends, 0.9), end_last=last,
                exit_last=max(exit_.values()) - w0 if exit_ else float("nan"), idle=idle)


def run_case(spec: str, in_order: bool, n_calls: int) -> dict:
    parts = spec.split(":")
    b, hq, hkv, length = (int(v) for v in parts[:4])
    kw: dict = {}
    if len(parts) > 4 and parts[4]:
        kw["num_splits"] = int(parts[4])
    if len(parts) > 5:  # an impl, or 'steal' (the bulk kernel's work-stealing build)
        kw["config"] = {"impl": "bulk", "steal": 1} if parts[5] == "steal" else {"impl": parts[5]}
    p = Paged(b, hq, hkv, length)
    if in_order:
        p.tables = cp.arange(p.tables.size, dtype=cp.int32).reshape(p.tables.shape)
    nbytes = kv_bytes(b, hkv, length)
    splits = kw.get("num_splits") or attn.planned_splits(b, hq, hkv, 128, length,
                                                         kw.get("config"))
    us_plain = time_cupy(p.fn("sync", **kw), calls_for(nbytes))
    ref = p.out.astype(cp.float32)  # the plain build's o: the probe's calls must match it
    outs = [cp.empty_like(p.out) for _ in range(n_calls)]

    def chain():
        for o in outs:
            p.out = o
            p.fn("sync", **kw)()

    attn.kernel = _probe_kernel
    try:
        _built.clear()
        chain()  # builds the probe kernel
        recs = record_graph(chain, before=lambda: [o.fill(float("nan")) for o in outs])
    finally:
        attn.kernel = module.kernel
    # the recorded replay's outputs (poisoned before it): a call that skipped work shows here
    errs = [float(cp.nan_to_num(cp.abs(o.astype(cp.float32) - ref), nan=cp.inf).max())
            for o in outs]
    order = {int(o.data.ptr): i for i, o in enumerate(outs)}
    calls = []
    for i in range(n_calls):
        ev: dict[int, dict[int, float]] = {}
        for t, ptr, blk, _sm, e in recs:
            if order.get(ptr) == i:
                ev.setdefault(e, {})[blk] = t / 1e3
        if 1 in ev and 2 in ev:
            calls.append({"call": i, "max_err": errs[i], **call_stats(ev)})
    inner = calls[1:-1] or calls
    med = {k: statistics.median(c[k] for c in inner) for k in inner[0]
           if k not in ("call", "max_err")}
    p.free()
    return dict(case=spec, in_order=in_order, splits=splits, us_plain=us_plain,
                gbs_plain=nbytes / us_plain / 1e3, gbs_median_block=nbytes / med["end_med"] / 1e3,
                median=med, calls=calls)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", action="append",
                    help="B:HQ:HKV:L[:S[:impl]] (default 8:32:8:65536 and 8:32:8:131072)")
    ap.add_argument("--in-order", action="store_true", help="pages in order (default shuffled)")
    ap.add_argument("--calls", type=int, default=8)
    ap.add_argument("--torch", action="store_true")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    out = []
    for spec in a.case or ["8:32:8:65536", "8:32:8:131072"]:
        r = run_case(spec, a.in_order, a.calls)
        if a.torch:
            b, hq, hkv, length = (int(v) for v in spec.split(":")[:4])
            r["us_torch"] = torch_case(b, hq, hkv, length)
        out.append(r)
        m = r["median"]
        print(f"\n== {spec} {'in-order' if a.in_order else 'shuffled'} S {r['splits']}: plain "
              f"{r['us_plain']:.1f} us ({r['gbs_plain']:.0f} GB/s)"
              + (f", torch {r['us_torch']:.1f} us" if r.get("us_torch") else ""))
        print(" call blocks wait.spr end.p10 end.med end.p90 end.last exit.last idle%  max|o-ref|")
        for c in r["calls"]:
            print(f" {c['call']:4d} {c['blocks']:6d} {c['wait_spread']:8.2f} {c['end_p10']:7.1f} "
                  f"{c['end_med']:7.1f} {c['end_p90']:7.1f} {c['end_last']:8.1f} "
                  f"{c['exit_last']:9.1f} {100 * c['idle']:5.2f}  {c['max_err']:.1e}")
        print(f" median: last block {m['end_last']:.1f} us vs median block {m['end_med']:.1f} "
              f"({100 * (m['end_last'] / m['end_med'] - 1):.2f}% later), idle "
              f"{100 * m['idle']:.2f}%; rate to the median end {r['gbs_median_block']:.0f} GB/s")
        cp.get_default_memory_pool().free_all_blocks()
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
