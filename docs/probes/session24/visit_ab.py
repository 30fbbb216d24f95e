"""Session 24: decode tables in position vs visit order, on a shuffled pool and on the engine's
LIFO layout (descending strided runs), same call, order-alternating rounds, medians."""
import json, os, statistics, sys
sys.path.insert(0, "tools")
import bench_attention as ba
import cupy as cp
import numpy as np
from rawengine.backends.cuda import attention as attn
from rawengine.kv_cache import visit_order

OUT = os.environ.get("OUT", ".")
cases = [(8, 32, 8, 65536), (8, 32, 8, 131072), (8, 32, 8, 16384), (1, 32, 32, 131072),
         (1, 32, 8, 131072), (32, 32, 8, 16384), (64, 32, 8, 16384)]
res = {}
for (b, hq, hkv, L) in cases:
    t_torch = [ba.torch_case(b, hq, hkv, L)]
    p = ba.Paged(b, hq, hkv, L, tables="position")
    n = ba.calls_for(ba.kv_bytes(b, hkv, L))
    pages = -(-L // 16)
    nb = b * pages
    shuf = p.tables.get()
    vis = lambda t: np.array([visit_order(r.tolist()) for r in t], np.int32)
    desc = (nb - 1 - (np.arange(pages)[None, :] * b + np.arange(b)[:, None])).astype(np.int32)
    tabs = dict(shuf_pos=shuf, shuf_visit=vis(shuf), lifo_pos=desc, lifo_visit=vis(desc),
                contiguous=np.arange(nb, dtype=np.int32).reshape(b, pages))
    names = list(tabs)
    outs = {}
    for k in names:
        p.tables = cp.asarray(tabs[k]); p.fn("sync")(); outs[k] = p.out.astype(cp.float32).copy()
    dmax = {"shuf": float(cp.abs(outs["shuf_visit"] - outs["shuf_pos"]).max()),
            "lifo": float(cp.abs(outs["lifo_visit"] - outs["lifo_pos"]).max())}
    t = {k: [] for k in names}
    for rnd in range(4):
        for k in (names if rnd % 2 == 0 else names[::-1]):
            p.tables = cp.asarray(tabs[k])
            t[k].append(ba.time_cupy(p.fn("sync"), n))
    p.free()
    t_torch.append(ba.torch_case(b, hq, hkv, L))
    med = {k: statistics.median(v) for k, v in t.items()}
    key = f"B{b} {hq}/{hkv} L{L}"
    res[key] = dict(torch=t_torch, med=med, all=t, dmax=dmax,
                    S=attn.planned_splits(b, hq, hkv, ba.D, L))
    print(f"{key} torch {t_torch[0]:.1f}/{t_torch[1]:.1f} " +
          " ".join(f"{k} {med[k]:.1f}" for k in names) + f" dmax {dmax}", flush=True)
json.dump(res, open(os.path.join(OUT, "visit_ab.json"), "w"), indent=1)
print("\n| cell | torch | shuffled pos | shuffled visit | LIFO pos | LIFO visit | contiguous | visit/torch |")
print("|---|---|---|---|---|---|---|---|")
for k, r in res.items():
    m, tt = r["med"], r["torch"]
    print(f"| {k} | {tt[0]:.1f} / {tt[1]:.1f} | {m['shuf_pos']:.1f} | {m['shuf_visit']:.1f} | "
          f"{m['lifo_pos']:.1f} | {m['lifo_visit']:.1f} | {m['contiguous']:.1f} | "
          f"{min(tt) / m['shuf_visit']:.3f} |")
