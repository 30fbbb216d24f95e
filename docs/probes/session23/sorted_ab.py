"""Upper bound of visiting each range's pages in address order (host-sorted tables)."""
import json
import os
import statistics
import sys

sys.path.insert(0, "tools")
import bench_attention as ba
import cupy as cp
import numpy as np

from rawengine.backends.cuda import attention as attn

OUT = os.environ.get("OUT", ".")
cases = [(8, 32, 8, 65536), (8, 32, 8, 131072), (8, 32, 8, 16384), (1, 32, 32, 131072)]
res = {}
for (b, hq, hkv, L) in cases:
    t_torch = [ba.torch_case(b, hq, hkv, L)]
    p = ba.Paged(b, hq, hkv, L)
    n = ba.calls_for(ba.kv_bytes(b, hkv, L))
    S = attn.planned_splits(b, hq, hkv, ba.D, L)
    pages = -(-L // 16)
    shuf = p.tables.get()
    chunk_pages = -(-pages // S)
    chunk_pages = -(-chunk_pages // 4) * 4  # STEP 64 tokens
    def per_range(t):
        t = t.copy()
        for r0 in range(0, pages, chunk_pages):
            r1 = min(r0 + chunk_pages, pages)
            for i in range(b):
                t[i, r0:r1] = np.sort(t[i, r0:r1])
        return t
    def per_seq(t):
        t = t.copy()
        for i in range(b):
            t[i] = np.sort(t[i])
        return t
    inorder = np.arange(b * pages, dtype=np.int32).reshape(b, pages)
    tabs = dict(shuffled=shuf, range_sorted=per_range(shuf), seq_sorted=per_seq(shuf),
                in_order=inorder)
    names = list(tabs)
    t = {k: [] for k in names}
    # reference output for exactness of reordering
    outs = {}
    for k in names:
        p.tables = cp.asarray(tabs[k]); p.fn("sync")(); outs[k] = p.out.astype(cp.float32).copy()
    # in-order has different data -> only compare the shuffled-derived orders
    dmax = {k: float(cp.abs(outs[k] - outs["shuffled"]).max()) for k in ("range_sorted", "seq_sorted")}
    for rnd in range(4):
        order = names if rnd % 2 == 0 else names[::-1]
        for k in order:
            p.tables = cp.asarray(tabs[k])
            t[k].append(ba.time_cupy(p.fn("sync"), n))
    p.free()
    t_torch.append(ba.torch_case(b, hq, hkv, L))
    med = {k: statistics.median(v) for k, v in t.items()}
    res[f"B{b} {hq}/{hkv} L{L}"] = dict(S=S, torch=t_torch, med=med, all=t, dmax=dmax)
    print(f"B{b} {hq}/{hkv} L{L} S{S} torch {t_torch[0]:.1f}/{t_torch[1]:.1f} " +
          " ".join(f"{k} {med[k]:.1f}" for k in names) + f" dmax {dmax}", flush=True)
json.dump(res, open(os.path.join(OUT, "sorted_ab.json"), "w"), indent=1)
