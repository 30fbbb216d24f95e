"""Per-block timeline of a chain of decode linears (GPU probe for docs/flat_gemm_notes.md).

    PYTHONPATH=. python3 tools/timeline_gemm.py [--case NxK:M[:json-params]]... [--late]
                                                [--json out.json]

Each case runs the table's choice for (M, N, K) (or the given params) as a CUDA graph of
back-to-back calls, weights rotated over >= 160 MB of copies as tools/bench_gemm.py does, built
with TIMELINE=1 (kernels_cu/timeline.cuh): thread 0 of every block logs %globaltimer at entry,
past the launch wait, past the weight stream and at exit. Per call (launch) it prints, in us
from the first call's first entry: the first / last block past the wait, the last block past
its weight stream, the last exit, the per-block stream time (median, p10, p90) and the weight
rate from the first wait to the last stream end. The steady-state period (wait to wait of
consecutive calls) against the weight bytes gives the rate a chain of these calls sustains.
For a grid of one wave, the tail (last stream end minus first wait plus the median block's
stream time) says how long part of the grid sat idle; with more waves it is ~the waves'
length and says little. docs/flat_gemm_notes.md (session 17) reads one such run. The probe
build is slower than the plain one (H100: ~0.5 us a call at bm 8, up to 15% at bm 16), so it
shows where time goes, not what a call costs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cupy as cp

from rawengine import tune
from rawengine.backends.cuda import gemm, module

DEFAULT_CASES = ["4096x4096:1", "4096x4096:8", "12288x4096:8", "4096x11008:8", "28672x4096:8",
                 "12288x4096:16", "128256x4096:8"]
TL_CAP = 1 << 18  # RE_TL_CAP of timeline.cuh
_built: list[tuple[str, tuple]] = []


def _probe_kernel(file: str, name: str, defines: dict):
    d = {**defines, "TIMELINE": 1}
    _built.append((file, tuple(sorted(d.items()))))
    return module.kernel(file, name, d)


def _records(mod) -> list[tuple[int, int, int, int, int]]:
    n = int(cp.ndarray((1,), cp.uint32, memptr=mod.get_global("re_tl_n")).get()[0])
    if n > TL_CAP:
        raise SystemExit(f"timeline overflow: {n} records (> {TL_CAP}); use a shorter chain")
    t = cp.ndarray((n,), cp.uint64, memptr=mod.get_global("re_tl_t")).get()
    p = cp.ndarray((n,), cp.uint64, memptr=mod.get_global("re_tl_p")).get()
    tag = cp.ndarray((n,), cp.uint32, memptr=mod.get_global("re_tl_tag")).get()
    return [(int(t[i]), int(p[i]), int(tag[i] >> 12), int((tag[i] >> 4) & 255), int(tag[i] & 15))
            for i in range(n)]


def record_graph(chain, warm: int = 1, before=None) -> list[tuple[int, int, int, int, int]]:
    """Captures chain() (whose probe kernels are built: _built lists them) as one CUDA graph,
    replays it `warm` times, then once more with the logs zeroed (and before(), if given, run
    on the stream first: e.g. poisoning outputs the caller checks); that replay's records."""
    mods = {module.module(f, dict(d)) for f, d in _built}
    # The caller's eager calls (which built the probe kernels, on the null stream) may still
    # run: a non-blocking stream does not wait for them, and a replay overlapping them shares
    # their workspaces (two grids on one decode-attention workspace corrupt its counters).
    cp.cuda.Device().synchronize()
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        chain()
        graph = stream.end_capture()
        for _ in range(warm):
            graph.launch(stream)
        stream.synchronize()
        for m in mods:
            _zero(m)
        if before is not None:
            before()
        graph.launch(stream)
        stream.synchronize()
    return [r for m in mods for r in _records(m)]


def _quantile(v: list[float], f: float) -> float:
    return v[min(len(v) - 1, int(f * len(v)))] if v else float("nan")


def _zero(mod) -> None:
    cp.ndarray((1,), cp.uint32, memptr=mod.get_global("re_tl_n")).fill(0)


def run_case(spec: str, late: bool) -> dict:
    parts = spec.split(":", 2)
    N, K = map(int, parts[0].split("x"))
    M = int(parts[1])
    if len(parts) > 2:
        impl, params = "flat", json.loads(parts[2])
    else:
        impl, params = gemm.choose(M, N, K)
    wbytes = N * K * 2
    copies = max(4, min(12, math.ceil(tune.L2_ROTATE_BYTES / wbytes)))
    rs = cp.random.RandomState(2)
    ws = [(rs.standard_normal((N, K), dtype=cp.float32) / math.sqrt(K)).astype(cp.float16)
          for _ in range(copies)]
    x = rs.standard_normal((M, K), dtype=cp.float32).astype(cp.float16)
    y = cp.empty((M, N), cp.float16)
    cp.cuda.Device().synchronize()
    _built.clear()
    with gemm.late_trigger(late):
        us = tune.time_graph(lambda i: gemm.run_impl(impl, x, ws[i], y, **params), copies)
        recs = record_graph(lambda: [gemm.run_impl(impl, x, ws[i], y, **params)
                                     for i in range(copies)], warm=2)
    order = {int(w.data.ptr): i for i, w in enumerate(ws)}
    t0 = min(r[0] for r in recs)
    calls = []
    for i in range(copies):
        ev: dict[int, dict[int, float]] = {}
        for t, p, blk, sm, e in recs:
            if order.get(p) == i:
                ev.setdefault(e, {})[blk] = (t - t0) / 1e3
        if 1 not in ev:
            continue
        wait, end = ev[1], ev.get(2, {})
        stream_us = sorted(end[b] - wait[b] for b in end if b in wait)
        c = dict(call=i, blocks=len(wait), entry0=min(ev[0].values()), wait0=min(wait.values()),
                 wait1=max(wait.values()), end1=max(end.values()) if end else float("nan"),
                 exit1=max(ev[3].values()) if 3 in ev else float("nan"),
                 stream_med=_quantile(stream_us, 0.5), stream_p10=_quantile(stream_us, 0.1),
                 stream_p90=_quantile(stream_us, 0.9))
        c["tail"] = c["end1"] - (c["wait0"] + c["stream_med"])
        calls.append(c)
    periods = [b["wait0"] - a["wait0"] for a, b in itertools.pairwise(calls)]
    period = statistics.median(periods) if periods else float("nan")
    ticks = sorted({r[0] for r in recs})
    res = min((b - a for a, b in itertools.pairwise(ticks)), default=0) / 1e3
    return dict(case=spec, impl=impl, params=params, late=late, us_graph=us, period=period,
                gbs_period=wbytes / period / 1e3, res_us=res, calls=calls, wbytes=wbytes)


def show(r: dict) -> None:
    print(f"\n== {r['case']} {r['impl']} {r['params']} late={int(r['late'])}: graph "
          f"{r['us_graph']:.2f} us/call, period {r['period']:.2f} us "
          f"({r['gbs_period']:.0f} GB/s), timer step {r['res_us']:.3f} us")
    print(" call blocks  entry0  wait0  wait1   end1  exit1  str.p10 str.med str.p90  tail")
    for c in r["calls"]:
        print(f" {c['call']:4d} {c['blocks']:6d} {c['entry0']:7.2f} {c['wait0']:6.2f} "
              f"{c['wait1']:6.2f} {c['end1']:6.2f} {c['exit1']:6.2f} {c['stream_p10']:8.2f} "
              f"{c['stream_med']:7.2f} {c['stream_p90']:7.2f} {c['tail']:5.2f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", action="append", help="NxK:M[:json params] (default: a set)")
    ap.add_argument("--late", action="store_true", help="late launch signal (model forwards)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    gemm._kernel = _probe_kernel  # every flat / GEMV build of this process logs its blocks
    out = []
    for spec in args.case or DEFAULT_CASES:
        r = run_case(spec, args.late)
        show(r)
        out.append(r)
        cp.get_default_memory_pool().free_all_blocks()
    print("\n== summary: case, us/call (graph), steady period, GB/s, median call tail (us)")
    for r in out:
        tails = [c["tail"] for c in r["calls"][1:-1]] or [float("nan")]
        print(f"{r['case']:22s} {r['us_graph']:7.2f} {r['period']:7.2f} {r['gbs_period']:6.0f} "
              f"{statistics.median(tails):5.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
