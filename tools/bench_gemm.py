"""Flat GEMM benchmark: Llama-2-7B / Llama-3-8B linears x M, ours vs cuBLAS (fp16, H100).

    PYTHONPATH=. PYTHONUNBUFFERED=1 python tools/bench_gemm.py [--quick] [--json out.json]

Ours (gemv, flat direct / smem / stream, dispatched): CUDA-graph replays, weights rotated over
>= 160 MB of copies.
cuBLAS from CuPy's process: column 'cublG', cublasGemmEx through ctypes
(rawengine/backends/cuda/cublas.py) as CUDA-graph replays; where that path cannot load,
column 'cupyE', cupy.matmul back-to-back eager calls (CuPy cannot capture cuBLAS). And torch
F.linear under torch.cuda.CUDAGraph ('torchG', the ANCHORS.md baseline), same copies.
GB/s counts weight bytes once; %copy is that over the d2d copy bandwidth measured here
(read + write counted). ratio = cuBLAS-graph time / dispatched time (> 1: we are faster).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cupy as cp  # noqa: E402

from rawengine import tune  # noqa: E402
from rawengine.backends.cuda import gemm  # noqa: E402

SHAPES = [
    ("l2.qkv", 12288, 4096), ("o", 4096, 4096), ("l2.gate_up", 22016, 4096),
    ("l2.down", 4096, 11008), ("l3.qkv", 6144, 4096), ("l3.gate_up", 28672, 4096),
    ("l3.down", 4096, 14336), ("l3.lm_head", 128256, 4096),
]
MS = [1, 2, 4, 8, 16, 32, 64, 128]


def copy_bandwidth() -> float:
    """GB/s of a 1 GiB d2d copy, read + write counted."""
    a = cp.ones(1 << 29, cp.float16)
    b = cp.empty_like(a)
    us = tune.time_eager(lambda i: cp.copyto(b, a), 1, reps=10)
    return 2 * a.nbytes / us / 1e3


def torch_graph_us(x, ws, reps=15):
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return float("nan")
    xt = torch.from_dlpack(x)
    wts = [torch.from_dlpack(w) for w in ws]
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for w in wts:
            F.linear(xt, w)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for w in wts:
            F.linear(xt, w)
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        g.replay()
        e1.record()
        e1.synchronize()
        times.append(e0.elapsed_time(e1))
    times.sort()
    return times[len(times) // 2] * 1000 / len(wts)


def bench_shape(name, N, K, ms, rows):
    wbytes = N * K * 2
    num_copies = max(3, min(64, math.ceil(tune.L2_ROTATE_BYTES / wbytes)))
    rs = cp.random.RandomState(1)
    base = (rs.standard_normal((N, K), dtype=cp.float32) / math.sqrt(K)).astype(cp.float16)
    ws = [base] + [base.copy() for _ in range(num_copies - 1)]
    cp.cuda.Device().synchronize()  # timing streams do not wait for the null stream
    for M in ms:
        x = rs.standard_normal((M, K), dtype=cp.float32).astype(cp.float16)
        y = cp.empty((M, N), cp.float16)
        cp.cuda.Device().synchronize()
        d_impl, d_params = gemm.choose(M, N, K)
        r = dict(shape=name, N=N, K=K, M=M, dispatch=d_impl, params=d_params)

        def t_ours(impl, params):
            return tune.time_graph(lambda i: gemm.run_impl(impl, x, ws[i], y, **params), num_copies)

        dk = d_params.get("kernel", "direct") if d_impl == "flat" else None
        r["gemv"] = t_ours("gemv", d_params if d_impl == "gemv" else {}) if M <= 8 else None
        r["direct"] = t_ours("flat", d_params if dk == "direct" else {"kernel": "direct"}) \
            if M <= 64 else None
        r["smem"] = t_ours("flat", d_params if dk == "smem" else {"kernel": "smem"})
        r["stream"] = t_ours("flat", d_params if dk == "stream" else tune.FLAT_STREAM_CONFIGS[0]) \
            if M <= tune.STREAM_MAX_M or dk == "stream" else None
        if tune.cublas_capturable():
            r["cublas"] = t_ours("cublas", {})
        else:
            r["cublas"] = tune.time_eager(lambda i: cp.matmul(x, ws[i].T, out=y), num_copies)
        r["cublas_timing"] = cublas_label()
        r["torch_graph"] = torch_graph_us(x, ws)
        own = {"gemv": r["gemv"], "flat": r[dk] if dk else None}
        r["disp"] = own[d_impl] if d_impl in own else r["cublas"]
        ref = (x.astype(cp.float32) @ ws[0].astype(cp.float32).T)
        gemm.linear(x, ws[0], out=y)
        r["max_err"] = float(cp.abs(y.astype(cp.float32) - ref).max())
        rows.append(r)
        print(fmt(r), flush=True)
    del ws, base
    cp.get_default_memory_pool().free_all_blocks()


def _c(v):
    return f"{v:7.1f}" if v is not None else "     - "


def fmt(r, copy_gbs=None):
    gbs = r["N"] * r["K"] * 2 / r["disp"] / 1e3
    pct = f"{100 * gbs / copy_gbs:5.1f}" if copy_gbs else "  -  "
    impl = r["dispatch"]
    if impl == "flat":
        impl += "." + r["params"].get("kernel", "direct")[:2]
    return (f"{r['shape']:11s} {r['M']:4d} {_c(r['gemv'])} {_c(r['direct'])} {_c(r['smem'])} "
            f"{_c(r.get('stream'))} "
            f"{r['disp']:7.1f} {impl:7s} {r['cublas']:7.1f} {r['torch_graph']:7.1f} {gbs:6.0f} "
            f"{pct} "
            f"{r['torch_graph'] / r['disp']:5.2f} {r['cublas'] / r['disp']:5.2f}")


def cublas_label() -> str:
    """'cublG': cuBLAS through ctypes, graph replays; 'cupyE': cupy.matmul, eager."""
    return "cublG" if tune.cublas_capturable() else "cupyE"


def header() -> str:
    return ("shape          M    gemv  direct    smem  stream    disp  impl    "
            f"{cublas_label():>7s}  torchG   GB/s %copy vsTG  vsCB")


PROBE_CONFIGS = [
    dict(kernel="direct", fn=1, warps_n=1, warps_k=8, unroll=2),
    dict(kernel="direct", fn=1, warps_n=1, warps_k=16, unroll=1),
    dict(kernel="direct", fn=2, warps_n=1, warps_k=8, unroll=1),
    dict(kernel="direct", fn=2, warps_n=1, warps_k=8, unroll=2),
    dict(kernel="direct", fn=1, warps_n=2, warps_k=8, unroll=2),
    dict(kernel="direct", fn=4, warps_n=1, warps_k=4, unroll=1),
]


def probe(rows):
    """Extra direct-kernel configs on qkv / o / down at M = 1, 8, 16 (for the notes)."""
    print("\n== probe: direct kernel configs (us)")
    for name, N, K in (SHAPES[0], SHAPES[1], SHAPES[6]):
        num_copies = max(3, min(64, math.ceil(tune.L2_ROTATE_BYTES / (N * K * 2))))
        ws = [cp.random.standard_normal((N, K), dtype=cp.float32).astype(cp.float16)
              for _ in range(num_copies)]
        for M in (1, 8, 16):
            x = cp.random.standard_normal((M, K), dtype=cp.float32).astype(cp.float16)
            y = cp.empty((M, N), cp.float16)
            cp.cuda.Device().synchronize()
            ts = [tune.time_graph(lambda i: gemm.flat(x, ws[i], y, **c), num_copies)
                  for c in PROBE_CONFIGS]
            print(f"{name:11s} {M:3d} " + " ".join(f"{t:7.1f}" for t in ts), flush=True)
        del ws
        cp.get_default_memory_pool().free_all_blocks()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="4 shapes x M in 1, 8, 16, 64")
    ap.add_argument("--json", default=None)
    ap.add_argument("--probe", action="store_true", help="also time extra direct-kernel configs")
    args = ap.parse_args(argv)
    shapes = SHAPES if not args.quick else [SHAPES[0], SHAPES[1], SHAPES[5], SHAPES[6]]
    ms = MS if not args.quick else [1, 8, 16, 64]
    copy_gbs = copy_bandwidth()
    print(f"{gemm.gpu_name()}: d2d copy {copy_gbs:.0f} GB/s (read+write)")
    print(header())
    rows: list[dict] = []
    for name, N, K in shapes:
        bench_shape(name, N, K, ms, rows)
    if args.probe:
        probe(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(copy_gbs=copy_gbs, rows=rows), indent=1))
    print(f"\n== summary (us; vsTG = torch cuBLAS graph / dispatched, vsCB = {cublas_label()} / "
          f"dispatched; copy {copy_gbs:.0f} GB/s)")
    print(header())
    for r in rows:
        print(fmt(r, copy_gbs))
    small = [r["torch_graph"] / r["disp"] for r in rows if r["M"] <= 16]
    allr = [r["torch_graph"] / r["disp"] for r in rows]
    print(f"geomean vs cuBLAS graph, M<=16: {math.exp(sum(map(math.log, small)) / len(small)):.3f}"
          f"  min over all: {min(allr):.3f}")
    m1 = [(r["shape"], 100 * r["N"] * r["K"] * 2 / r["disp"] / 1e3 / copy_gbs) for r in rows
          if r["M"] == 1 and r["N"] * r["K"] * 2 >= 32e6]
    print("M=1 %copy (>=32MB): " + ", ".join(f"{s} {p:.1f}" for s, p in m1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
