"""`rawengine tune MODEL | --preset NAME`: build the flat-GEMM dispatch table for this GPU.

For each linear shape (N, K) of the model and each M of a geometric subset of 1..8192, every
implementation (gemv / flat with a few tile configs / cuBLAS) is timed; the fastest per M is
kept and runs of equal choices are merged into M buckets (the inflection points). The table
is written as JSON keyed by GPU name and "NxK" into $RAWENGINE_CACHE/tuning or
~/.cache/rawengine/tuning, where rawengine.backends.cuda.gemm reads it (never tuning online).

Timing: every implementation as CUDA-graph replays, weights rotated over enough copies that
L2 (50 MB on H100) cannot hold them. cuBLAS is captured through ctypes
(rawengine/backends/cuda/cublas.py), as the runtime runs it in decode graphs; where that path
cannot load, cuBLAS is cupy.matmul (not capturable in CuPy), timed as back-to-back eager calls
rotated the same way, and the dispatcher replaces its entries with their 'fallback' (the best
own kernel) inside capture.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

PRESETS = {  # hidden, q heads, kv heads, head_dim, intermediate, vocab
    "smollm2-135m": (576, 9, 3, 64, 1536, 49152),
    "llama-3.2-1b": (2048, 32, 8, 64, 8192, 128256),
    "llama-2-7b": (4096, 32, 32, 128, 11008, 32000),
    "llama-3-8b": (4096, 32, 8, 128, 14336, 128256),
    "qwen2.5-7b": (3584, 28, 4, 128, 18944, 152064),
}
M_SAMPLES = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024, 2048, 4096, 8192]
GEMV_CONFIGS = [
    dict(rows=2, warps=4, unroll=4),
    dict(rows=2, warps=4, unroll=4, split=1),
    dict(rows=1, warps=4, unroll=8),
    dict(rows=4, warps=4, unroll=2),
    dict(rows=4, warps=8, unroll=2),
    dict(rows=2, warps=8, unroll=4, split=1),
    # 16-warp blocks: found by tools/sweep_gemv.py under programmatic launch (session 2); they
    # won M = 1 on 6 of 7 Llama shapes by 2-13% and took Llama-3-8B decode 174.5 -> 180.3 tok/s
    dict(rows=1, warps=16, unroll=8, split=1),
    dict(rows=1, warps=16, unroll=4, split=1),
    dict(rows=1, warps=16, unroll=2, split=1),
    dict(rows=2, warps=4, unroll=8, split=1),
    # cp.async weight ring (gemv.cu STAGES, session 4): bytes in flight held in shared memory
    # instead of registers, for the N = 4096 shapes whose 256 blocks cannot fill the SMs' warps
    dict(rows=1, warps=16, unroll=4, split=1, stages=4),
    dict(rows=1, warps=16, unroll=2, split=1, stages=6),
    dict(rows=1, warps=8, unroll=4, split=1, stages=4),
    dict(rows=2, warps=8, unroll=2, split=1, stages=4),
    dict(rows=2, warps=4, unroll=4, split=1, stages=3),
    dict(rows=1, warps=8, unroll=4, stages=3),
]
FLAT_DIRECT_CONFIGS = [
    dict(kernel="direct", fn=1, warps_n=1, warps_k=8, unroll=2),
    dict(kernel="direct", fn=2, warps_n=1, warps_k=4, unroll=2),
    dict(kernel="direct", fn=1, warps_n=1, warps_k=4, unroll=4, split=1),
    dict(kernel="direct", fn=1, warps_n=1, warps_k=16, unroll=1),
    dict(kernel="direct", fn=2, warps_n=1, warps_k=8, unroll=1),
    dict(kernel="direct", fn=2, warps_n=1, warps_k=8, unroll=2),
    dict(kernel="direct", fn=4, warps_n=1, warps_k=4, unroll=1),
]
FLAT_SMEM_CONFIGS = [
    dict(kernel="smem", fn=1, warps_n=4, warps_k=1, bk=64, stages=4),
    dict(kernel="smem", fn=1, warps_n=2, warps_k=2, bk=128, stages=4),
    dict(kernel="smem", fn=2, warps_n=2, warps_k=2, bk=64, stages=5),
    dict(kernel="smem", fn=2, warps_n=4, warps_k=1, bk=128, stages=3),
    dict(kernel="smem", fn=1, warps_n=2, warps_k=4, bk=128, stages=4),
]
# flat_stream_kernel: w in 2-4 KB row runs (kt * warps_k * 2 bytes) through per-warp shared
# tiles, x copied per warp beside them (session 15). The winners of a 9-config sweep over the 8
# Llama-2/3 shapes at M <= 16 (H100): kt 128 x warps_k 8 (two 8-warp blocks per SM) first in
# 28 of 40 cells. Two builds lost (docs/flat_gemm_notes.md): a persistent grid (session 14:
# faster alone, slower in decode steps, where neighbouring kernels overlap it under programmatic
# launch) and x staged per block (session 15: the x slice in shared memory before the first mma
# was behind in 191 of 192 tuned cells).
FLAT_STREAM_CONFIGS = [
    dict(kernel="stream", kt=128, fn=1, warps_n=1, warps_k=8, split=1),
    dict(kernel="stream", kt=128, fn=1, warps_n=1, warps_k=16, split=1),
    dict(kernel="stream", kt=128, fn=2, warps_n=1, warps_k=8, split=1),
    dict(kernel="stream", kt=64, fn=1, warps_n=1, warps_k=8, split=1),
    dict(kernel="stream", kt=64, fn=1, warps_n=1, warps_k=16, split=1),
    # registers capped for two blocks per SM: the bm 16 build of the first config needs 170
    # registers uncapped, so M = 9-16 ran one 8-warp block per SM (session 17)
    dict(kernel="stream", kt=128, fn=1, warps_n=1, warps_k=8, split=1, occ=2),
]
STREAM_PF = (0, 1, 2)  # w tiles per warp prefetched into L2 before the launch wait (pf)
STREAM_MAX_M = 32  # bm 32: 8 warps x (16 + 64) x 128 x 2 B = 160 KB of shared memory
L2_ROTATE_BYTES = 160 << 20  # rotate weights over >= this many bytes (> 3x the H100 L2)


def shapes_for(hidden, heads, kv_heads, head_dim, inter, vocab) -> dict[str, tuple[int, int]]:
    """name -> (N, K) of each linear of one layer, plus the LM head."""
    return {
        "qkv": ((heads + 2 * kv_heads) * head_dim, hidden),
        "o": (hidden, heads * head_dim),
        "gate_up": (2 * inter, hidden),
        "down": (hidden, inter),
        "lm_head": (vocab, hidden),
    }


def shapes_from_config(path: str) -> dict[str, tuple[int, int]]:
    cfg = json.loads((Path(path) / "config.json").read_text())
    h, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    return shapes_for(h, nh, cfg.get("num_key_value_heads", nh), cfg.get("head_dim") or h // nh,
                      cfg["intermediate_size"], cfg["vocab_size"])


def cache_dir() -> Path:
    root = os.environ.get("RAWENGINE_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "rawengine") / "tuning"


def table_filename(gpu: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in gpu) + ".json"


# --- timing ----------------------------------------------------------------------------------
class Problem:
    """Device buffers for one (M, N, K): x, y and num_copies rotated copies of w."""

    def __init__(self, M, N, K, dtype="float16", seed=0):
        import cupy as cp

        wbytes = N * K * 2
        self.num_copies = max(3, min(64, math.ceil(L2_ROTATE_BYTES / wbytes)))
        rs = cp.random.RandomState(seed)
        base = (rs.standard_normal((N, K), dtype=cp.float32) / math.sqrt(K)).astype(dtype)
        self.ws = [base] + [base.copy() for _ in range(self.num_copies - 1)]
        self.x = rs.standard_normal((M, K), dtype=cp.float32).astype(dtype)
        self.y = cp.empty((M, N), dtype)
        self.M, self.N, self.K = M, N, K
        self.weight_bytes = wbytes
        cp.cuda.Device().synchronize()  # timing streams do not wait for the null stream


def _events():
    import cupy as cp

    return cp.cuda.Event(), cp.cuda.Event()


def time_graph(launch, num_copies: int, reps: int = 15) -> float:
    """Median us per call of launch(i), i over the copies, as CUDA-graph replays."""
    import cupy as cp

    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        for i in range(num_copies):
            launch(i)
        stream.synchronize()
        stream.begin_capture()
        try:
            for i in range(num_copies):
                launch(i)
        finally:
            graph = stream.end_capture()
        graph.launch(stream)
        graph.launch(stream)
        start, end = _events()
        times = []
        for _ in range(reps):
            start.record(stream)
            graph.launch(stream)
            end.record(stream)
            end.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, end))
    return statistics.median(times) * 1000.0 / num_copies


def time_eager(launch, num_copies: int, reps: int = 10) -> float:
    """Median us per call of back-to-back eager calls (for cuBLAS through cupy.matmul, which
    CuPy cannot capture)."""
    import cupy as cp

    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        for i in range(num_copies):
            launch(i)
        stream.synchronize()
        start, end = _events()
        times = []
        for _ in range(reps):
            start.record(stream)
            for i in range(num_copies):
                launch(i)
            end.record(stream)
            end.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, end))
    return statistics.median(times) * 1000.0 / num_copies


def cublas_capturable() -> bool:
    """cuBLAS runs inside CUDA graphs here (the ctypes path loads)."""
    from rawengine.backends.cuda import cublas

    return cublas.available()


def time_impl(p: Problem, impl: str, params: dict) -> float:
    from rawengine.backends.cuda import gemm

    def launch(i):
        gemm.run_impl(impl, p.x, p.ws[i], p.y, **params)

    if impl == "cublas" and not cublas_capturable():
        return time_eager(launch, p.num_copies, reps=6)
    return time_graph(launch, p.num_copies, reps=8)


def candidates(M: int, max_m_own: int) -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = [("cublas", {})]
    if M <= 8:
        out += [("gemv", c) for c in GEMV_CONFIGS]
    if M <= 64:
        bm = next(b for b in (8, 16, 32, 64) if b >= M)
        out += [("flat", dict(c, bm=bm)) for c in FLAT_DIRECT_CONFIGS
                if bm <= 16 or c["fn"] * c["unroll"] <= 4]
    if M <= STREAM_MAX_M:
        bm = next(b for b in (8, 16, 32) if b >= M)
        # 16 warps of kt 128 at bm >= 16 spill under the 128-register cap of 512 threads
        stream = [dict(c, bm=bm) for c in FLAT_STREAM_CONFIGS
                  if bm == 8 or c["kt"] * c["warps_k"] < 2048]
        # + L2 prefetch before the launch wait (not at M = 1, where merge_tuning sets pre 2:
        # with two register tiles the prefetch lost 1-10% on the H100, session 17)
        out += [("flat", dict(c, pf=pf) if pf else c) for c in stream for pf in STREAM_PF
                if M > 1 or pf == 0]
    if 8 <= M <= max_m_own:
        bm = next((b for b in (16, 32, 64, 128) if b >= M), 128)
        out += [("flat", dict(c, bm=bm)) for c in FLAT_SMEM_CONFIGS]
    return out


PAIRED = "gemv_paired"  # records of GEMVs timed with the SiLU-mul pair epilogue


def paired_candidates() -> list[dict]:
    """GEMV configs for the paired epilogues (RoPE in qkv, SiLU-mul in gate_up): both rows of
    a pair share a warp, so rows must be even; odd-rows configs are tried with rows + 1.
    They are timed with the SiLU-mul epilogue itself (gemm.linear_silu), because the plain
    product's ranking did not carry over: on 2026-11-21 the fastest plain even-rows config
    ran Llama-3-8B decode 1% slower than rows + 1 of the plain winner, and rows + 1 ran
    Llama-2-7B 0.5% slower than the plain even-rows one."""
    out: list[dict] = []
    for c in GEMV_CONFIGS:
        c = dict(c, rows=c.get("rows", 2) + c.get("rows", 2) % 2)
        if c not in out:
            out.append(c)
    return out


# --- table building --------------------------------------------------------------------------
# Own kernels take a (shape, M) sample from cuBLAS only when faster by more than this share:
# timings spread 2-3% between runs and machines, and a coin-flip win can run below cuBLAS in
# the next one (H100, session 12: 4096x11008 at M = 4, the table's flat direct kernel 38.2 us
# vs cuBLAS 36.5, 0.955x, where the tuning run had it ahead). cuBLAS is 1.00x of itself.
CUBLAS_MARGIN = 0.02


def pick(results: list[tuple[float, str, dict]]) -> dict:
    """Winner of one (shape, M) from [(us, impl, params)]; a cuBLAS winner carries the best
    own kernel as 'fallback' (used where cuBLAS cannot run: capture or bf16 when it is only
    reachable through cupy.matmul). A GEMV winner carries 'paired': the fastest config timed
    with a paired epilogue (impl 'gemv_paired', see paired_candidates), if any was timed.
    Our kernels take a sample from cuBLAS only when faster by more than CUBLAS_MARGIN.
    The config is picked without the L2 prefetch (what model forwards run: gemm.late_trigger
    drops it); the prefetch is then added where it speeds up that config (with_prefetch)."""
    own = sorted((r for r in results if r[1] != PAIRED and not r[2].get("pf")),
                 key=lambda r: r[0])
    cub = next((r for r in own if r[1] == "cublas"), None)
    if cub is not None and own[0][0] > cub[0] * (1 - CUBLAS_MARGIN):
        own.remove(cub)
        own.insert(0, cub)
    us, impl, params = own[0]
    choice = {"impl": impl, "params": with_prefetch(params, us, results)}
    paired = sorted((r for r in results if r[1] == PAIRED), key=lambda r: r[0])
    if impl == "gemv" and paired:
        choice["paired"] = paired[0][2]
    if impl == "cublas":
        other = next((r for r in own if r[1] != "cublas"), None)
        if other is not None:
            choice["fallback"] = {"impl": other[1], "params": other[2]}
    return choice


PF_MARGIN = 0.01  # the prefetch must win by this share (timings spread ~1% within a run)


def without_prefetch(params: dict) -> dict:
    return {k: v for k, v in params.items() if k != "pf"}


def with_prefetch(params: dict, us: float, results: list[tuple[float, str, dict]]) -> dict:
    """params with the fastest pf > 0 timed for the same stream config, if that beats `us`
    (the config without it) by PF_MARGIN; else params."""
    base = without_prefetch(params)
    timed = [(t, p["pf"]) for t, impl, p in results
             if impl == "flat" and p.get("pf") and without_prefetch(p) == base]
    if not timed:
        return params
    t, pf = min(timed)
    return dict(base, pf=pf) if t < us * (1 - PF_MARGIN) else base


def merge_buckets(best: list[tuple[int, dict]]) -> list[dict]:
    """Per-sample winners [(M, choice)] -> M buckets; a bucket's m_max is the largest sampled
    M with the same choice; the last bucket extends to any M."""
    rules: list[dict] = []
    for m, choice in best:
        if rules and {k: v for k, v in rules[-1].items() if k != "m_max"} == choice:
            rules[-1]["m_max"] = m
        else:
            rules.append(dict(choice, m_max=m))
    if rules:
        rules[-1]["m_max"] = 1 << 30
    return rules


def timings_by_shape(records: list[dict]) -> dict[str, dict[int, list]]:
    """Saved timings (tune --records) -> {"NxK": {M: [(us, impl, params), ...]}}."""
    by: dict[str, dict[int, list]] = {}
    for r in records:
        by.setdefault(f"{r['N']}x{r['K']}", {}).setdefault(r["M"], []).append(
            (r["us"], r["impl"], r["params"]))
    return by


def rules_from_records(records: list[dict]) -> dict[str, list[dict]]:
    """Rebuild table entries {"NxK": rules} from saved timings (tune --records)."""
    return {key: merge_buckets([(m, pick(res)) for m, res in sorted(per_m.items())])
            for key, per_m in timings_by_shape(records).items()}


# Where gemm.py fuses a neighbouring op into a GEMV launch (a table entry of 'gemv' enables
# it): pro/epilogues at M <= FUSED_MAX_M, prologues only on products of M*N*K <= FUSED_MAX_MNK
# (launch bound; bigger ones lose more to the serial prologue than the launch saves).
FUSED_MAX_M = 8
FUSED_MAX_MNK = 1 << 24
PAIRED_MAX_M = FUSED_MAX_M  # paired epilogues (RoPE, SiLU-mul) are timed where they run


def time_paired(p: Problem, N: int, K: int, M: int, records: list, log) -> list:
    """[(us, PAIRED, params)] of paired_candidates() run as gemm.linear_silu (y [M, N/2])."""
    import cupy as cp

    from rawengine.backends.cuda import gemm

    y = cp.empty((M, N // 2), p.x.dtype)
    if gemm.linear_silu(p.x, p.ws[0], out=y, params=paired_candidates()[0]) is None:
        return []  # the epilogue does not apply to these inputs: nothing to time
    out = []
    for c in paired_candidates():
        def launch(i, c=c):
            gemm.linear_silu(p.x, p.ws[i], out=y, params=c)
        try:
            us = time_graph(launch, p.num_copies, reps=8)
        except Exception as e:  # noqa: BLE001 - a config that cannot launch is skipped
            log(f"    skip paired {c}: {type(e).__name__}: {e}")
            continue
        out.append((us, PAIRED, c))
        records.append(dict(N=N, K=K, M=M, impl=PAIRED, params=c, us=us))
    return out


def tune_shape(N: int, K: int, m_list, max_m_own: int, log) -> tuple[list[dict], list[dict]]:
    import cupy as cp

    best, records = [], []
    for M in m_list:
        p = Problem(M, N, K)
        results = []
        for impl, params in candidates(M, max_m_own):
            try:
                us = time_impl(p, impl, params)
            except Exception as e:  # noqa: BLE001 - a config that cannot launch is skipped
                log(f"    skip {impl} {params}: {type(e).__name__}: {e}")
                continue
            results.append((us, impl, params))
            records.append(dict(N=N, K=K, M=M, impl=impl, params=params, us=us))
        own_best = min(results, key=lambda r: r[0])
        if own_best[1] == "gemv" and M <= PAIRED_MAX_M and N % 2 == 0:
            results += time_paired(p, N, K, M, records, log)
        choice = pick(results)
        us = own_best[0]
        cub = next(r[0] for r in results if r[1] == "cublas")
        log(f"  N={N} K={K} M={M:5d}: {choice['impl']:6s} {us:9.1f} us  (cublas {cub:9.1f} us)"
            f" {choice['params']}")
        best.append((M, choice))
        del p
        cp.get_default_memory_pool().free_all_blocks()
    return merge_buckets(best), records


def write_table(gpu: str, shapes: dict, path: Path) -> None:
    data = {"gpu": gpu, "dtype": "float16", "shapes": {}}
    if path.exists():
        data = json.loads(path.read_text())
    data["shapes"].update(shapes)
    data["updated"] = time.strftime("%Y-%m-%d %H:%M:%S")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def tune_main(argv: list[str] | None = None) -> int:
    """Entry point for `rawengine tune`; returns the exit status."""
    ap = argparse.ArgumentParser(prog="rawengine tune", description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", help="HF model directory (reads config.json)")
    ap.add_argument("--preset", action="append", default=[],
                    help=f"one of {', '.join(PRESETS)} or 'all' (repeatable)")
    ap.add_argument("--m", type=str, default=None, help="comma-separated M values to sample")
    ap.add_argument("--max-m-own", type=int, default=512,
                    help="largest M at which our kernels are timed (cuBLAS alone above)")
    ap.add_argument("--out", type=str, default=None, help="table file (default: user cache)")
    ap.add_argument("--records", type=str, default=None, help="also write every timing here")
    ap.add_argument("--from-records", type=str, default=None,
                    help="rebuild the table from a --records file instead of timing (needs --gpu)")
    ap.add_argument("--gpu", type=str, default=None, help="GPU name for --from-records")
    args = ap.parse_args(argv)
    if args.from_records:
        gpu = args.gpu or "NVIDIA H100 80GB HBM3"
        out = Path(args.out) if args.out else cache_dir() / table_filename(gpu)
        recs = json.loads(Path(args.from_records).read_text())
        write_table(gpu, rules_from_records(recs), out)
        print(f"wrote {out}")
        return 0

    shapes: dict[tuple[int, int], str] = {}
    names = list(PRESETS) if "all" in args.preset else args.preset
    for name in names:
        if name not in PRESETS:
            print(f"unknown preset {name!r}; known: {', '.join(PRESETS)}", file=sys.stderr)
            return 2
        for op, nk in shapes_for(*PRESETS[name]).items():
            shapes.setdefault(nk, f"{name}.{op}")
    if args.model:
        for op, nk in shapes_from_config(args.model).items():
            shapes.setdefault(nk, op)
    if not shapes:
        ap.print_usage(sys.stderr)
        return 2

    from rawengine.backends.cuda import gemm

    gpu = gemm.gpu_name()
    m_list = [int(v) for v in args.m.split(",")] if args.m else M_SAMPLES
    out = Path(args.out) if args.out else cache_dir() / table_filename(gpu)
    table, records = {}, []
    t0 = time.time()
    for i, ((N, K), label) in enumerate(shapes.items()):
        print(f"[{i + 1}/{len(shapes)}] {label} {N}x{K} on {gpu}", flush=True)
        rules, recs = tune_shape(N, K, m_list, args.max_m_own, lambda s: print(s, flush=True))
        table[f"{N}x{K}"] = rules
        records += recs
        write_table(gpu, {f"{N}x{K}": rules}, out)  # keep partial progress
    print(f"wrote {out} ({len(table)} shapes, {time.time() - t0:.0f} s)")
    if args.records:
        Path(args.records).write_text(json.dumps(records, indent=0))
    gemm.reload_tables()
    return 0
