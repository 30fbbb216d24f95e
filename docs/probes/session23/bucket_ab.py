"""How coarse may the visit order be? Host-side per-range bucket sorts (stable within bucket)."""
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
cases = [(8, 32, 8, 65536), (8, 32, 8, 131072)]
res = {}
for (b, hq, hkv, L) in cases:
    t_torch = [ba.torch_case(b, hq, hkv, L)]
    p = ba.Paged(b, hq, hkv, L)
    n = ba.calls_for(ba.kv_bytes(b, hkv, L))
    S = attn.planned_splits(b, hq, hkv, ba.D, L)
    pages = -(-L // 16); pool = b * pages
    shuf = p.tables.get()
    cpg = -(-pages // S); cpg = -(-cpg // 4) * 4
    def bucketed(nb):
        t = shuf.copy()
        for r0 in range(0, pages, cpg):
            for i in range(b):
                seg = t[i, r0:r0 + cpg]
                key = seg.astype(np.int64) * nb // pool if nb else seg
                t[i, r0:r0 + cpg] = seg[np.argsort(key, kind="stable")]
        return t
    tabs = {"shuffled": shuf, "full": bucketed(0), "b16": bucketed(16), "b64": bucketed(64),
            "b256": bucketed(256), "b1024": bucketed(1024)}
    names = list(tabs)
    t = {k: [] for k in names}
    for rnd in range(4):
        for k in (names if rnd % 2 == 0 else names[::-1]):
            p.tables = cp.asarray(tabs[k])
            t[k].append(ba.time_cupy(p.fn("sync"), n))
    p.free()
    t_torch.append(ba.torch_case(b, hq, hkv, L))
    med = {k: statistics.median(v) for k, v in t.items()}
    res[f"B{b} L{L}"] = dict(torch=t_torch, med=med, all=t)
    print(f"B{b} {hq}/{hkv} L{L} S{S} torch {t_torch[0]:.1f}/{t_torch[1]:.1f} | " +
          " | ".join(f"{k} {med[k]:.1f}" for k in names), flush=True)
json.dump(res, open(os.path.join(OUT, "bucket_ab.json"), "w"), indent=1)
