"""Why is the SORT build slower at long ranges? Same call, alternating, medians."""
import statistics
import sys

sys.path.insert(0, "tools")
import bench_attention as ba
import cupy as cp
import numpy as np

from rawengine.backends.cuda import attention as attn
from rawengine.backends.cuda import launch

cases = [(8, 32, 8, 65536), (8, 32, 8, 131072)]
for (b, hq, hkv, L) in cases:
    p = ba.Paged(b, hq, hkv, L)
    nbytes = ba.kv_bytes(b, hkv, L)
    n = ba.calls_for(nbytes)
    group = attn.head_group(hq, hkv)
    base = attn.default_config(group, ba.D, nbytes, False, units=b * hq // group)
    S = attn.planned_splits(b, hq, hkv, ba.D, L)
    pages = -(-L // 16); shuf = p.tables.get()
    cpg = -(-pages // S); cpg = -(-cpg // 4) * 4
    rs = shuf.copy()
    for r0 in range(0, pages, cpg):
        v0, v1 = r0 + 8, min(r0 + cpg, (L - 1) // 16)
        for i in range(b):
            seg = rs[i, v0:v1].astype(np.int64); lo, hi = seg.min(), seg.max()
            sh = max(0, int(hi - lo).bit_length() - 7)
            rs[i, v0:v1] = seg[np.argsort((seg - lo) >> sh, kind="stable")]
    p.tables = cp.asarray(rs)  # the kernel's own visit order: every variant reads the same
    sc = dict(base, sort_pages=4096)
    variants = {"default": (base, {}), "sort": (sc, {}),
                "sort, n=0": (sc, {"SORT_MIN": 1 << 30}),
                "sort, table order": (sc, {"SORT_USE": 0}),
                "default MIN_BLOCKS 2": (dict(base, min_blocks=2), {})}
    for pdl in (None, False):
        launch.set_pdl(pdl)
        t = {k: [] for k in variants}
        for rnd in range(3):
            for k in (list(variants) if rnd % 2 == 0 else list(variants)[::-1]):
                cfg, defs = variants[k]
                attn.PROBE_DEFINES.clear(); attn.PROBE_DEFINES.update(defs)
                t[k].append(ba.time_cupy(p.fn("sync", config=cfg), n))
        attn.PROBE_DEFINES.clear()
        print(f"B{b} L{L} pdl={pdl}: " + " | ".join(f"{k} {statistics.median(v):.1f}" for k, v in t.items()), flush=True)
    launch.set_pdl(None)
    p.free()
